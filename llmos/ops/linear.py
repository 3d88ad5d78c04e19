"""Linear layers, y = x W^T (+ b), on the native batch-invariant GEMM (csrc/gemm.c).

Invariants: a row's output does not depend on how many rows share the call (every output is one
float32 multiply-add chain over k in index order); a `QuantizedMatrix` reproduces the float32
weights of its GGUF tensor bit for bit (tests/models/test_gguf.py), so quantized storage changes
how many bytes are streamed per token, never the arithmetic. Without AVX-512 or on another
device a `Linear` runs `F.linear` on dense weights, and the runner pads small batches instead
(see runner.py). See docs/design/kernel.md ("Linear layers").
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmos.ops import native

PANEL = 64  # output columns per packed panel (csrc/gemm.c: NR)
GROUP = 32  # k per quantization group (csrc/gemm.c: QG)


@dataclass(slots=True)
class QuantizedMatrix:
    """A [N, K] weight as w = (a * q) + c in float32, per row and group of 32 along k.

    q: [N, K] int8, a and c: [N, K / 32] float32. GGUF's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensors are
    exactly this (their dequantizer rounds the product, then the sum); models/gguf.py decodes
    them.
    """

    q: torch.Tensor
    a: torch.Tensor
    c: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K], rounded exactly as gguf's dequantizer rounds it."""
        N, K = self.q.shape
        q = self.q.view(N, K // GROUP, GROUP).float()
        return ((self.a.unsqueeze(-1) * q) + self.c.unsqueeze(-1)).view(N, K)

    @staticmethod
    def cat(parts: list[QuantizedMatrix]) -> QuantizedMatrix:
        """Stack along the output dimension (fused q/k/v or gate/up projections)."""
        return QuantizedMatrix(
            torch.cat([p.q for p in parts]),
            torch.cat([p.a for p in parts]),
            torch.cat([p.c for p in parts]),
        )


def _lib() -> ctypes.CDLL | None:
    lib = native.load()
    return lib if lib is not None and lib.linear_f32_available() else None


def _panels(t: torch.Tensor) -> torch.Tensor:
    """[N, X] -> [ceil(N/64), X, 64], zero-padded: column panels as csrc/gemm.c reads them."""
    N = t.shape[0]
    pad = -N % PANEL
    if pad:
        t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))])
    return t.view(-1, PANEL, *t.shape[1:]).transpose(1, 2).contiguous()


def _nibble_zero(qm: QuantizedMatrix) -> int | None:
    """0 or 8 when every code fits 4 bits as code + zero and the scales are float16-exact
    (GGUF's Q4_0/Q4_1), else None."""
    lo, hi = int(qm.q.min()), int(qm.q.max())
    zero = 0 if lo >= 0 and hi <= 15 else 8 if lo >= -8 and hi <= 7 else None
    exact = all(torch.equal(t.half().float(), t) for t in (qm.a, qm.c))
    return zero if exact else None


class _Nibbles:
    """4-bit panels as csrc/gemm.c's linear_q4_f32 reads them: [P, K, 32] bytes whose low
    nibble is column j and high nibble column j + 32 of the panel, scales float16."""

    def __init__(self, qm: QuantizedMatrix, zero: int) -> None:
        codes = _panels((qm.q.to(torch.int16) + zero).to(torch.uint8))  # [P, K, 64]
        self.q = codes[..., :32] | (codes[..., 32:] << 4)
        self.a, self.c = _panels(qm.a.half()), _panels(qm.c.half())
        self.zero = zero

    def rows(self, panel: torch.Tensor, col: torch.Tensor) -> QuantizedMatrix:
        b = self.q[panel, :, col % 32]
        u = torch.where((col < 32).unsqueeze(-1), b & 15, b >> 4)
        codes = (u.to(torch.int16) - self.zero).to(torch.int8)
        return QuantizedMatrix(codes, self.a[panel, :, col].float(), self.c[panel, :, col].float())


class Linear:
    """y = x W^T (+ b) for x [T, K] -> [T, N], batch-invariant on the native path.

    Storage, smallest first: 4-bit panels (Q4_0/Q4_1), int8 panels with float32 group scales
    (other block types), dense float32 panels; dense [N, K] for the PyTorch fallback."""

    def __init__(
        self,
        weight: torch.Tensor | QuantizedMatrix,
        bias: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.float().contiguous().to(device)
        self.lib = _lib() if torch.device(device).type == "cpu" else None
        self.weight: torch.Tensor | None = None  # dense [N, K], fallback path only
        self.packed: torch.Tensor | None = None  # [P, K, 64] float32
        self.quantized: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.nibbles: _Nibbles | None = None
        if self.lib is None:
            dense = weight.dequantize() if isinstance(weight, QuantizedMatrix) else weight
            self.weight = dense.contiguous().to(device)
        elif isinstance(weight, QuantizedMatrix):
            zero = _nibble_zero(weight)
            if zero is not None:
                self.nibbles = _Nibbles(weight, zero)
            else:
                self.quantized = (_panels(weight.q), _panels(weight.a), _panels(weight.c))
        else:
            self.packed = _panels(weight.float())

    @property
    def is_batch_invariant(self) -> bool:
        return self.lib is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, K] -> [T, N]."""
        if self.lib is None:
            assert self.weight is not None
            return F.linear(x, self.weight, self.bias)
        x = x.contiguous()
        T, K, N = x.shape[0], self.in_features, self.out_features
        out = torch.empty(T, N, dtype=torch.float32)
        bias = None if self.bias is None else self.bias.data_ptr()
        threads = torch.get_num_threads()
        if self.nibbles is not None:
            nb = self.nibbles
            self.lib.linear_q4_f32(
                x.data_ptr(), T, K, nb.q.data_ptr(), nb.a.data_ptr(), nb.c.data_ptr(), nb.zero,
                N, bias, out.data_ptr(), threads,
            )  # fmt: skip
        elif self.quantized is not None:
            q, a, c = self.quantized
            self.lib.linear_q8_f32(
                x.data_ptr(), T, K, q.data_ptr(), a.data_ptr(), c.data_ptr(), N, bias,
                out.data_ptr(), threads,
            )  # fmt: skip
        else:
            assert self.packed is not None
            self.lib.linear_f32(
                x.data_ptr(), T, K, self.packed.data_ptr(), N, bias, out.data_ptr(), threads
            )
        return out

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W as float32 [len(ids), K] (an embedding lookup on a tied LM head)."""
        if self.weight is not None:
            return F.embedding(ids, self.weight)
        panel, col = ids // PANEL, ids % PANEL
        if self.nibbles is not None:
            return self.nibbles.rows(panel, col).dequantize()
        if self.quantized is not None:
            q, a, c = self.quantized
            return QuantizedMatrix(
                q[panel, :, col], a[panel, :, col], c[panel, :, col]
            ).dequantize()
        assert self.packed is not None
        return self.packed[panel, :, col]

    def dense(self) -> torch.Tensor:
        """The float32 weight [N, K] (for calibration and tests)."""
        if self.weight is not None:
            return self.weight
        return self.rows(torch.arange(self.out_features))
