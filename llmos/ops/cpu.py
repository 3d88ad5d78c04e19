"""The KV cache and paged attention: each query row attends to its sequence's keys in the pool.

Batch invariance: a query's attention must not depend on how its keys were chunked or which
other queries share the call. The native kernel (csrc/paged_attention.c) computes every row on
its own with sums in one fixed order, reading K/V straight from the pool through the block
table. The PyTorch fallback (no C compiler, or a non-CPU device) runs scores, softmax and the
weighted sum in float64 and rounds to float32, which hides order effects in practice; see
docs/design/kernel.md.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch

from llmos.ops import native

_NEG_INF = float("-inf")


@dataclass(slots=True)
class AttentionMetadata:
    """How the flat batch of T rows maps onto sequences and KV slots for one forward pass.

    Rows of one sequence are contiguous and in position order; pad rows (T - R of them, at the
    end) write their K/V into the trash block and are not attended.
    """

    slot_mapping: torch.Tensor  # [T] long: where each row's K/V is written
    block_tables: torch.Tensor  # [S, max_blocks] long (padded with the trash block)
    row_seq: torch.Tensor  # [R] long: the sequence of each real row
    row_ctx: torch.Tensor  # [R] long: keys each row sees (its position + 1)
    seq_rows: list[tuple[int, int, int]]  # per sequence: (first row, num rows, context length)
    max_ctx: int
    block_size: int = 16
    # derived once per tick, shared by every layer
    slot_block: torch.Tensor = field(init=False)
    slot_offset: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.slot_block = self.slot_mapping // self.block_size
        self.slot_offset = self.slot_mapping % self.block_size


class KVCache:
    """K and V for every layer, in blocks (see csrc/paged_attention.c for why these layouts):

    k: [num_layers, num_blocks + 1, kv_heads, head_dim, block_size]
    v: [num_layers, num_blocks + 1, block_size, kv_heads, head_dim]

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
        nb, bs, Hkv, D = num_blocks + 1, block_size, num_kv_heads, head_dim
        self.k = torch.zeros((num_layers, nb, Hkv, D, bs), dtype=dtype, device=device)
        self.v = torch.zeros((num_layers, nb, bs, Hkv, D), dtype=dtype, device=device)
        self.trash_block = num_blocks
        self.block_size = block_size
        ns = max(num_swap_slots, 1)
        self.swap_k = torch.empty((num_layers, ns, Hkv, D, bs), dtype=dtype, device="cpu")
        self.swap_v = torch.empty((num_layers, ns, bs, Hkv, D), dtype=dtype, device="cpu")

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
            self.swap_k[:, slots] = self.k[:, blocks].to("cpu")
            self.swap_v[:, slots] = self.v[:, blocks].to("cpu")

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        if pairs:
            slots, blocks = (torch.tensor(x) for x in zip(*pairs, strict=True))
            self.k[:, blocks] = self.swap_k[:, slots].to(self.k.device)
            self.v[:, blocks] = self.swap_v[:, slots].to(self.v.device)


class _NativeAttention:
    """Calls the C kernel, which splits (row, head) pairs over PyTorch's OpenMP threads."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.fn = lib.paged_attention_f32

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        out: torch.Tensor,
        scale: float,
        window: int | None,
        softcap: float | None,
    ) -> None:
        num_rows = meta.row_seq.numel()
        if num_rows == 0:
            return
        T, H, D = q.shape
        rc = self.fn(
            q.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            meta.block_tables.data_ptr(),
            meta.block_tables.shape[1],
            meta.row_seq.data_ptr(),
            meta.row_ctx.data_ptr(),
            num_rows,
            meta.max_ctx,
            H,
            k_cache.shape[1],
            D,
            v_cache.shape[3],
            k_cache.shape[3],
            scale,
            window or 0,
            softcap or 0.0,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise MemoryError("paged attention kernel could not allocate scratch memory")


_native: _NativeAttention | None = None


def native_attention() -> _NativeAttention | None:
    global _native
    if _native is None:
        lib = native.load()
        if lib is not None:
            _native = _NativeAttention(lib)
    return _native


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
    """Write k/v into the cache, then attend each query row to its sequence's keys.

    q: [T, H, D], k/v: [T, Hkv, D], k_cache: [blocks, Hkv, D, bs], v_cache: [blocks, bs, Hkv, D]
    -> [T, H * D]
    """
    T, H, _ = q.shape
    k_cache[meta.slot_block, :, :, meta.slot_offset] = k
    v_cache.view(-1, v.shape[1], v.shape[2]).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty(T, H, v.shape[-1], dtype=q.dtype, device=q.device)
    out[meta.row_seq.numel() :] = 0  # pad rows are not attended
    kernel = native_attention() if q.device.type == "cpu" and q.dtype == torch.float32 else None
    if kernel is not None:
        kernel(q.contiguous(), k_cache, v_cache, meta, out, scale, sliding_window, softcap)
    else:
        for seq_idx, (row, n, ctx) in enumerate(meta.seq_rows):
            table = meta.block_tables[seq_idx]
            out[row : row + n] = _attend_torch(
                q[row : row + n], k_cache, v_cache, table, ctx, scale, sliding_window, softcap
            )
    return out.view(T, -1)


def _attend_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    ctx: int,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """q: [n, H, D] (a sequence's last n queries of a context of `ctx`) -> [n, H, Dv]."""
    n, H, D = q.shape
    num_blocks = -(-ctx // v_cache.shape[1])
    keys = k_cache[table[:num_blocks]].permute(0, 3, 1, 2).flatten(0, 1)[:ctx].double()
    values = v_cache[table[:num_blocks]].flatten(0, 1)[:ctx].double()
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
