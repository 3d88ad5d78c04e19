"""The model runner: a scheduler Batch -> flat tensors -> one forward pass -> logits.

Batch invariance: fp32 GEMMs on this CPU take another code path below 16 rows, so every GEMM
input is padded to at least `min_rows` rows (pad rows write their K/V into the trash block and
are dropped); with attention computed per query (backends/cpu.py) a process's logits are then
bit-identical whoever shares its tick. See docs/design/kernel.md.
"""

from __future__ import annotations

import torch

from llmos.kernel.backends.cpu import AttentionMetadata, KVCache
from llmos.kernel.scheduler import Batch, ScheduledProcess
from llmos.models.registry import CausalLM

MIN_GEMM_ROWS = 16


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        kv: KVCache,
        *,
        min_rows: int = MIN_GEMM_ROWS,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.kv = kv
        self.min_rows = min_rows
        self.device = torch.device(device)
        self.block_size = kv.block_size

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
            rows = logit_rows + [logit_rows[0]] * max(0, self.min_rows - n)
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
        pad = max(0, self.min_rows - len(ids))
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
        )
        return tensor(ids), tensor(pos), meta, logit_rows, sampled
