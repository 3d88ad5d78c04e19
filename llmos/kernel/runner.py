"""The model runner: a scheduler Batch -> flat tensors -> one forward pass -> logits.

Batch invariance: the native GEMM (llmos/ops/linear.py) gives a row the same bits whatever the
batch. Without it (no AVX-512, no C compiler, another device) PyTorch's fp32 GEMMs take other
code paths for some small row counts, so at start the runner measures, on the model's own
weight shapes, which row counts agree with the large-batch path and pads
every GEMM input up to the next such count (pad rows write their K/V into the trash block and
are dropped). With attention computed per query (llmos/ops/cpu.py) a process's logits are then
bit-identical whoever shares its tick. See docs/design/kernel.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmos.kernel.scheduler import Batch, ScheduledProcess
from llmos.models.registry import CausalLM
from llmos.ops.cpu import AttentionMetadata, KVCache

CALIBRATE_ROWS = 16  # row counts above this are trusted to take the large-batch path


_calibrated: dict[tuple[object, ...], list[int]] = {}


def calibrate_row_padding(weights: list[torch.Tensor], max_rows: int = CALIBRATE_ROWS) -> list[int]:
    """pad_to[n] for n in 0..max_rows: the smallest m >= n whose GEMM rows are bit-identical
    to the same rows computed inside a 64-row batch, for every weight shape given.

    The answer depends only on shapes, dtype, device and thread count, so it is cached."""
    key = (
        torch.get_num_threads(),
        max_rows,
        *((tuple(w.shape), w.dtype, str(w.device)) for w in weights),
    )
    if key not in _calibrated:
        _calibrated[key] = _calibrate(weights, max_rows)
    return _calibrated[key]


REFERENCE_ROWS = 64  # the "large batch" whose row bits small batches are padded to reproduce


def _calibrate(weights: list[torch.Tensor], max_rows: int) -> list[int]:
    """Searches every count up to REFERENCE_ROWS: on some shapes no count below 17 agrees."""
    g = torch.Generator().manual_seed(0)
    is_safe = [True] * (REFERENCE_ROWS + 1)
    is_safe[0] = False
    with torch.inference_mode():
        for w in weights:
            x = torch.randn(REFERENCE_ROWS, w.shape[1], generator=g, dtype=w.dtype).to(w.device)
            ref = F.linear(x, w)
            for n in range(1, REFERENCE_ROWS):
                if is_safe[n] and not torch.equal(F.linear(x[:n], w), ref[:n]):
                    is_safe[n] = False
    return [
        next(m for m in range(max(n, 1), REFERENCE_ROWS + 1) if is_safe[m])
        for n in range(max_rows + 1)
    ]


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        kv: KVCache,
        *,
        pad_to: list[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.kv = kv
        if pad_to is None:
            gemms = model.gemm_weights()
            is_invariant = all(g.is_batch_invariant for g in gemms)
            pad_to = [] if is_invariant else calibrate_row_padding([g.dense() for g in gemms])
        self.pad_to = pad_to
        self.device = torch.device(device)
        self.block_size = kv.block_size

    def _padded(self, num_rows: int) -> int:
        return self.pad_to[num_rows] if num_rows < len(self.pad_to) else num_rows

    def run(self, batch: Batch) -> tuple[torch.Tensor, list[ScheduledProcess]]:
        """Execute swaps and one forward; return logits [N, V] for the items that sample."""
        self.kv.swap_out(batch.swap_out)
        self.kv.swap_in(batch.swap_in)
        input_ids, positions, meta, logit_rows, sampled = self._prepare(batch)
        with torch.inference_mode():
            hidden = self.model.forward(input_ids, positions, self.kv, meta)
            if not logit_rows:
                return torch.empty(0), []
            n = len(logit_rows)
            rows = logit_rows + [logit_rows[0]] * (self._padded(n) - n)
            logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        return logits[:n], sampled

    def _prepare(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[ScheduledProcess]]:
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        tables: list[list[int]] = []
        row_seq: list[int] = []
        seq_rows: list[tuple[int, int, int]] = []
        logit_rows: list[int] = []
        sampled: list[ScheduledProcess] = []
        for seq_idx, item in enumerate(batch.items):
            proc, n = item.proc, item.num_new_tokens
            start = proc.num_computed_tokens
            row = len(ids)
            ctx = start + n
            table = proc.block_table[: -(-ctx // bs)]
            ids.extend(proc.token_ids[start:ctx])
            pos.extend(range(start, ctx))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, ctx))
            tables.append(table)
            row_seq.extend([seq_idx] * n)
            seq_rows.append((row, n, ctx))
            if item.needs_logits:
                logit_rows.append(row + n - 1)
                sampled.append(item)
        pad = self._padded(len(ids)) - len(ids)
        trash = self.kv.trash_block
        ids.extend([0] * pad)
        pos.extend([0] * pad)
        slots.extend(trash * bs + i % bs for i in range(pad))
        width = max(len(t) for t in tables)
        padded = [t + [trash] * (width - len(t)) for t in tables]

        def tensor(x: list[int] | list[list[int]] | range) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=self.device)

        row_ctx = [p + 1 for p in pos[: len(row_seq)]]
        meta = AttentionMetadata(
            slot_mapping=tensor(slots),
            block_tables=tensor(padded),
            row_seq=tensor(row_seq),
            row_ctx=tensor(row_ctx),
            seq_rows=seq_rows,
            max_ctx=max(ctx for _, _, ctx in seq_rows),
            block_size=bs,
        )
        return tensor(ids), tensor(pos), meta, logit_rows, sampled
