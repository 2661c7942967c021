"""Normalization kernels: BatchNormalization (inference), LayerNormalization (also of a residual
sum: SkipLayerNormalization), InstanceNormalization, GroupNormalization, Softmax, LogSoftmax."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, norm_axis
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxisAttrs,
    BatchNormAttrs,
    GroupNormAttrs,
    InstanceNormAttrs,
    LayerNormAttrs,
    LossAttrs,
    RMSNormAttrs,
    SoftmaxAttrs,
)


@register_kernel(OpType.BATCH_NORM)
def batch_norm(node: Node, ctx: CompileContext) -> Kernel:
    """Inference BatchNormalization: ``(x - mean) / sqrt(var + eps) * scale + bias`` per channel."""
    eps = float((node.attrs or BatchNormAttrs()).epsilon)

    def run(inputs: Inputs) -> list:
        x, scale, bias, mean, var = inputs[:5]
        return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)]

    return run


def _layer_norm(x: Tensor, axis: int, scale: Tensor | None, bias: Tensor | None,
                eps: float) -> Tensor:
    shape = tuple(x.shape[axis:])
    if scale is not None and tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def _stats(x: Tensor, axis: int, eps: float) -> tuple[Tensor, Tensor]:
    dims = tuple(range(axis, x.dim()))
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=dims, keepdim=True, correction=0)
    return mean, torch.rsqrt(var + eps)


@register_kernel(OpType.LAYER_NORM)
def layer_norm(node: Node, ctx: CompileContext) -> Kernel:
    """LayerNormalization over dims ``[axis, rank)``; Mean / InvStdDev outputs when asked for."""
    a = node.attrs or LayerNormAttrs()
    eps = float(a.epsilon)
    want_stats = any(node.outputs[1:])

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        y = _layer_norm(x, axis, arg(inputs, 1), arg(inputs, 2), eps)
        if not want_stats:
            return [y]
        mean, inv_std = _stats(x, axis, eps)
        return [y, mean, inv_std][:len(node.outputs)]

    return run


@register_kernel(OpType.SKIP_LAYER_NORM)
def skip_layer_norm(node: Node, ctx: CompileContext) -> Kernel:
    """LayerNormalization of ``x + skip`` over dims ``[axis, rank)``."""
    a = node.attrs or LayerNormAttrs()
    eps = float(a.epsilon)

    def run(inputs: Inputs) -> list:
        x = inputs[0] + inputs[1]
        return [_layer_norm(x, norm_axis(a.axis, x.dim()), arg(inputs, 2), arg(inputs, 3), eps)]

    return run


def _softmax_kernel(node: Node, fn) -> Kernel:
    a = node.attrs or SoftmaxAttrs()

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        axis = norm_axis(a.axis, x.dim())
        if a.legacy_flatten and axis != x.dim() - 1:
            # opset < 13: softmax over the flattened trailing block [axis, rank)
            flat = x.reshape(math.prod(x.shape[:axis]), -1)
            return [fn(flat, dim=1).reshape(x.shape)]
        return [fn(x, dim=axis)]

    return run


@register_kernel(OpType.SOFTMAX)
def softmax(node: Node, ctx: CompileContext) -> Kernel:
    return _softmax_kernel(node, torch.softmax)


@register_kernel(OpType.LOG_SOFTMAX)
def log_softmax(node: Node, ctx: CompileContext) -> Kernel:
    return _softmax_kernel(node, torch.log_softmax)


@register_kernel(OpType.INSTANCE_NORM)
def instance_norm(node: Node, ctx: CompileContext) -> Kernel:
    eps = float((node.attrs or InstanceNormAttrs()).epsilon)

    def run(inputs: Inputs) -> list:
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        c = x.shape[1]
        return [F.instance_norm(x, weight=scale.expand(c), bias=bias.expand(c), eps=eps)]

    return run


def _per_channel(t: Tensor, c: int, groups: int, per_channel: bool) -> Tensor:
    if not per_channel and t.numel() == groups:
        return t.repeat_interleave(c // groups)
    return t.reshape(-1).expand(c)


@register_kernel(OpType.GROUP_NORM)
def group_norm(node: Node, ctx: CompileContext) -> Kernel:
    """GroupNormalization; opset 18's per-group scale/bias is expanded to the channels."""
    a: GroupNormAttrs = node.attrs

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        c = x.shape[1]
        scale = _per_channel(inputs[1], c, a.num_groups, a.per_channel_affine)
        bias = _per_channel(arg(inputs, 2), c, a.num_groups, a.per_channel_affine)
        return [F.group_norm(x, a.num_groups, scale, bias, float(a.epsilon))]

    return run


