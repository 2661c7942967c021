"""``Constant``, ``Identity``, ``Dropout`` and ``Cast``: value sources and pass-throughs."""
from __future__ import annotations

import numpy as np

from ember.frontends.onnx.context import ImportContext, OnnxNode, onnx_dtype
from ember.frontends.onnx.handlers.common import direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import CastAttrs, ConstantOfShapeAttrs, ShapeAttrs


def constant_value(n: OnnxNode) -> np.ndarray:
    """The value of a Constant node in any of its forms (value, value_float(s), value_int(s))."""
    a = n.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], dtype=np.float32).reshape(-1)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], dtype=np.int64).reshape(-1)
    if "value_string" in a or "value_strings" in a:
        raise reject("string constants are not supported (Ember has no string tensors)")
    if "sparse_value" in a:
        raise reject("sparse constants are not supported; densify the tensor in the model")
    raise reject(f"it has none of the value attributes (got {sorted(a)})")


@onnx_op("Constant", since=1)
def import_constant(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.add_constant(n.outputs[0], constant_value(n))


onnx_op("Identity", since=1)(direct(OpType.IDENTITY))


@onnx_op("Dropout", since=7)
def import_dropout_7(ctx: ImportContext, n: OnnxNode) -> None:
    """Dropout is an identity at inference; a used mask output becomes all-True."""
    _dropout(ctx, n)


@onnx_op("Dropout", since=12)
def import_dropout_12(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 12 moved ratio and training_mode to inputs; training mode cannot be imported."""
    mode = n.input(2)
    if mode:
        value = ctx.const(mode)
        if value is None:
            raise reject(f"its training_mode input {mode!r} is not a constant; Ember runs "
                         f"inference only. Make it a constant False")
        if bool(np.asarray(value).reshape(-1)[0]):
            raise reject("training_mode is True; Ember runs inference only")
    _dropout(ctx, n)


def _dropout(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.DROPOUT, n.inputs[:1], n.outputs[:1])
    mask = n.output(1)
    if not ctx.is_used(mask):
        return
    x = ctx.type(n.input(0))
    if x.is_static:
        ctx.add_constant(mask, np.ones(tuple(int(d) for d in x.shape), dtype=bool))
    else:
        shape = ctx.temp(n, "shape")
        ctx.emit(n, OpType.SHAPE, n.inputs[:1], (shape,), ShapeAttrs(), suffix="mask_shape")
        ctx.emit(n, OpType.CONSTANT_OF_SHAPE, (shape,), (mask,),
                 ConstantOfShapeAttrs(value=True, dtype=DType.BOOL), suffix="mask")


@onnx_op("Cast", since=6)
def import_cast(ctx: ImportContext, n: OnnxNode) -> None:
    code = n.attr("to")
    if code is None:
        raise reject("to is missing (it is required)")
    to = onnx_dtype(int(code), f"Cast {n.name!r} target type")
    ctx.emit(n, OpType.CAST, n.inputs[:1], n.outputs[:1], CastAttrs(to=to, saturate=bool(n.attr("saturate", 1))))



@onnx_op("BitCast", since=26)
def import_bit_cast(ctx: ImportContext, n: OnnxNode) -> None:
    code = n.attr("to")
    if code is None:
        raise reject("to is missing (it is required)")
    to = onnx_dtype(int(code), f"BitCast {n.name!r} target type")
    ctx.emit(n, OpType.BIT_CAST, n.inputs[:1], n.outputs[:1], CastAttrs(to=to))
