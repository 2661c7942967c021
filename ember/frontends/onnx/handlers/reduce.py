"""ReduceMean, ReduceSum, ReduceMax: axes as an attribute (old opsets) or an input (new)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import ints
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import ReduceAttrs


def reduce_attr_form(op: OpType):
    """The import handler for a reduction whose axes are an attribute (opsets before the
    axes-input form); ``op`` is the Ember op it emits."""
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Axes attribute; absent means every axis."""
        attrs = ReduceAttrs(axes=ints(n, "axes"), keepdims=bool(n.attr("keepdims", 1)))
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}_attr_axes"
    return handler


def reduce_input_form(op: OpType):
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


for _name, _op, _input_since in (("ReduceMean", OpType.REDUCE_MEAN, 18),
                                 ("ReduceSum", OpType.REDUCE_SUM, 13),
                                 ("ReduceMax", OpType.REDUCE_MAX, 18)):
    onnx_op(_name, since=1)(reduce_attr_form(_op))
    onnx_op(_name, since=_input_since)(reduce_input_form(_op))