@register_kernel(OpType.RMS_NORM)
def rms_norm(node: Node, ctx: CompileContext) -> Kernel:
    """RMSNormalization: ``x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale``, statistics in
    float32 (ONNX's stash_type 1)."""
    a = node.attrs or RMSNormAttrs()
    eps = float(a.epsilon)

    def run(inputs: Inputs) -> list:
        x, scale = inputs[0], inputs[1]
        axis = norm_axis(a.axis, x.dim())
        xf = x.float()
        ms = (xf * xf).mean(dim=tuple(range(axis, x.dim())), keepdim=True)
        y = (xf * torch.rsqrt(ms + eps)).to(x.dtype)
        return [y * scale]

    return run


@register_kernel(OpType.HARDMAX)
def hardmax(node: Node, ctx: CompileContext) -> Kernel:
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    a = node.attrs or AxisAttrs(axis=-1)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if x.dim() == 0 or x.numel() == 0:
            return [torch.ones_like(x) if x.dim() == 0 else torch.zeros_like(x)]
        axis = norm_axis(a.axis, x.dim())
        idx = torch.argmax(x, dim=axis, keepdim=True)  # the first maximum
        return [torch.zeros_like(x).scatter_(axis, idx, 1)]

    return run


def nll_loss(log_prob: Tensor, target: Tensor, weight: Optional[Tensor], a: LossAttrs) -> Tensor:
    """ONNX NegativeLogLikelihoodLoss: ``-log_prob[n, target[n, d], d] * weight[target]``,
    ignored targets weighing 0; ``mean`` divides by the summed weights."""
    c = log_prob.shape[1]
    target = target.long()
    ignored = target == a.ignore_index if a.ignore_index is not None else torch.zeros_like(target, dtype=torch.bool)
    safe = torch.where(ignored, torch.zeros_like(target), target)
    if bool(((safe < 0) | (safe >= c)).any()):
        raise ValueError(f"loss targets must lie in [0, {c}) (or be the ignore_index)")
    picked = -log_prob.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = weight[safe].to(log_prob.dtype) if weight is not None else torch.ones_like(picked)
    w = torch.where(ignored, torch.zeros_like(w), w)
    loss = picked * w
    if a.reduction == "none":
        return loss
    if a.reduction == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


def _loss_kernel(softmax: bool) -> Callable[[Node, CompileContext], Kernel]:
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        a: LossAttrs = node.attrs

        def run(inputs: Inputs) -> list:
            x, target, weight = inputs[0], inputs[1], arg(inputs, 2)
            work = x if x.dtype in (torch.float32, torch.float64) else x.float()
            log_prob = torch.log_softmax(work, dim=1) if softmax else work
            loss = nll_loss(log_prob, target, None if weight is None else weight.to(work.dtype), a)
            out = [loss.to(x.dtype)]
            return out + [log_prob.to(x.dtype)] if softmax else out

        return run

    return factory


register_kernel(OpType.NLL_LOSS)(_loss_kernel(softmax=False))
register_kernel(OpType.SOFTMAX_CROSS_ENTROPY)(_loss_kernel(softmax=True))
