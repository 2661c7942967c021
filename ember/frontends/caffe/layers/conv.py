"""Convolution and Deconvolution (any number of spatial axes; groups, dilation, bias_term, and
every spelling of pad/kernel/stride)."""
from __future__ import annotations

from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.layers.common import static_dims, window_values
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.optype import OpType
from ember.ops.attrs import ConvAttrs, ConvTransposeAttrs


def _geometry(ctx: CaffeContext, layer: CaffeLayer) -> tuple[int, int, tuple[int, ...], tuple[int, ...],
                                                                tuple[int, ...], tuple[int, ...], int]:
    """(channels, num_output, kernel, stride, pad, dilation, group) of a (de)convolution."""
    p = layer.param.convolution_param
    layer.count(bottoms=1, tops=1)
    x = ctx.type(layer.bottom())
    if p.axis not in (1, 1 - x.rank):
        raise reject(f"axis {p.axis}: Ember convolves with the channels on axis 1")
    n = x.rank - 2
    if n < 1:
        raise reject(f"its bottom {x} has no spatial axis")
    if not p.HasField("num_output") or p.num_output < 1:
        raise reject("num_output is missing (the number of output channels)")
    (channels,) = static_dims(ctx, layer.bottom(), x.shape[1:2], "the input's channel count")
    kernel = window_values(p, "kernel_size", n, None, layer)
    stride = window_values(p, "stride", n, 1, layer)
    pad = window_values(p, "pad", n, 0, layer)
    dilation = window_values(p, "dilation", n, 1, layer)
    group = int(p.group)
    if any(k < 1 for k in kernel) or any(s < 1 for s in stride) or any(d < 1 for d in dilation):
        raise reject(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    if group < 1 or channels % group or p.num_output % group:
        raise reject(f"group {group} must divide the input channels ({channels}) and num_output "
                     f"({p.num_output})")
    return channels, int(p.num_output), kernel, stride, pad, dilation, group


def _inputs(ctx: CaffeContext, layer: CaffeLayer, w_shape: tuple[int, ...], out: int) -> list[str]:
    p = layer.param.convolution_param
    needed = 2 if p.bias_term else 1
    layer.extra_blobs(needed)
    inputs = [layer.bottom(), ctx.weight(layer, "weight", layer.blob(0, w_shape, "weights", needed))]
    if p.bias_term:
        inputs.append(ctx.weight(layer, "bias", layer.blob(1, (out,), "bias", needed)))
    return inputs


@caffe_layer("Convolution")
def convolution(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """y = conv(x, W[num_output, C/group, *kernel]) + b."""
    channels, out, kernel, stride, pad, dilation, group = _geometry(ctx, layer)
    inputs = _inputs(ctx, layer, (out, channels // group, *kernel), out)
    attrs = ConvAttrs(kernel_shape=kernel, strides=stride, pads=pad + pad, dilations=dilation, group=group)
    ctx.emit(layer, OpType.CONV, inputs, (layer.top(),), attrs)


@caffe_layer("Deconvolution")
def deconvolution(ctx: CaffeContext, layer: CaffeLayer) -> None:
    """y = conv_transpose(x, W[C, num_output/group, *kernel]) + b; output size
    ``stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad``."""
    channels, out, kernel, stride, pad, dilation, group = _geometry(ctx, layer)
    inputs = _inputs(ctx, layer, (channels, out // group, *kernel), out)
    attrs = ConvTransposeAttrs(kernel_shape=kernel, strides=stride, pads=pad + pad, dilations=dilation,
                               output_padding=(0,) * len(kernel), group=group)
    ctx.emit(layer, OpType.CONV_TRANSPOSE, inputs, (layer.top(),), attrs)
