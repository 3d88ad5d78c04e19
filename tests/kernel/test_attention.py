"""Paged attention: native kernel vs the float64 PyTorch path, and bit-exact batch invariance."""

from __future__ import annotations

import pytest
import torch

from llmos.ops import cpu
from llmos.ops.cpu import AttentionMetadata, paged_attention
from tests.required import require_native_kernels

BS, HKV, G, D = 16, 2, 3, 32
H = HKV * G


def _meta(tables: list[list[int]], seqs: list[tuple[int, int]], trash: int) -> AttentionMetadata:
    """seqs: (num_computed, num_new) per sequence, rows laid out sequence after sequence."""
    slots, row_seq, row_ctx, seq_rows = [], [], [], []
    for i, ((start, n), table) in enumerate(zip(seqs, tables, strict=True)):
        seq_rows.append((len(row_seq), n, start + n))
        for p in range(start, start + n):
            slots.append(table[p // BS] * BS + p % BS)
            row_seq.append(i)
            row_ctx.append(p + 1)
    width = max(len(t) for t in tables)
    padded = [t + [trash] * (width - len(t)) for t in tables]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor(padded),
        row_seq=torch.tensor(row_seq),
        row_ctx=torch.tensor(row_ctx),
        seq_rows=seq_rows,
        max_ctx=max(row_ctx),
        block_size=BS,
    )


def _caches(num_blocks: int = 40):
    return (torch.zeros(num_blocks + 1, HKV, D, BS), torch.zeros(num_blocks + 1, BS, HKV, D))


def _run(seqs, tables, q, k, v, kc, vc, **kw):
    return paged_attention(
        q, k, v, kc, vc, _meta(tables, seqs, kc.shape[0] - 1), scale=D**-0.5, **kw
    )


@pytest.fixture
def needs_native():
    require_native_kernels()
    assert cpu.native_attention() is not None


@pytest.mark.parametrize("window", [None, 7])
def test_native_matches_float64_reference(needs_native, window, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 45
    q, k, v = (torch.randn(n, h, D, generator=g) for h in (H, HKV, HKV))
    tables = [[3, 9, 1]]
    kc, vc = _caches()
    native = _run([(0, n)], tables, q, k, v, kc, vc, sliding_window=window)
    monkeypatch.setattr(cpu, "native_attention", lambda: None)
    kc2, vc2 = _caches()
    ref = _run([(0, n)], tables, q, k, v, kc2, vc2, sliding_window=window)
    torch.testing.assert_close(native, ref, atol=2e-6, rtol=0)


def test_a_query_gives_identical_bits_however_its_keys_were_chunked(needs_native):
    g = torch.Generator().manual_seed(1)
    n = 40
    q, k, v = (torch.randn(n, h, D, generator=g) for h in (H, HKV, HKV))
    table = [[5, 2, 7]]
    kc, vc = _caches()
    whole = _run([(0, n)], table, q, k, v, kc, vc)
    kc, vc = _caches()
    parts = []
    for start, size in [(0, 13), (13, 1), (14, 20), (34, 6)]:
        rows = slice(start, start + size)
        parts.append(_run([(start, size)], table, q[rows], k[rows], v[rows], kc, vc))
    assert torch.equal(torch.cat(parts), whole)
    # the same last query, decoded beside an unrelated sequence
    other = torch.randn(3, H, D, generator=g)
    q2 = torch.cat([other[:1], q[-1:]])
    k2 = torch.cat([torch.randn(1, HKV, D, generator=g), k[-1:]])
    v2 = torch.cat([torch.randn(1, HKV, D, generator=g), v[-1:]])
    mixed = _run([(0, 1), (n - 1, 1)], [[11], table[0]], q2, k2, v2, kc, vc)
    assert torch.equal(mixed[1], whole[-1])
