"""The native GEMM: a row's bits do not depend on the batch, quantized storage is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmos.ops.linear import Linear, QuantizedMatrix
from tests.required import require_native_kernels


@pytest.fixture(autouse=True)
def _native_gemm() -> None:
    require_native_kernels()
    assert Linear(torch.zeros(64, 32)).is_batch_invariant


def _q4_1(n: int, k: int, g: torch.Generator) -> QuantizedMatrix:
    """A Q4_1-like matrix: 4-bit codes, float16 scales and minimums per 32 k."""
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int8)
    a = (torch.rand(n, k // 32, generator=g) * 0.02).half().float()
    c = (torch.randn(n, k // 32, generator=g) * 0.05).half().float()
    return QuantizedMatrix(q, a, c)


@pytest.mark.parametrize("shape", [(960, 576), (100, 64), (576, 1536)])
def test_rows_are_bit_identical_whatever_the_batch(shape):
    g = torch.Generator().manual_seed(0)
    n, k = shape
    w, b = torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)
    x = torch.randn(300, k, generator=g)
    for layer in (Linear(w, b), Linear(_q4_1(n, k, g), b)):
        full = layer(x)
        for start, rows in [(0, 1), (5, 3), (7, 4), (11, 17), (100, 200), (299, 1)]:
            assert torch.equal(layer(x[start : start + rows]), full[start : start + rows])
        torch.set_num_threads(1)
        try:
            assert torch.equal(layer(x[:50]), full[:50])
        finally:
            torch.set_num_threads(2)


def test_matches_torch_within_float32_rounding():
    g = torch.Generator().manual_seed(1)
    w, b, x = (
        torch.randn(960, 576, generator=g),
        torch.randn(960, generator=g),
        torch.randn(33, 576, generator=g),
    )
    ref = F.linear(x.double(), w.double(), b.double())
    assert (Linear(w, b)(x).double() - ref).abs().max() < 1e-3


def test_quantized_storage_computes_the_dense_weights_bits():
    g = torch.Generator().manual_seed(2)
    qm = _q4_1(192, 576, g)
    dense = qm.dequantize()
    x = torch.randn(20, 576, generator=g)
    for rows in (1, 3, 4, 5, 20):  # the register path (<= 4 rows) and the scratch path
        assert torch.equal(Linear(qm)(x[:rows]), Linear(dense)(x[:rows]))


def test_rows_lookup_is_the_embedding():
    g = torch.Generator().manual_seed(4)
    qm = _q4_1(200, 64, g)
    ids = torch.tensor([0, 63, 64, 199, 5])
    assert torch.equal(Linear(qm).rows(ids), qm.dequantize()[ids])
    dense = torch.randn(200, 64, generator=g)
    assert torch.equal(Linear(dense).rows(ids), dense[ids])
