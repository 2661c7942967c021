"""The quantization ops with ONNX's exact arithmetic (bit-exact to ONNX Runtime):

- quantize: ``q = saturate(round_half_to_even(x / scale) + zero_point)``, the division in float32
  (float16/bfloat16 inputs and scales are widened first, as ONNX Runtime does); NaN becomes the
  type's lowest value (ONNX Runtime's MLAS clamps NaN to the lower bound);
- dequantize: ``y = float32(int32(q) - int32(zero_point)) * scale``, then the output type;
- DynamicQuantizeLinear (ONNX Runtime's range, scale and zero point), MatMulInteger and
  ConvInteger (exact integer results through float64, see ``_centered``).

Device-agnostic torch (the CUDA backend runs these as its generic fallback): the scale is a tensor
on the input's device, never a Python or CPU scalar, because CUDA divides by a CPU scalar through
its reciprocal, which is not exact.
"""
from __future__ import annotations

from typing import Optional

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, norm_axis, torch_dtype
from ember.backends.cpu.kernels.conv import conv_forward
from ember.backends.cpu.kernels.shape import to_float8
from ember.backends.cpu.registry import register_kernel
from ember.backends.tensors import FLOAT8_TORCH, from_torch_dtype
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import ConvAttrs, QuantizeAttrs
from ember.ops.quantize import QUANT_RANGE


def broadcast_param(p: Tensor, x: Tensor, axis: int, block_size: int) -> Tensor:
    """A scale or zero point shaped to broadcast against ``x``: per-tensor (one value), per-axis
    (1-D along ``axis``) or blocked (each entry repeated ``block_size`` times along ``axis``)."""
    p = p.to(x.device)
    rank = x.dim()
    if block_size > 0:
        ax = norm_axis(axis, rank)
        p = torch.repeat_interleave(p, block_size, dim=ax)
        return p.narrow(ax, 0, x.shape[ax])
    if p.numel() == 1:
        return p.reshape([1] * rank)
    ax = norm_axis(axis, rank)
    shape = [1] * rank
    shape[ax] = p.numel()
    return p.reshape(shape)


def quantize(x: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: DType,
             axis: int = 1, block_size: int = 0, saturate: bool = True) -> Tensor:
    """ONNX QuantizeLinear of ``x`` into ``out`` (int8, uint8, int16, uint16, or an 8-bit float:
    ``x / scale + zero_point`` converted with Cast's rounding and ``saturate``)."""
    if out.is_float8:
        v = x.to(torch.float32) / broadcast_param(scale, x, axis, block_size).to(torch.float32)
        if zero_point is not None:
            v = v + broadcast_param(zero_point, x, axis, block_size).to(torch.float32)
        return to_float8(v, out, saturate)
    lo, hi = QUANT_RANGE[out]
    s = broadcast_param(scale, x, axis, block_size).to(torch.float32)
    v = x.to(torch.float32) / s
    q = torch.round(v)  # half to even
    if zero_point is not None:
        q = q + broadcast_param(zero_point, x, axis, block_size).to(torch.float32)
    q = torch.clamp(q, lo, hi)
    q = torch.where(torch.isnan(v), torch.full_like(q, lo), q)
    return q.to(torch_dtype(out))


def dequantize(q: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: DType,
               axis: int = 1, block_size: int = 0) -> Tensor:
    """ONNX DequantizeLinear of ``q`` (int8, uint8, int16, uint16, int32, or an 8-bit float) into
    ``out``."""
    if q.dtype in FLOAT8_TORCH:  # 8-bit floats widen exactly to float32
        f = q.to(torch.float32)
        if zero_point is not None:
            f = f - broadcast_param(zero_point, q, axis, block_size).to(torch.float32)
        y8 = f * broadcast_param(scale, q, axis, block_size).to(torch.float32)
        return y8 if out is DType.FLOAT32 else y8.to(torch_dtype(out))
    v = q.to(torch.int32)
    if zero_point is not None:
        v = v - broadcast_param(zero_point, q, axis, block_size).to(torch.int32)
    s = broadcast_param(scale, q, axis, block_size).to(torch.float32)
    y = v.to(torch.float32) * s
    return y if out is DType.FLOAT32 else y.to(torch_dtype(out))


def quantized_dtype(zero_point: Optional[Tensor], attrs: QuantizeAttrs) -> DType:
    """QuantizeLinear's output type: the zero point's, else ``output_dtype``, else uint8."""
    if zero_point is not None:
        return from_torch_dtype(zero_point.dtype)
    return attrs.output_dtype or DType.UINT8


