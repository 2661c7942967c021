"""The input quantization of FP8 GEMM layers as one Triton pass: ``e4m3(clamp(x * inv, -448,
448))``, read once in its own float type and written as one byte an element (the three PyTorch
operations it replaces write the input again in float32 twice). NaN stays NaN: its byte is set
explicitly (Triton's min/max would turn it into a bound, and the interpreter's conversion into a
number); the conversion rounds to nearest even on the GPU (``cvt.rn.satfinite``).

``quantize_e4m3`` falls back to those PyTorch operations where Triton cannot run (no package, no
GPU, TensorFlow loaded): the results are the same. The module imports without Triton; CI runs the
kernel under Triton's interpreter (``TRITON_INTERPRET=1``), whose own float8 rounding breaks ties
upwards, so its tests avoid ties.
"""
from __future__ import annotations

import torch

from ember.backends.cuda.libs import triton_modules

triton, tl = triton_modules()  # None where Triton cannot run here; the launchers need it

#: e4m3's largest finite value
E4M3_MAX = 448.0
_BLOCK = 2048


def quantize_e4m3_torch(x: torch.Tensor, inv: float) -> torch.Tensor:
    """``e4m3(clamp(x * inv, -448, 448))`` with PyTorch operations (any device)."""
    return (x.float() * inv).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_e4m3(x: torch.Tensor, inv: float, use_triton: bool = True) -> torch.Tensor:
    """``x`` (any float dtype and shape) quantized to float8e4m3fn with the multiplier ``inv``
    (``1 / scale``), in one Triton pass where Triton runs on ``x``'s device, else with PyTorch."""
    interpreted = triton is not None and _interpreted()
    if triton is None or not use_triton or not (x.is_cuda or interpreted):
        return quantize_e4m3_torch(x, inv)
    src = x.contiguous()
    out = torch.empty(src.shape, dtype=torch.float8_e4m3fn, device=src.device)
    n = src.numel()
    if n:
        # written as bytes: the kernel sets NaN's byte itself (0x7F), whatever the conversion does
        quantize_e4m3_kernel[(triton.cdiv(n, _BLOCK),)](src, out.view(torch.uint8), n, float(inv), BLOCK=_BLOCK)
    return out


def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    # N specialized (Triton keys on N % 16): the bound check then splits into whole 16-byte
    # vectors. Unspecialized, every access was scalar: 0.21 ms against 0.053 ms for BERT-base
    # b128's 16384x3072 input on the H100 (bench/probes/fp8_quantize_variants.py)
    @triton.jit
    def quantize_e4m3_kernel(x_ptr, y_ptr, N, INV, BLOCK: tl.constexpr):
        """One ``BLOCK`` of ``quantize_e4m3``."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * INV
        c = tl.minimum(tl.maximum(v, -448.0), 448.0)
        bits = c.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        bits = tl.where(v != v, 0x7F, bits)  # NaN in, NaN out (e4m3fn's NaN: S.1111.111)
        tl.store(y_ptr + offs, bits, mask=mask)
