"""The model runner: a scheduler Batch -> flat tensors -> one forward pass -> logits.

Batch invariance: fp32 GEMMs on this CPU take another code path below 16 rows, so every GEMM
input is padded to at least `min_rows` rows (pad rows write their K/V into the trash block and
are dropped); with attention computed per query (backends/cpu.py) a process's logits are then
bit-identical whoever shares its tick. See docs/design/kernel.md.
"""

from __future__ import annotations

import torch

from llmos.kernel.backends.cpu import AttentionMetadata, KVCache, PrefillSeq
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
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_ctx: list[int] = []
        prefills: list[PrefillSeq] = []
        logit_rows: list[int] = []
        sampled: list[ScheduledProcess] = []
        for item in batch.items:
            proc, n = item.proc, item.num_new_tokens
            start = proc.num_computed_tokens
            row = len(ids)
            ids.extend(proc.token_ids[start : start + n])
            table = proc.block_table
            for p in range(start, start + n):
                pos.append(p)
                slots.append(table[p // bs] * bs + p % bs)
            ctx = start + n
            num_blocks = -(-ctx // bs)
            if n == 1:
                decode_rows.append(row)
                decode_tables.append(table[:num_blocks])
                decode_ctx.append(ctx)
            else:
                bt = torch.tensor(table[:num_blocks], dtype=torch.long, device=self.device)
                prefills.append(PrefillSeq(row, n, ctx, bt))
            if item.needs_logits:
                logit_rows.append(row + n - 1)
                sampled.append(item)
        num_rows = len(ids)
        pad = max(0, self.min_rows - num_rows)
        trash = self.kv.trash_block * bs
        ids.extend([0] * pad)
        pos.extend([0] * pad)
        slots.extend(trash + (i % bs) for i in range(pad))
        width = max((len(t) for t in decode_tables), default=0)
        padded = [t + [self.kv.trash_block] * (width - len(t)) for t in decode_tables]

        def tensor(x: list[int] | list[list[int]]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long, device=self.device)

        meta = AttentionMetadata(
            slot_mapping=tensor(slots),
            decode_rows=tensor(decode_rows),
            decode_block_tables=tensor(padded).view(len(padded), width),
            decode_ctx_lens=tensor(decode_ctx),
            prefills=prefills,
            num_rows=num_rows + pad,
        )
        return tensor(ids), tensor(pos), meta, logit_rows, sampled
