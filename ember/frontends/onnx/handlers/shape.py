"""Data movement and shape ops, with every attribute-vs-input form across opsets; the tensor
generators (ConstantOfShape, EyeLike, Range) and Pad."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.frontends.onnx.context import ImportContext, OnnxNode, onnx_dtype
from ember.frontends.onnx.handlers.common import HandlerFn, choice, direct, ints, reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    ConstantOfShapeAttrs,
    EyeLikeAttrs,
    PadAttrs,
    PadMode,
    ReshapeAttrs,
    ShapeAttrs,
    SliceAttrs,
    SplitAttrs,
    TransposeAttrs,
)


@onnx_op("Concat", since=4)
def import_concat(ctx: ImportContext, n: OnnxNode) -> None:
    if n.attr("axis") is None:
        raise reject("axis is missing (it is required)")
    ctx.emit(n, OpType.CONCAT, [i for i in n.inputs if i], n.outputs[:1], AxisAttrs(axis=int(n.attr("axis"))))


@onnx_op("Gather", since=1)
def import_gather(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.GATHER, n.inputs[:2], n.outputs[:1], AxisAttrs(axis=int(n.attr("axis", 0))))


@onnx_op("Flatten", since=1)
def import_flatten(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.FLATTEN, n.inputs[:1], n.outputs[:1], AxisAttrs(axis=int(n.attr("axis", 1))))


@onnx_op("Transpose", since=1)
def import_transpose(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.TRANSPOSE, n.inputs[:1], n.outputs[:1], TransposeAttrs(perm=ints(n, "perm")))


@onnx_op("Reshape", since=5)
def import_reshape(ctx: ImportContext, n: OnnxNode) -> None:
    """The shape stays input 1 (a constant when known); ``allowzero`` from opset 14."""
    ctx.emit(n, OpType.RESHAPE, n.inputs[:2], n.outputs[:1],
             ReshapeAttrs(allowzero=bool(n.attr("allowzero", 0))))


onnx_op("Expand", since=8)(direct(OpType.EXPAND, nin=2))
onnx_op("Range", since=11)(direct(OpType.RANGE, nin=3))


@onnx_op("Range", since=27)
def import_range_27(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 27 adds ``stash_type`` (16-bit floats accumulate in float32 by default, as Ember's
    kernel always does)."""
    stash = n.attr("stash_type")
    if stash is not None and int(stash) != 1 and ctx.type(n.input(0)).dtype in (DType.FLOAT16, DType.BFLOAT16):
        raise reject(f"stash_type={stash} (accumulate in the 16-bit type) is not supported; Ember "
                     f"accumulates in float32 (stash_type=1)")
    ctx.emit(n, OpType.RANGE, n.inputs[:3], n.outputs[:1])


@onnx_op("Shape", since=1)
def import_shape(ctx: ImportContext, n: OnnxNode) -> None:
    """``start``/``end`` exist from opset 15; earlier they are absent (whole shape)."""
    end = n.attr("end")
    ctx.emit(n, OpType.SHAPE, n.inputs[:1], n.outputs[:1],
             ShapeAttrs(start=int(n.attr("start", 0)), end=None if end is None else int(end)))


@onnx_op("ConstantOfShape", since=9)
def import_constant_of_shape(ctx: ImportContext, n: OnnxNode) -> None:
    value = n.attr("value")
    if value is None:
        fill, dtype = 0.0, DType.FLOAT32
    else:
        arr = np.asarray(value).reshape(-1)
        if arr.size != 1:
            raise reject(f"its value has {arr.size} elements; it must have exactly one")
        fill, dtype = arr[0].item(), DType.from_numpy(arr.dtype)
    ctx.emit(n, OpType.CONSTANT_OF_SHAPE, n.inputs[:1], n.outputs[:1],
             ConstantOfShapeAttrs(value=fill, dtype=dtype))


@onnx_op("EyeLike", since=9)
def import_eye_like(ctx: ImportContext, n: OnnxNode) -> None:
    code = n.attr("dtype")
    dtype = None if code is None else onnx_dtype(int(code), f"{n.label} dtype")
    ctx.emit(n, OpType.EYE_LIKE, n.inputs[:1], n.outputs[:1],
             EyeLikeAttrs(dtype=dtype, k=int(n.attr("k", 0))))


# ---- Squeeze / Unsqueeze: axes attribute (< 13) or input (>= 13) ------------------------------
def _axes_op(op: OpType, from_input: bool) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        if not from_input:
            axes = ints(n, "axes")
        elif not n.input(1):
            axes = None
        elif ctx.const(n.input(1)) is not None:
            axes = ctx.const_ints(n.input(1))
        else:
            ctx.emit(n, op, n.inputs[:2], n.outputs[:1], AxesAttrs(axes=None))
            return
        if axes is None and op is OpType.SQUEEZE:
            axes = _static_unit_axes(ctx, n)  # None (squeeze every size-1 dim) when symbolic
        elif axes is None:
            raise reject("it has no axes (Unsqueeze requires them)")
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], AxesAttrs(axes=axes))

    handler.__name__ = f"import_{op.name.lower()}{'_input' if from_input else '_attr'}"
    return handler


