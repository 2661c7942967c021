"""MaxPool (with Indices), MaxUnpool, AveragePool, LpPool, GlobalAveragePool."""
from __future__ import annotations

from dataclasses import replace

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import direct, ints, reject, strip_trailing_empty
from ember.frontends.onnx.handlers.conv import resolved_padding, window
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import LpPoolAttrs, MaxUnpoolAttrs, PoolAttrs


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
    """MaxPool; its Indices output (opset 8+, flat positions in the input, row-major or with
    storage_order 1 column-major) when it is used."""
    attrs = _pool_attrs(ctx, n, False)
    if ctx.is_used(n.output(1)):
        order = int(n.attr("storage_order", 0))
        if order not in (0, 1):
            raise reject(f"storage_order={order} (0 or 1)")
        ctx.emit(n, OpType.MAX_POOL, n.inputs[:1], n.outputs[:2], replace(attrs, storage_order=order))
        return
    ctx.emit(n, OpType.MAX_POOL, n.inputs[:1], n.outputs[:1], attrs)


@onnx_op("MaxUnpool", since=9)
def import_max_unpool(ctx: ImportContext, n: OnnxNode) -> None:
    kernel = ints(n, "kernel_shape")
    if kernel is None:
        raise reject("kernel_shape is missing (it is required)")
    ctx.emit(n, OpType.MAX_UNPOOL, strip_trailing_empty(n.inputs[:3]), n.outputs[:1],
             MaxUnpoolAttrs(kernel_shape=kernel, strides=ints(n, "strides") or (), pads=ints(n, "pads") or ()))


@onnx_op("AveragePool", since=1)
def import_average_pool(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.AVERAGE_POOL, n.inputs[:1], n.outputs[:1],
             _pool_attrs(ctx, n, bool(n.attr("count_include_pad", 0))))


@onnx_op("LpPool", since=1)
def import_lp_pool(ctx: ImportContext, n: OnnxNode) -> None:
    """LpPool 1-18 (p a float in opset 1, an int since 2; ceil_mode and dilations since 18)."""
    p = float(n.attr("p", 2))
    if p <= 0:
        raise reject(f"p={p:g}: the norm's order must be positive")
    ctx.emit(n, OpType.LP_POOL, n.inputs[:1], n.outputs[:1], LpPoolAttrs(_pool_attrs(ctx, n, True), p))


onnx_op("GlobalAveragePool", since=1)(direct(OpType.GLOBAL_AVERAGE_POOL, nin=1))