@register_kernel(OpType.QUANTIZE_LINEAR)
def quantize_linear(node: Node, ctx: CompileContext) -> Kernel:
    attrs: QuantizeAttrs = node.attrs or QuantizeAttrs()

    def run(inputs: Inputs) -> list:
        x, scale, zp = inputs[0], inputs[1], arg(inputs, 2)
        assert x is not None and scale is not None
        return [quantize(x, scale, zp, quantized_dtype(zp, attrs), attrs.axis, attrs.block_size, attrs.saturate)]

    return run


@register_kernel(OpType.DEQUANTIZE_LINEAR)
def dequantize_linear(node: Node, ctx: CompileContext) -> Kernel:
    attrs: QuantizeAttrs = node.attrs or QuantizeAttrs()

    def run(inputs: Inputs) -> list:
        q, scale = inputs[0], inputs[1]
        assert q is not None and scale is not None
        out = attrs.output_dtype or from_torch_dtype(scale.dtype)
        return [dequantize(q, scale, arg(inputs, 2), out, attrs.axis, attrs.block_size)]

    return run


# ---- dynamic quantization's integer ops -------------------------------------------------------
def dynamic_quantize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX DynamicQuantizeLinear as ONNX Runtime computes it: the range widened to include 0,
    ``scale = (max - min) / 255`` (1 when the range is empty), ``zero_point =
    round(clamp(0 - min / scale, 0, 255))``, then QuantizeLinear to uint8. NaN inputs are left
    out of the range and quantize to 0, as in ONNX Runtime."""
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    finite = torch.where(torch.isnan(x), zero, x)  # NaN is left out of the range (the range has 0)
    lo = torch.minimum(finite.min(), zero) if x.numel() else zero
    hi = torch.maximum(finite.max(), zero) if x.numel() else zero
    scale = (hi - lo) / torch.full((), 255.0, device=x.device)  # a device tensor: see the module doc
    scale = torch.where(hi == lo, torch.ones_like(scale), scale)
    zp = torch.round(torch.clamp(zero - lo / scale, 0.0, 255.0)).to(torch.uint8)
    return quantize(x, scale, zp, DType.UINT8), scale, zp


def _centered(t: Tensor, zp: Optional[Tensor], shape: list[int]) -> Tensor:
    """``t - zero_point`` as float64 (exact: products of 8-bit differences and their sums stay
    far below 2**53, so float64 GEMMs and convolutions give the exact integer result on any
    device, where integer GEMMs are not available)."""
    v = t.to(torch.float64)
    if zp is not None:
        z = zp.to(t.device).to(torch.float64)
        v = v - (z.reshape(shape) if z.numel() > 1 else z.reshape([1] * max(v.dim(), 1)))
    return v


@register_kernel(OpType.DYNAMIC_QUANTIZE_LINEAR)
def dynamic_quantize_linear(node: Node, ctx: CompileContext) -> Kernel:
    def run(inputs: Inputs) -> list:
        x = inputs[0]
        assert x is not None
        return list(dynamic_quantize(x))

    return run


@register_kernel(OpType.MATMUL_INTEGER)
def matmul_integer(node: Node, ctx: CompileContext) -> Kernel:
    """(A - a_zero_point) @ (B - b_zero_point) in int32; a 1-D a_zero_point is per row of A,
    a 1-D b_zero_point per column of B."""
    def run(inputs: Inputs) -> list:
        a, b = inputs[0], inputs[1]
        assert a is not None and b is not None
        fa = _centered(a, arg(inputs, 2), [-1, 1])
        fb = _centered(b, arg(inputs, 3), [-1])
        return [torch.round(torch.matmul(fa, fb)).to(torch.int32)]

    return run


@register_kernel(OpType.CONV_INTEGER)
def conv_integer(node: Node, ctx: CompileContext) -> Kernel:
    """Conv of (x - x_zero_point) and (w - w_zero_point) in int32; padding reads the zero point
    (0 after centering), as in ONNX Runtime. A 1-D w_zero_point is per output channel."""
    attrs: ConvAttrs = node.attrs

    def run(inputs: Inputs) -> list:
        x, w = inputs[0], inputs[1]
        assert x is not None and w is not None
        fx = _centered(x, arg(inputs, 2), [1, -1] + [1] * (x.dim() - 2))
        fw = _centered(w, arg(inputs, 3), [-1] + [1] * (w.dim() - 1))
        return [torch.round(conv_forward(fx, fw, None, attrs)).to(torch.int32)]

    return run
