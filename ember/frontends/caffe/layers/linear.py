"""InnerProduct: the bottom flattened from ``axis`` on, times the weights (``transpose``: stored
K x N instead of N x K), plus the bias."""
from __future__ import annotations

import math

from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.layers.common import axis_of, static_dims
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.optype import OpType
from ember.ops.attrs import AxisAttrs, GemmAttrs, ReshapeAttrs


@caffe_layer("InnerProduct")
def inner_product(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """Axis 1 (the default) is a Flatten and a Gemm, as ONNX exports of fully connected layers
    are; another axis keeps the dims before it (a Reshape, a MatMul and an Add)."""
    layer.count(bottoms=1, tops=1)
    p = layer.param.inner_product_param
    x = layer.bottom()
    t = ctx.type(x)
    axis = axis_of(p, "axis", None, t.rank)
    if not p.HasField("num_output") or p.num_output < 1:
        raise reject("num_output is missing (the number of outputs)")
    n = int(p.num_output)
    k = math.prod(static_dims(ctx, x, t.shape[axis:], "the dims it flattens"))
    needed = 2 if p.bias_term else 1
    layer.extra_blobs(needed)
    w = layer.blob(0, (k, n) if p.transpose else (n, k), "weights", needed)
    weight = ctx.weight(layer, "weight", w)
    bias = ctx.weight(layer, "bias", layer.blob(1, (n,), "bias", needed)) if p.bias_term else ""
    if axis == 1:
        flat = x
        if t.rank != 2:
            flat = ctx.temp(layer, "flatten")
            ctx.emit(layer, OpType.FLATTEN, (x,), (flat,), AxisAttrs(axis=1), suffix="flatten")
        inputs = (flat, weight, bias) if bias else (flat, weight)
        ctx.emit(layer, OpType.GEMM, inputs, (layer.top(),), GemmAttrs(trans_b=not p.transpose))
        return
    flat = ctx.temp(layer, "flatten")
    ctx.emit(layer, OpType.RESHAPE, (x, ctx.ints(layer, "flatten_shape", [0] * axis + [-1])), (flat,),
             ReshapeAttrs(), suffix="flatten")
    if not p.transpose:
        weight = ctx.weight(layer, "weight_t", w.T)
    if not bias:
        ctx.emit(layer, OpType.MATMUL, (flat, weight), (layer.top(),))
        return
    product = ctx.temp(layer, "matmul")
    ctx.emit(layer, OpType.MATMUL, (flat, weight), (product,), suffix="matmul")
    ctx.emit(layer, OpType.ADD, (product, bias), (layer.top(),))