def _static_unit_axes(ctx: ImportContext, n: OnnxNode) -> Optional[tuple[int, ...]]:
    """Squeeze without axes removes every size-1 dim: fixed now when no dim is symbolic."""
    shape = ctx.type(n.input(0)).shape
    if not all(isinstance(d, int) for d in shape):
        return None
    return tuple(i for i, d in enumerate(shape) if d == 1)


for _name, _op in (("Squeeze", OpType.SQUEEZE), ("Unsqueeze", OpType.UNSQUEEZE)):
    onnx_op(_name, since=1)(_axes_op(_op, from_input=False))
    onnx_op(_name, since=13)(_axes_op(_op, from_input=True))


# ---- Split: `split` attribute (< 13), input (>= 13), num_outputs (>= 18) ----------------------
def _emit_split(ctx: ImportContext, n: OnnxNode, split: Optional[tuple[int, ...]]) -> None:
    axis = int(n.attr("axis", 0))
    if split is None:
        count = n.attr("num_outputs")
        attrs = SplitAttrs(axis=axis, split=None,
                           num_outputs=len(n.outputs) if count is None else int(count))
        if attrs.num_outputs != len(n.outputs):
            raise reject(f"num_outputs={attrs.num_outputs} but the node has {len(n.outputs)} outputs")
    else:
        attrs = SplitAttrs(axis=axis, split=tuple(int(s) for s in split))
    ctx.emit(n, OpType.SPLIT, n.inputs[:1], n.outputs, attrs)


@onnx_op("Split", since=2)
def import_split_2(ctx: ImportContext, n: OnnxNode) -> None:
    _emit_split(ctx, n, ints(n, "split"))


@onnx_op("Split", since=13)
def import_split_13(ctx: ImportContext, n: OnnxNode) -> None:
    name = n.input(1)
    if name and ctx.const(name) is None:
        ctx.emit(n, OpType.SPLIT, n.inputs[:2], n.outputs, SplitAttrs(axis=int(n.attr("axis", 0))))
        return
    _emit_split(ctx, n, ctx.const_ints(name) if name else None)


# ---- Slice: attributes (< 10) or inputs (>= 10) ----------------------------------------------
@onnx_op("Slice", since=1)
def import_slice_1(ctx: ImportContext, n: OnnxNode) -> None:
    _emit_slice(ctx, n, ints(n, "starts"), ints(n, "ends"), ints(n, "axes"), None)


@onnx_op("Slice", since=10)
def import_slice_10(ctx: ImportContext, n: OnnxNode) -> None:
    params = n.inputs[1:5]
    if ctx.all_const(params):
        vals = [ctx.const_ints(p) if p else None for p in params] + [None] * (4 - len(params))
        _emit_slice(ctx, n, vals[0], vals[1], vals[2], vals[3])
    else:
        ctx.emit(n, OpType.SLICE, strip_trailing_empty(n.inputs[:5]), n.outputs[:1], SliceAttrs())


Ints = tuple[int, ...]


def _emit_slice(ctx: ImportContext, n: OnnxNode, starts: Optional[Ints], ends: Optional[Ints],
                axes: Optional[Ints], steps: Optional[Ints]) -> None:
    if starts is None or ends is None:
        raise reject("starts and ends are required")
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise reject(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} differ in length")
    ctx.emit(n, OpType.SLICE, n.inputs[:1], n.outputs[:1],
             SliceAttrs(starts=starts, ends=ends, axes=axes, steps=steps))


# ---- Pad: attributes (< 11), inputs (>= 11), axes input (>= 18) ------------------------------
#: Pad modes the frontend accepts (every one: opset 19 added ``wrap``).
_PAD_MODES = (PadMode.CONSTANT, PadMode.REFLECT, PadMode.EDGE, PadMode.WRAP)


def _pad_mode(n: OnnxNode) -> PadMode:
    return choice(n, "mode", PadMode.CONSTANT, supported=_PAD_MODES)


@onnx_op("Pad", since=2)
def import_pad_2(ctx: ImportContext, n: OnnxNode) -> None:
    pads = ints(n, "pads")
    if pads is None:
        raise reject("pads is missing (it is required)")
    ctx.emit(n, OpType.PAD, n.inputs[:1], n.outputs[:1],
             PadAttrs(mode=_pad_mode(n), pads=pads, value=float(n.attr("value", 0.0))))


@onnx_op("Pad", since=11)
def import_pad_11(ctx: ImportContext, n: OnnxNode) -> None:
    mode = _pad_mode(n)
    params = n.inputs[1:4]
    if not ctx.all_const(params):
        ctx.emit(n, OpType.PAD, strip_trailing_empty(n.inputs[:4]), n.outputs[:1], PadAttrs(mode=mode))
        return
    value = ctx.const(n.input(2))
    fill = float(np.asarray(value).reshape(-1)[0]) if value is not None and value.size else 0.0
    ctx.emit(n, OpType.PAD, n.inputs[:1], n.outputs[:1],
             PadAttrs(mode=mode, pads=ctx.const_ints(n.input(1)), value=fill,
                      axes=ctx.const_ints(n.input(3)) if n.input(3) else None))
