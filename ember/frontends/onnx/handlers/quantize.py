"""QuantizeLinear and DequantizeLinear across opsets: 10 (per-tensor), 13 (``axis``: per-axis),
19 (``saturate``, float8 and 16-bit float scales), 21 (``block_size``, ``output_dtype``, 16-bit
types), 23 (Q ``precision``, DQ ``output_dtype``) and 24 (float8e8m0 scales).

Ember runs int8, uint8, int16, uint16 and the four float8 types' quantization (and int32
dequantization) exactly; int2/int4, uint2/uint4, float4 and float8e8m0 types are refused here, with
the node, the type and what to do (the importer refuses such constants before any handler runs:
``check_quantized_types``). Float8 Q/DQ pairs (NVIDIA ModelOpt's FP8 models) run as written: the
conversion to and from float8 with its rounding, in the Q/DQ kernels; INT8 layers are made of the
8-bit integer pairs only.
DynamicQuantizeLinear, MatMulInteger and ConvInteger (what ``quantize_dynamic`` writes) map 1:1;
QLinearMatMul and QLinearConv (``quantize_static``'s QOperator format) become the integer op and
ONNX Runtime's requantization written with Ember's ops.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.context import ONNX_DTYPES, ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, ints, reject, strip_trailing_empty
from ember.frontends.onnx.handlers.conv import resolved_padding, window
from ember.frontends.onnx.registry import onnx_op
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import CastAttrs, ConvAttrs, QuantizeAttrs, ReshapeAttrs
from ember.ops.quantize import DEQUANTIZABLE_DTYPES, QUANTIZED_DTYPES, SCALE_DTYPES

#: What to do about a quantized type Ember cannot run.
REEXPORT_HINT = ("re-export the model with int8/uint8 quantization (onnxruntime.quantization."
                 "quantize_static(..., activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)), "
                 "or build the unquantized float model")


def type_name(code: int) -> str:
    known = code in onnx.TensorProto.DataType.values()
    return onnx.TensorProto.DataType.Name(code) if known else f"element type {code}"


def _dtype(code: int, allowed: tuple[DType, ...], what: str) -> DType:
    dtype = ONNX_DTYPES.get(code)
    if dtype is None or dtype not in allowed:
        raise reject(f"its {what} is {type_name(code)}, which Ember's kernels do not run "
                     f"(supported: {', '.join(d.value for d in allowed)}); {REEXPORT_HINT}")
    return dtype


def _attrs(n: OnnxNode, quantize: bool) -> QuantizeAttrs:
    code = n.attr("output_dtype")
    out = None
    if code is not None and int(code) != 0:  # 0 (UNDEFINED): not given
        allowed = QUANTIZED_DTYPES if quantize else SCALE_DTYPES
        out = _dtype(int(code), allowed, "output_dtype")
    block = int(n.attr("block_size", 0))
    if block < 0:
        raise reject(f"block_size={block} is negative")
    return QuantizeAttrs(axis=int(n.attr("axis", 1)), block_size=block,
                         saturate=bool(n.attr("saturate", 1)), output_dtype=out)


def _check_types(ctx: ImportContext, n: OnnxNode, quantize: bool) -> None:
    x, scale = ctx.type(n.input(0)), ctx.type(n.input(1))
    if quantize and x.dtype not in SCALE_DTYPES:
        raise reject(f"its input {n.input(0)!r} is {x.dtype.value}; Ember quantizes float32, float16 "
                     f"and bfloat16 tensors (ONNX Runtime has no int32 QuantizeLinear either)")
    if not quantize and x.dtype not in DEQUANTIZABLE_DTYPES:
        raise reject(f"its input {n.input(0)!r} is {x.dtype.value}, not one of "
                     f"{', '.join(d.value for d in DEQUANTIZABLE_DTYPES)}; {REEXPORT_HINT}")
    if n.input(2) and quantize and ctx.type(n.input(2)).dtype not in QUANTIZED_DTYPES:
        raise reject(f"its zero point {n.input(2)!r} is {ctx.type(n.input(2)).dtype.value}; "
                     f"{REEXPORT_HINT}")
    if n.opset >= 23 and quantize:
        precision = n.attr("precision")
        # From opset 23 the division runs in the scale's type (or ``precision``): Ember divides
        # in float32, which is exact to the spec only when that type is float32.
        code = int(precision) if precision else None
        kind = ONNX_DTYPES.get(code) if code is not None else scale.dtype
        if kind is not DType.FLOAT32:
            shown = type_name(code) if code is not None else scale.dtype.value
            raise reject(f"it divides in {shown} (opset {n.opset}: the scale's type or the precision "
                         f"attribute); Ember divides in float32 only. Store the scale as float32")


def _handler(op: OpType) -> HandlerFn:
    quantize = op is OpType.QUANTIZE_LINEAR

    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        if n.opset < 13 and (n.attr("axis") is not None or n.attr("block_size") is not None):
            raise reject(f"opset {n.opset} has no axis: per-tensor scales only")
        attrs = _attrs(n, quantize)
        _check_types(ctx, n, quantize)
        inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
        ctx.emit(n, op, inputs, n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


for _name, _op in (("QuantizeLinear", OpType.QUANTIZE_LINEAR), ("DequantizeLinear", OpType.DEQUANTIZE_LINEAR)):
    for _since in (10, 13, 19, 21, 23, 24):
        onnx_op(_name, since=_since)(_handler(_op))


#: ONNX ops whose inputs carry quantized types (checked before the constants are decoded).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv",
                           "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"})


def check_quantized_types(graph: onnx.GraphProto, label: str) -> None:
    """Refuses a quantization node that reads or writes a type Ember cannot hold (int4, uint4, float8,
    float4, ...), naming the node, the type and what to do.

    It runs before the importer decodes the constants: a packed int4 or float8 initializer
    would otherwise be refused as a bare constant, without the node that explains it.
    """
    types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type"):
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = a.t.data_type
    for i, node in enumerate(graph.node):
        if node.op_type not in QUANTIZED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}_{i}"
        found = [(f"input {t!r}", types[t]) for t in node.input
                 if t and types.get(t, 0) and types[t] not in ONNX_DTYPES]
        found += [("output_dtype", a.i) for a in node.attribute
                  if a.name == "output_dtype" and a.i and a.i not in ONNX_DTYPES]
        if found:
            what, code = found[0]
            raise UnsupportedOpError(
                f"{label}: node {name!r} ({node.op_type}) uses {type_name(code)} quantization (its {what}); "
                f"Ember's kernels run int8, uint8, int16, uint16 and float8 (e4m3fn, e4m3fnuz, e5m2, "
                f"e5m2fnuz) quantization only, so it cannot run this model as written. To use it, "
                f"{REEXPORT_HINT}")


# ---- dynamic quantization's integer ops -------------------------------------------------------
@onnx_op("DynamicQuantizeLinear", since=11)
def import_dynamic_quantize_linear(ctx: ImportContext, n: OnnxNode) -> None:
    """Three outputs: y (uint8), y_scale, y_zero_point."""
    outs = tuple(o or ctx.temp(n, f"unused{i}") for i, o in enumerate(n.outputs[:3]))
    ctx.emit(n, OpType.DYNAMIC_QUANTIZE_LINEAR, n.inputs[:1], outs)


@onnx_op("MatMulInteger", since=10)
def import_matmul_integer(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.MATMUL_INTEGER, strip_trailing_empty(n.inputs[:4]), n.outputs[:1])


@onnx_op("ConvInteger", since=10)
def import_conv_integer(ctx: ImportContext, n: OnnxNode) -> None:
    x, w = ctx.type(n.input(0)), ctx.type(n.input(1))
    kernel = ints(n, "kernel_shape") or tuple(int(d) for d in w.shape[2:])
    strides, dilations, pads = window(n, kernel)
    pads, ap = resolved_padding(n, x, kernel, strides, dilations, pads)
    attrs = ConvAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      group=int(n.attr("group", 1)), auto_pad=ap)
    ctx.emit(n, OpType.CONV_INTEGER, strip_trailing_empty(n.inputs[:4]), n.outputs[:1], attrs)


# ---- QLinearMatMul / QLinearConv (quantize_static's QOperator format) ----------------------------
def _requantize(ctx: ImportContext, n: OnnxNode, acc: str, scales: tuple[str, str, str], zp: str,
                channel_shape: Optional[tuple[int, ...]]) -> None:
    """``y = saturate(round(float(acc) * (s_in * s_w / s_out)) + zp)``: ONNX Runtime's
    requantization (the multiplier in float32, in that order; the accumulator widened to float32),
    written with Ember's ops. ``channel_shape``: how a per-channel multiplier broadcasts."""
    s_in, s_w, s_out = scales
    prod, mult, accf, real = (ctx.temp(n, w) for w in ("scale_prod", "multiplier", "acc_float", "real"))
    ctx.emit(n, OpType.MUL, (s_in, s_w), (prod,), suffix="scale_prod")
    ctx.emit(n, OpType.DIV, (prod, s_out), (mult,), suffix="multiplier")
    if channel_shape is not None and ctx.type(mult).rank == 1:
        shaped = ctx.temp(n, "multiplier_shaped")
        shape = ctx.add_constant(ctx.temp(n, "multiplier_shape"), np.array(channel_shape, np.int64))
        ctx.emit(n, OpType.RESHAPE, (mult, shape), (shaped,), ReshapeAttrs(), suffix="multiplier_shaped")
        mult = shaped
    ctx.emit(n, OpType.CAST, (acc,), (accf,), CastAttrs(to=DType.FLOAT32), suffix="acc_float")
    ctx.emit(n, OpType.MUL, (accf, mult), (real,), suffix="rescale")
    one = ctx.add_scalar(f"{n.name}/unit_scale", 1.0, DType.FLOAT32)
    ctx.emit(n, OpType.QUANTIZE_LINEAR, (real, one) + ((zp,) if zp else ()), n.outputs[:1],
             QuantizeAttrs(), suffix="requantize")


