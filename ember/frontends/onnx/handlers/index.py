"""GatherElements, GatherND, ScatterND, ScatterElements (and the old Scatter), OneHot, Trilu,
NonMaxSuppression, NonZero, Compress, ReverseSequence, Det, Unique, TensorScatter."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, choice, direct, reject, scalar_input, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    GatherNDAttrs,
    NMSAttrs,
    OneHotAttrs,
    ReverseSequenceAttrs,
    ScatterAttrs,
    ScatterReduction,
    TensorScatterAttrs,
    TriluAttrs,
    UniqueAttrs,
)


@onnx_op("GatherElements", since=11)
def import_gather_elements(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.GATHER_ELEMENTS, n.inputs[:2], n.outputs[:1], AxisAttrs(axis=int(n.attr("axis", 0))))


@onnx_op("GatherND", since=11)
def import_gather_nd(ctx: ImportContext, n: OnnxNode) -> None:
    """``batch_dims`` exists from opset 12 (absent: 0)."""
    ctx.emit(n, OpType.GATHER_ND, n.inputs[:2], n.outputs[:1],
             GatherNDAttrs(batch_dims=int(n.attr("batch_dims", 0))))


def _scatter(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """``reduction`` exists from opset 16 (ScatterND/ScatterElements; max/min from 18)."""
        reduction = choice(n, "reduction", ScatterReduction.NONE)
        ctx.emit(n, op, n.inputs[:3], n.outputs[:1],
                 ScatterAttrs(reduction=reduction, axis=int(n.attr("axis", 0))))

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("ScatterND", since=11)(_scatter(OpType.SCATTER_ND))
onnx_op("ScatterElements", since=11)(_scatter(OpType.SCATTER_ELEMENTS))
onnx_op("Scatter", since=9)(_scatter(OpType.SCATTER_ELEMENTS))  # deprecated at 11 for ScatterElements


@onnx_op("OneHot", since=9)
def import_one_hot(ctx: ImportContext, n: OnnxNode) -> None:
    """A constant ``depth`` becomes the attr; otherwise it stays input 1."""
    depth = ctx.const(n.input(1))
    attrs = OneHotAttrs(axis=int(n.attr("axis", -1)),
                        depth=None if depth is None else int(depth.reshape(-1)[0]))
    inputs = (n.input(0), "" if depth is not None else n.input(1), n.input(2))
    ctx.emit(n, OpType.ONE_HOT, inputs, n.outputs[:1], attrs)


@onnx_op("Trilu", since=14)
def import_trilu(ctx: ImportContext, n: OnnxNode) -> None:
    upper = bool(n.attr("upper", 1))
    if not n.input(1):
        ctx.emit(n, OpType.TRILU, n.inputs[:1], n.outputs[:1], TriluAttrs(upper=upper, k=0))
        return
    k = scalar_input(ctx, n, 1, "k")
    ctx.emit(n, OpType.TRILU, n.inputs[:1] if k is not None else n.inputs[:2], n.outputs[:1],
             TriluAttrs(upper=upper, k=k))


@onnx_op("NonMaxSuppression", since=10)
def import_nms(ctx: ImportContext, n: OnnxNode) -> None:
    cpb = int(n.attr("center_point_box", 0))
    if cpb not in (0, 1):
        raise reject(f"center_point_box={cpb} (0 or 1)")
    ctx.emit(n, OpType.NON_MAX_SUPPRESSION, strip_trailing_empty(n.inputs[:5]), n.outputs[:1],
             NMSAttrs(center_point_box=bool(cpb)))


onnx_op("NonZero", since=9)(direct(OpType.NON_ZERO, nin=1))
onnx_op("Det", since=11)(direct(OpType.DET, nin=1))


@onnx_op("Compress", since=9)
def import_compress(ctx: ImportContext, n: OnnxNode) -> None:
    axis = n.attr("axis")
    ctx.emit(n, OpType.COMPRESS, n.inputs[:2], n.outputs[:1],
             AxesAttrs(axes=None if axis is None else (int(axis),)))


@onnx_op("ReverseSequence", since=10)
def import_reverse_sequence(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.REVERSE_SEQUENCE, n.inputs[:2], n.outputs[:1],
             ReverseSequenceAttrs(batch_axis=int(n.attr("batch_axis", 1)), time_axis=int(n.attr("time_axis", 0))))


@onnx_op("Unique", since=11)
def import_unique(ctx: ImportContext, n: OnnxNode) -> None:
    axis = n.attr("axis")
    ctx.emit(n, OpType.UNIQUE, n.inputs[:1], n.outputs[:4],
             UniqueAttrs(axis=None if axis is None else int(axis), sorted=bool(int(n.attr("sorted", 1)))))


@onnx_op("TensorScatter", since=24)
def import_tensor_scatter(ctx: ImportContext, n: OnnxNode) -> None:
    mode = str(n.attr("mode", "linear"))
    if mode not in ("linear", "circular"):
        raise reject(f"mode={mode!r} (ONNX allows 'linear' and 'circular')")
    ctx.emit(n, OpType.TENSOR_SCATTER, strip_trailing_empty(n.inputs[:3]), n.outputs[:1],
             TensorScatterAttrs(axis=int(n.attr("axis", -2)), circular=mode == "circular"))
