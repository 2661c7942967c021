"""MaxPool, AveragePool, GlobalAveragePool."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import direct, ints, reject
from ember.frontends.onnx.handlers.conv import resolved_padding, window
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import PoolAttrs


def _pool_attrs(ctx: ImportContext, n: OnnxNode, count_include_pad: bool) -> PoolAttrs:
    kernel = ints(n, "kernel_shape")
    if kernel is None:
        raise reject("kernel_shape is missing (it is required)")
    x = ctx.type(n.input(0))
    strides, dilations, pads = window(n, kernel)
    pads, ap = resolved_padding(n, x, kernel, strides, dilations, pads)
    return PoolAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                     ceil_mode=bool(n.attr("ceil_mode", 0)), count_include_pad=count_include_pad,
                     auto_pad=ap)


@onnx_op("MaxPool", since=1)
def import_max_pool(ctx: ImportContext, n: OnnxNode) -> None:
    """MaxPool; its Indices output (opset 8+) is rejected when used."""
    if ctx.is_used(n.output(1)):
        raise reject(f"its Indices output {n.output(1)!r} is used; Ember's MaxPool returns values "
                     f"only. Export without return_indices")
    ctx.emit(n, OpType.MAX_POOL, n.inputs[:1], n.outputs[:1], _pool_attrs(ctx, n, False))


@onnx_op("AveragePool", since=1)
def import_average_pool(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.AVERAGE_POOL, n.inputs[:1], n.outputs[:1],
             _pool_attrs(ctx, n, bool(n.attr("count_include_pad", 0))))


onnx_op("GlobalAveragePool", since=1)(direct(OpType.GLOBAL_AVERAGE_POOL, nin=1))
