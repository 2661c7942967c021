"""QuantizeLinear and DequantizeLinear (ONNX's linear quantization): shape/type inference and
the checks that keep a Q/DQ node within what Ember runs exactly.

quantize: ``y = saturate(round_half_to_even(x / scale) + zero_point)`` (8-bit float types: ``x /
scale + zero_point`` converted to the type, saturating as ``QuantizeAttrs.saturate`` says);
dequantize: ``y = (x - zero_point) * scale``. The scale's shape says the granularity (per-tensor,
per-axis, blocked: see ``QuantizeAttrs``); the zero point has the scale's shape.
"""
from __future__ import annotations

from typing import Optional

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import ConvAttrs, QuantizeAttrs
from ember.ops.common import Consts, Types, input_at, need_input, norm_axis, require
from ember.ops.conv import window_out_dims
from ember.ops.linalg import matmul_shape
from ember.ops.registry import register_op

#: The 8-bit float types of FP8 quantization (``y = saturate(x / scale + zero_point)`` converted
#: to the type, rounding to nearest even; no integer rounding).
FLOAT8_DTYPES = (DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ)
#: The quantized types QuantizeLinear writes (DequantizeLinear also reads INT32).
QUANTIZED_DTYPES = (DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, *FLOAT8_DTYPES)
DEQUANTIZABLE_DTYPES = (*QUANTIZED_DTYPES, DType.INT32)
SCALE_DTYPES = (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16)

#: Saturation bounds of each quantized type.
QUANT_RANGE = {DType.INT8: (-128, 127), DType.UINT8: (0, 255), DType.INT16: (-32768, 32767),
               DType.UINT16: (0, 65535), DType.INT32: (-2**31, 2**31 - 1)}


