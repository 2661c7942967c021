"""Convolution kernels (generic "aten" tactics): Conv, ConvTranspose, FusedConv.

The oneDNN fast paths with prepacked weights live in ``conv_mkldnn.py``.

Layout: where the layout plan (``Records.layout``) plans the output's memory format
(``ember.backends.layout``), the input is put in that format before the call (aten's
convolution then writes it), a constant weight the plan lists is made channels-last once, here,
and the result is checked into the format; without a plan the kernels follow their input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, auto_pads, split_pads, torch_pad_arg
from ember.backends.cpu.registry import register_kernel
from ember.backends.layout import planned_format, planned_weight_format, to_format
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import AutoPad, ConvAttrs, ConvTransposeAttrs, FusedConvAttrs


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved convolution parameters for one input shape."""

    strides: list[int]
    dilations: list[int]
    begins: list[int]
    ends: list[int]

    @property
    def symmetric(self) -> bool:
        return self.begins == self.ends


def _fill(values: Sequence[int], n: int, default: int) -> list[int]:
    return [int(v) for v in values] if values else [default] * n


def conv_geometry(a: ConvAttrs, x_shape: Sequence[int], w_shape: Sequence[int]) -> ConvGeometry:
    """Strides, dilations and explicit begin/end pads of a Conv on an input of ``x_shape``."""
    n = len(w_shape) - 2
    kernel = list(a.kernel_shape) or list(w_shape[2:])
    strides, dilations = _fill(a.strides, n, 1), _fill(a.dilations, n, 1)
    pads = auto_pads(a.auto_pad, a.pads, x_shape[2:], kernel, strides, dilations)
    begins, ends = split_pads(pads)
    return ConvGeometry(strides, dilations, begins, ends)


def conv_forward(x: Tensor, w: Tensor, b: Optional[Tensor], a: ConvAttrs) -> Tensor:
    """ONNX Conv (1-D/2-D/3-D, groups, dilations, asymmetric pads, auto_pad) through aten."""
    geo = conv_geometry(a, x.shape, w.shape)
    padding = geo.begins
    if not geo.symmetric:
        x = F.pad(x, torch_pad_arg(geo.begins, geo.ends))
        padding = [0] * len(geo.begins)
    return torch.convolution(x, w, b, geo.strides, padding, geo.dilations, False,
                             [0] * len(padding), a.group)


def _planned_weight(node: Node, ctx: CompileContext) -> Optional[Tensor]:
    """The constant weight in the plan's format, converted once (``None``: use the input as given)."""
    fmt = planned_weight_format(ctx, node.input(1))
    w = ctx.const(node.input(1)) if fmt is not None else None
    return to_format(w, fmt) if w is not None else None


@register_kernel(OpType.CONV)
def conv(node: Node, ctx: CompileContext) -> Kernel:
    a: ConvAttrs = node.attrs
    fmt = planned_format(ctx, node.outputs[0])
    w0 = _planned_weight(node, ctx)
    if fmt is None and w0 is None:
        def run(inputs: Inputs) -> list:
            return [conv_forward(inputs[0], inputs[1], arg(inputs, 2), a)]

        return run

    def run_planned(inputs: Inputs) -> list:
        w = w0 if w0 is not None else inputs[1]
        return [to_format(conv_forward(to_format(inputs[0], fmt), w, arg(inputs, 2), a), fmt)]

    return run_planned


@register_kernel(OpType.FUSED_CONV)
def fused_conv(node: Node, ctx: CompileContext) -> Kernel:
    """``act(conv(x, w) + b [+ residual])`` as separate aten calls (the reference tactic)."""
    a: FusedConvAttrs = node.attrs
    act = activation_fn(a.activation, a.act_params)
    fmt = planned_format(ctx, node.outputs[0])
    w0 = _planned_weight(node, ctx)

    def run(inputs: Inputs) -> list:
        w = w0 if w0 is not None else inputs[1]
        y = conv_forward(to_format(inputs[0], fmt), w, arg(inputs, 2), a.conv)
        if a.has_residual:
            y = y + inputs[3]
        return [to_format(act(y) if act is not None else y, fmt)]

    return run


# ---- ConvTranspose ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeconvGeometry:
    strides: list[int]
    dilations: list[int]
    kernel: list[int]
    begins: list[int]
    ends: list[int]
    output_padding: list[int]
    out_sizes: list[int]


def deconv_geometry(a: ConvTransposeAttrs, x_shape: Sequence[int],
                    w_shape: Sequence[int]) -> DeconvGeometry:
    """ConvTranspose pads and output sizes, following the ONNX formulas for every auto_pad."""
    n = len(w_shape) - 2
    kernel = list(a.kernel_shape) or list(w_shape[2:])
    strides, dilations = _fill(a.strides, n, 1), _fill(a.dilations, n, 1)
    out_pad = _fill(a.output_padding, n, 0)
    ins = list(x_shape[2:])
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for s, i, op, k, d in zip(strides, ins, out_pad, kernel, dilations)]
    target: Optional[list[int]] = None
    if a.output_shape is not None:
        target = list(a.output_shape)[-n:]
    elif a.auto_pad in (AutoPad.SAME_UPPER, AutoPad.SAME_LOWER):
        target = [i * s for i, s in zip(ins, strides)]
    if target is not None:
        begins, ends = [], []
        for f, t in zip(full, target):
            total = f - t
            if a.auto_pad is AutoPad.SAME_UPPER:
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
    elif a.auto_pad is AutoPad.VALID:
        begins, ends = [0] * n, [0] * n
    else:
        begins, ends = split_pads(a.pads) if a.pads else ([0] * n, [0] * n)
    outs = [f - b - e for f, b, e in zip(full, begins, ends)]
    return DeconvGeometry(strides, dilations, kernel, begins, ends, out_pad, outs)


def conv_transpose_forward(x: Tensor, w: Tensor, b: Optional[Tensor], a: ConvTransposeAttrs) -> Tensor:
    """ONNX ConvTranspose: output_padding, output_shape, groups, dilations, auto_pad."""
    geo = deconv_geometry(a, x.shape, w.shape)
    n = len(geo.kernel)
    torch_ok = (geo.begins == geo.ends and all(p >= 0 for p in geo.begins)
                and all(op < max(s, d)
                        for op, s, d in zip(geo.output_padding, geo.strides, geo.dilations)))
    if torch_ok:
        return torch.convolution(x, w, b, geo.strides, geo.begins, geo.dilations, True,
                                 geo.output_padding, a.group)
    y = torch.convolution(x, w, None, geo.strides, [0] * n, geo.dilations, True, [0] * n, a.group)
    # crop the begin pads, then crop or zero-extend the end to the ONNX output size
    tails = [o - (y.shape[2 + i] - bg) for i, (o, bg) in enumerate(zip(geo.out_sizes, geo.begins))]
    y = F.pad(y, torch_pad_arg([-bg for bg in geo.begins], tails))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


@register_kernel(OpType.CONV_TRANSPOSE)
def conv_transpose(node: Node, ctx: CompileContext) -> Kernel:
    a: ConvTransposeAttrs = node.attrs
    fmt = planned_format(ctx, node.outputs[0])
    w0 = _planned_weight(node, ctx)

    def run(inputs: Inputs) -> list:
        w = w0 if w0 is not None else inputs[1]
        return [to_format(conv_transpose_forward(to_format(inputs[0], fmt), w, arg(inputs, 2), a), fmt)]

    return run
