"""Row padding: every row count the runner pads to computes the large-batch path's bits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmos.kernel.runner import calibrate_row_padding


def test_padded_row_counts_reproduce_large_batch_rows():
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(960, 576, generator=g), torch.randn(576, 1536, generator=g)]
    pad_to = calibrate_row_padding(weights)
    assert all(m >= n for n, m in enumerate(pad_to))
    x = torch.randn(64, 576, generator=g)
    h = torch.randn(64, 1536, generator=g)
    for n in range(1, len(pad_to)):
        m = pad_to[n]
        assert torch.equal(F.linear(x[:m], weights[0])[:n], F.linear(x, weights[0])[:n])
        assert torch.equal(F.linear(h[:m], weights[1])[:n], F.linear(h, weights[1])[:n])