def granularity(x: TensorType, scale: TensorType, attrs: QuantizeAttrs) -> str:
    """``"tensor"``, ``"axis"`` or ``"block"``: how ``scale`` applies to ``x``; ShapeError when
    its shape fits none of them."""
    if attrs.block_size > 0:
        axis = norm_axis(attrs.axis, x.rank)
        require(scale.rank == x.rank, f"blocked quantization needs a scale of the input's rank "
                                      f"{x.rank}, got {scale}")
        for i, (d, s) in enumerate(zip(x.shape, scale.shape)):
            if not (isinstance(d, int) and isinstance(s, int)):
                continue
            want = -(-d // attrs.block_size) if i == axis else d
            require(s == want, f"blocked quantization (block_size {attrs.block_size}, axis {axis}) of "
                               f"{x} needs a scale of {want} along axis {i}, got {scale}")
        return "block"
    if scale.rank == 0 or (scale.rank == 1 and scale.shape[0] == 1):
        return "tensor"
    require(scale.rank == 1, f"the scale must be a scalar (per-tensor) or 1-D (per-axis) without "
                             f"block_size, got {scale}")
    require(x.rank >= 1, f"a per-axis scale {scale} needs an input of rank >= 1, got {x}")
    axis = norm_axis(attrs.axis, x.rank)
    d, s = x.shape[axis], scale.shape[0]
    if isinstance(d, int) and isinstance(s, int):
        require(d == s, f"a per-axis scale along axis {attrs.axis} needs {d} values, got {scale}")
    return "axis"


def _check_zero_point(zp: Optional[TensorType], scale: TensorType, dtypes: tuple[DType, ...]) -> None:
    if zp is None:
        return
    require(zp.dtype in dtypes, f"zero point type {zp.dtype.value} is not one of "
                                f"{', '.join(d.value for d in dtypes)}")
    same: bool = zp.shape == scale.shape or (_numel_one(zp.shape) and _numel_one(scale.shape))
    require(same, f"the zero point {zp} must have the scale's shape {scale}")


def _numel_one(shape: tuple[Dim, ...]) -> bool:
    return all(d == 1 for d in shape)


@register_op(OpType.QUANTIZE_LINEAR, attrs=QuantizeAttrs)
def infer_quantize(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """The output has the input's shape and the zero point's type (else ``output_dtype``, else
    uint8)."""
    attrs: QuantizeAttrs = node.attrs
    x = need_input(in_types, 0, "x")
    scale = need_input(in_types, 1, "y_scale")
    zp = input_at(in_types, 2)
    require(x.dtype in SCALE_DTYPES, f"QuantizeLinear input must be float32, float16 or bfloat16, got {x}")
    require(scale.dtype in SCALE_DTYPES, f"the scale must be float32, float16 or bfloat16, got {scale}")
    _check_zero_point(zp, scale, QUANTIZED_DTYPES)
    out = zp.dtype if zp is not None else attrs.output_dtype or DType.UINT8
    if zp is not None and attrs.output_dtype is not None and attrs.output_dtype is not zp.dtype:
        raise ShapeError(f"output_dtype {attrs.output_dtype.value} differs from the zero point's "
                         f"type {zp.dtype.value}")
    require(out in QUANTIZED_DTYPES, f"output type {out.value} is not one of "
                                     f"{', '.join(d.value for d in QUANTIZED_DTYPES)}")
    granularity(x, scale, attrs)
    return [TensorType(out, x.shape)]


@register_op(OpType.DEQUANTIZE_LINEAR, attrs=QuantizeAttrs)
def infer_dequantize(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """The output has the input's shape and the scale's type (else ``output_dtype``)."""
    attrs: QuantizeAttrs = node.attrs
    x = need_input(in_types, 0, "x")
    scale = need_input(in_types, 1, "x_scale")
    zp = input_at(in_types, 2)
    require(x.dtype in DEQUANTIZABLE_DTYPES, f"DequantizeLinear input type {x.dtype.value} is not one "
                                             f"of {', '.join(d.value for d in DEQUANTIZABLE_DTYPES)}")
    require(scale.dtype in SCALE_DTYPES, f"the scale must be float32, float16 or bfloat16, got {scale}")
    _check_zero_point(zp, scale, (x.dtype,))
    out = attrs.output_dtype or scale.dtype
    require(out in SCALE_DTYPES, f"output type {out.value} is not float32, float16 or bfloat16")
    granularity(x, scale, attrs)
    return [TensorType(out, x.shape)]


# ---- the integer ops of dynamic quantization (ONNX Runtime's quantize_dynamic) ----------------
@register_op(OpType.DYNAMIC_QUANTIZE_LINEAR)
def infer_dynamic_quantize(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """x (float32) -> y (uint8, x's shape), y_scale (float32 scalar), y_zero_point (uint8 scalar)."""
    x = need_input(in_types, 0, "x")
    require(x.dtype is DType.FLOAT32, f"DynamicQuantizeLinear needs a float32 input, got {x}")
    return [TensorType(DType.UINT8, x.shape), TensorType(DType.FLOAT32, ()), TensorType(DType.UINT8, ())]


def _integer_operand(t: TensorType, zp: Optional[TensorType], what: str) -> None:
    require(t.dtype in (DType.INT8, DType.UINT8), f"{what} must be int8 or uint8, got {t}")
    if zp is not None:
        require(zp.dtype is t.dtype, f"the zero point of {what} must be {t.dtype.value}, got {zp}")
        require(zp.rank <= 1, f"the zero point of {what} must be a scalar or 1-D, got {zp}")


@register_op(OpType.MATMUL_INTEGER)
def infer_matmul_integer(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """(A - a_zero_point) @ (B - b_zero_point) in int32 (numpy matmul shapes)."""
    a, b = need_input(in_types, 0, "A"), need_input(in_types, 1, "B")
    _integer_operand(a, input_at(in_types, 2), "A")
    _integer_operand(b, input_at(in_types, 3), "B")
    return [TensorType(DType.INT32, matmul_shape(a.shape, b.shape, "MatMulInteger"))]


@register_op(OpType.CONV_INTEGER, attrs=ConvAttrs)
def infer_conv_integer(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Conv of (x - x_zero_point) and (w - w_zero_point) in int32; the zero point pads."""
    a: ConvAttrs = node.attrs
    x, w = need_input(in_types, 0, "x"), need_input(in_types, 1, "w")
    _integer_operand(x, input_at(in_types, 2), "x")
    _integer_operand(w, input_at(in_types, 3), "w")
    n = len(a.kernel_shape)
    require(x.rank == n + 2 and w.rank == n + 2, f"ConvInteger with a {n}-D kernel needs rank-{n + 2} "
                                                 f"x and w, got {x} and {w}")
    spatial = window_out_dims(x.shape[2:], a.kernel_shape, a.strides, a.dilations, a.pads, a.auto_pad)
    return [TensorType(DType.INT32, (x.shape[0], w.shape[0], *spatial))]
