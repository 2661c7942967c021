"""Reductions (axes as an attribute in old opsets, an input in new ones), ArgMax/ArgMin,
CumSum and TopK."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, ints, reject, scalar_input
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import ArgReduceAttrs, CumSumAttrs, ReduceAttrs, TopKAttrs


def reduce_attr_form(op: OpType) -> HandlerFn:
    """The import handler for a reduction whose axes are an attribute (opsets before the
    axes-input form); ``op`` is the Ember op it emits."""
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Axes attribute; absent means every axis."""
        attrs = ReduceAttrs(axes=ints(n, "axes"), keepdims=bool(n.attr("keepdims", 1)))
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}_attr_axes"
    return handler


def reduce_input_form(op: OpType) -> HandlerFn:
    """The import handler for a reduction whose axes are an optional input (ReduceSum from
    opset 13, the others from 18); ``op`` is the Ember op it emits."""
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Axes input (optional); a constant one becomes the attr, a run-time one stays input 1."""
        keepdims = bool(n.attr("keepdims", 1))
        noop = bool(n.attr("noop_with_empty_axes", 0))
        axes_name = n.input(1)
        if not axes_name or ctx.const(axes_name) is not None:
            attrs = ReduceAttrs(axes=ctx.const_ints(axes_name) if axes_name else None,
                                keepdims=keepdims, noop_with_empty_axes=noop)
            if attrs.axes == () and not noop:
                attrs = ReduceAttrs(axes=None, keepdims=keepdims)
            ctx.emit(n, op, n.inputs[:1], n.outputs[:1], attrs)
        else:
            ctx.emit(n, op, n.inputs[:2], n.outputs[:1],
                     ReduceAttrs(axes=None, keepdims=keepdims, noop_with_empty_axes=noop))

    handler.__name__ = f"import_{op.name.lower()}_input_axes"
    return handler


for _name, _op, _input_since in (
    ("ReduceMean", OpType.REDUCE_MEAN, 18), ("ReduceSum", OpType.REDUCE_SUM, 13),
    ("ReduceMax", OpType.REDUCE_MAX, 18), ("ReduceMin", OpType.REDUCE_MIN, 18),
    ("ReduceProd", OpType.REDUCE_PROD, 18), ("ReduceL1", OpType.REDUCE_L1, 18),
    ("ReduceL2", OpType.REDUCE_L2, 18), ("ReduceSumSquare", OpType.REDUCE_SUM_SQUARE, 18),
    ("ReduceLogSum", OpType.REDUCE_LOG_SUM, 18), ("ReduceLogSumExp", OpType.REDUCE_LOG_SUM_EXP, 18),
):
    onnx_op(_name, since=1)(reduce_attr_form(_op))
    onnx_op(_name, since=_input_since)(reduce_input_form(_op))


def _arg_reduce(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """ArgMax/ArgMin; ``select_last_index`` exists from opset 12 (absent: first index)."""
        attrs = ArgReduceAttrs(axis=int(n.attr("axis", 0)), keepdims=bool(n.attr("keepdims", 1)),
                               select_last_index=bool(n.attr("select_last_index", 0)))
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("ArgMax", since=1)(_arg_reduce(OpType.ARG_MAX))
onnx_op("ArgMin", since=1)(_arg_reduce(OpType.ARG_MIN))


def _cumulative(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """CumSum (11) / CumProd (26): a constant axis becomes the attr, else it stays input 1."""
        axis = scalar_input(ctx, n, 1, "axis")
        attrs = CumSumAttrs(axis=axis, exclusive=bool(n.attr("exclusive", 0)), reverse=bool(n.attr("reverse", 0)))
        ctx.emit(n, op, n.inputs[:1] if axis is not None else n.inputs[:2], n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("CumSum", since=11)(_cumulative(OpType.CUM_SUM))
onnx_op("CumProd", since=26)(_cumulative(OpType.CUM_PROD))


@onnx_op("TopK", since=1)
def import_topk_1(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 1-9: ``k`` is an attribute; always the largest, sorted."""
    k = n.attr("k")
    if k is None:
        raise reject("k is missing (it is required before opset 10)")
    ctx.emit(n, OpType.TOP_K, n.inputs[:1], n.outputs[:2], TopKAttrs(k=int(k), axis=int(n.attr("axis", -1))))


def _topk_input_form(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 10+: K is input 1 (constant: an attr); opset 11 adds ``largest`` and ``sorted``."""
    k = scalar_input(ctx, n, 1, "K")
    attrs = TopKAttrs(k=k, axis=int(n.attr("axis", -1)), largest=bool(n.attr("largest", 1)),
                      sorted=bool(n.attr("sorted", 1)))
    ctx.emit(n, OpType.TOP_K, n.inputs[:1] if k is not None else n.inputs[:2], n.outputs[:2], attrs)


onnx_op("TopK", since=10)(_topk_input_form)
onnx_op("TopK", since=11)(_topk_input_form)