def _float32_scales(ctx: ImportContext, n: OnnxNode, scale_inputs: tuple[int, ...]) -> list[str]:
    """The scales as float32 tensors: float16 and bfloat16 ones (opset 21) are cast (exactly),
    as ONNX Runtime requantizes with float32 scales."""
    names = []
    for i in scale_inputs:
        name, t = n.input(i), ctx.type(n.input(i))
        if t.dtype in (DType.FLOAT16, DType.BFLOAT16):
            cast = ctx.temp(n, f"scale{i}_float")
            ctx.emit(n, OpType.CAST, (name,), (cast,), CastAttrs(to=DType.FLOAT32), suffix=f"scale{i}_float")
            name = cast
        elif t.dtype is not DType.FLOAT32:
            raise reject(f"its scale {name!r} is {t.dtype.value}; Ember requantizes with float32 "
                         f"scales (float16 and bfloat16 ones are cast), as ONNX Runtime does")
        names.append(name)
    return names


@onnx_op("QLinearMatMul", since=10)
def import_qlinear_matmul(ctx: ImportContext, n: OnnxNode) -> None:
    """MatMulInteger, then the requantization to (y_scale, y_zero_point)."""
    a, _, a_z, b, _, b_z, _, y_z = (n.input(i) for i in range(8))
    a_s, b_s, y_s = _float32_scales(ctx, n, (1, 4, 6))
    acc = ctx.temp(n, "acc")
    ctx.emit(n, OpType.MATMUL_INTEGER, strip_trailing_empty((a, b, a_z, b_z)), (acc,), suffix="matmul")
    _requantize(ctx, n, acc, (a_s, b_s, y_s), y_z, None)


