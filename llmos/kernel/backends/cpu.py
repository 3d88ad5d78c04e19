"""Paged attention in plain PyTorch (CPU, and any device torch runs on).

Batch invariance: a query's attention must not depend on how its keys were chunked or which
other queries share the call. Scores, softmax and the weighted sum run in float64 and are
rounded to float32 at the end; float64 products of float32 inputs are exact, and the float64
sums' order-dependent error (~1e-16 relative) vanishes in that final rounding, so prefill
chunks, decode steps and any batch mix give the same float32 result. It costs little: attention
is a small share of this model size's FLOPs (see docs/design/kernel.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_NEG_INF = float("-inf")


@dataclass(slots=True)
class PrefillSeq:
    row_start: int  # first row of this sequence's queries in the flat batch
    num_rows: int  # queries this tick
    ctx_len: int  # keys after this tick (computed + new)
    block_table: torch.Tensor  # [num_blocks] long


@dataclass(slots=True)
class AttentionMetadata:
    """How the flat batch of T rows maps onto sequences and KV slots for one forward pass."""

    slot_mapping: torch.Tensor  # [T] long: where each row's K/V is written
    decode_rows: torch.Tensor  # [S] long: row of each single-query sequence
    decode_block_tables: torch.Tensor  # [S, max_blocks] long (padded with the trash block)
    decode_ctx_lens: torch.Tensor  # [S] long
    prefills: list[PrefillSeq]
    num_rows: int


class KVCache:
    """K and V for every layer: [num_blocks + 1, block_size, kv_heads, head_dim] each.

    The extra last block is the trash block: padding rows write there and nothing reads it.
    Swap tensors hold swapped-out blocks in host memory.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_swap_slots: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, 2, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=device)
        self.trash_block = num_blocks
        self.block_size = block_size
        swap_shape = (num_layers, 2, max(num_swap_slots, 1), block_size, num_kv_heads, head_dim)
        self.swap = torch.empty(swap_shape, dtype=dtype, device="cpu")

    @staticmethod
    def bytes_per_block(
        num_layers: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * num_kv_heads * head_dim * elem

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            blocks, slots = (torch.tensor(x) for x in zip(*pairs, strict=True))
            self.swap[:, :, slots] = self.data[:, :, blocks].to("cpu")

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            slots, blocks = (torch.tensor(x) for x in zip(*pairs, strict=True))
            self.data[:, :, blocks] = self.swap[:, :, slots].to(self.data.device)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Write k/v into the cache, then attend each query to its sequence's keys.

    q: [T, H, D], k/v: [T, Hkv, D], caches: [num_blocks + 1, block_size, Hkv, D] -> [T, H * D]
    """
    T, H, D = q.shape
    Hkv = k.shape[1]
    k_cache.view(-1, Hkv, D).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, Hkv, D).index_copy_(0, meta.slot_mapping, v)
    out = torch.zeros(T, H, v.shape[-1], dtype=q.dtype, device=q.device)
    if meta.decode_rows.numel():
        out[meta.decode_rows] = _decode(
            q[meta.decode_rows], k_cache, v_cache, meta, scale, sliding_window, softcap
        )
    for seq in meta.prefills:
        rows = slice(seq.row_start, seq.row_start + seq.num_rows)
        out[rows] = _prefill(q[rows], k_cache, v_cache, seq, scale, sliding_window, softcap)
    return out.view(T, -1)


def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """q: [S, H, D] (one query per sequence) -> [S, H, D]."""
    S, H, D = q.shape
    bt = meta.decode_block_tables
    ctx = meta.decode_ctx_lens
    num_blocks = bt.shape[1]
    first_block = 0
    if window is not None:
        # only the blocks the window can reach: skip leading blocks no sequence needs
        min_start = int((ctx - window).clamp(min=0).min())
        first_block = min_start // k_cache.shape[1]
        bt = bt[:, first_block:]
    keys = k_cache[bt].flatten(1, 2).double()  # [S, L, Hkv, D]
    values = v_cache[bt].flatten(1, 2).double()
    Hkv = keys.shape[2]
    L = keys.shape[1]
    qg = q.double().view(S, Hkv, H // Hkv, D)
    scores = torch.einsum("skgd,slkd->skgl", qg, keys) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    pos = torch.arange(L, device=q.device) + first_block * k_cache.shape[1]
    mask = pos[None, :] >= ctx[:, None]
    if window is not None:
        mask |= pos[None, :] < (ctx[:, None] - window)
    scores.masked_fill_(mask[:, None, None, :], _NEG_INF)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("skgl,slkd->skgd", probs, values)
    del num_blocks
    return out.reshape(S, H, -1).to(q.dtype)


def _prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq: PrefillSeq,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """q: [n, H, D] (the sequence's new queries, last ones of its context) -> [n, H, D]."""
    n, H, D = q.shape
    keys = k_cache[seq.block_table].flatten(0, 1)[: seq.ctx_len].double()  # [L, Hkv, D]
    values = v_cache[seq.block_table].flatten(0, 1)[: seq.ctx_len].double()
    L, Hkv = keys.shape[0], keys.shape[1]
    qg = q.double().view(n, Hkv, H // Hkv, D)
    scores = torch.einsum("nkgd,lkd->kgnl", qg, keys) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    q_pos = torch.arange(L - n, L, device=q.device)
    k_pos = torch.arange(L, device=q.device)
    mask = k_pos[None, :] > q_pos[:, None]
    if window is not None:
        mask |= k_pos[None, :] <= (q_pos[:, None] - window)
    scores.masked_fill_(mask, _NEG_INF)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("kgnl,lkd->nkgd", probs, values)
    return out.reshape(n, H, -1).to(q.dtype)