@onnx_op("QLinearConv", since=10)
def import_qlinear_conv(ctx: ImportContext, n: OnnxNode) -> None:
    """ConvInteger (+ the int32 bias), then the requantization to (y_scale, y_zero_point)."""
    x, _, x_z, w, _, w_z, _, y_z, bias = (n.input(i) for i in range(9))
    x_s, w_s, y_s = _float32_scales(ctx, n, (1, 4, 6))
    xt, wt = ctx.type(x), ctx.type(w)
    kernel = ints(n, "kernel_shape") or tuple(int(d) for d in wt.shape[2:])
    strides, dilations, pads = window(n, kernel)
    pads, ap = resolved_padding(n, xt, kernel, strides, dilations, pads)
    attrs = ConvAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      group=int(n.attr("group", 1)), auto_pad=ap)
    acc = ctx.temp(n, "acc")
    ctx.emit(n, OpType.CONV_INTEGER, strip_trailing_empty((x, w, x_z, w_z)), (acc,), attrs, suffix="conv")
    channel_shape = (-1,) + (1,) * len(kernel)
    if bias:
        shaped, shape, biased = ctx.temp(n, "bias_shaped"), ctx.temp(n, "bias_shape"), ctx.temp(n, "acc_bias")
        ctx.add_constant(shape, np.array(channel_shape, np.int64))
        ctx.emit(n, OpType.RESHAPE, (bias, shape), (shaped,), ReshapeAttrs(), suffix="bias_shaped")
        ctx.emit(n, OpType.ADD, (acc, shaped), (biased,), suffix="bias")
        acc = biased
    _requantize(ctx, n, acc, (x_s, w_s, y_s), y_z, channel_shape)
