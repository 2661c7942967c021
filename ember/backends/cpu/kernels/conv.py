"""Convolution kernels (generic "aten" tactics): Conv, ConvTranspose, FusedConv.

The oneDNN fast paths with prepacked weights live in ``conv_mkldnn.py``.

Layout: where the layout plan (``Records.layout``) plans the output's memory format
(``ember.backends.layout``), the input is put in that format before the call (aten's
convolution then writes it), a constant weight the plan lists is made channels-last once, here,
and the result is checked into the format; without a plan the kernels follow their input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.half import layer_dtype
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, auto_pads, ints, split_pads, torch_pad_arg
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
    """The constant weight in the plan's format (and a half layer's dtype), converted once
    (``None``: use the input as given)."""
    fmt = planned_weight_format(ctx, node.input(1))
    w = ctx.const(node.input(1)) if fmt is not None else None
    return to_format(w.to(layer_dtype(ctx)), fmt) if w is not None else None


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


@register_kernel(OpType.CAUSAL_CONV_WITH_STATE)
def causal_conv_with_state(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX CausalConvWithState: a depthwise conv1d over ``past_state ++ input`` (zeros when no
    past state), SiLU when asked; the state out is the last ``k - 1`` positions of that sequence."""
    silu = node.attrs.silu if node.attrs is not None else False

    def run(inputs: Inputs) -> list:
        x, w, bias, past = inputs[0], inputs[1], arg(inputs, 2), arg(inputs, 3)
        b, c, _ = x.shape
        k = w.shape[2]
        if past is None:
            past = torch.zeros((b, c, k - 1), dtype=x.dtype, device=x.device)
        padded = torch.cat([past.to(x.dtype), x], dim=2)
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        y = F.conv1d(padded.to(work), w.to(work), None if bias is None else bias.to(work), groups=c)
        if silu:
            y = F.silu(y)
        return [y.to(x.dtype), padded.narrow(2, padded.shape[2] - (k - 1), k - 1)]

    return run


@register_kernel(OpType.COL2IM)
def col2im(node: Node, ctx: CompileContext) -> Kernel:
    """Col2Im for any number of spatial axes: every column entry added at its place in the
    padded image (``index_add_``), the pads cropped off."""
    a = node.attrs

    def run(inputs: Inputs) -> list:
        x, image, block = inputs[0], ints(inputs[1]), ints(inputs[2])
        r = len(image)
        strides = list(a.strides) or [1] * r
        dilations = list(a.dilations) or [1] * r
        pads = list(a.pads) or [0] * (2 * r)
        padded = [image[d] + pads[d] + pads[d + r] for d in range(r)]
        counts = [(padded[d] - dilations[d] * (block[d] - 1) - 1) // strides[d] + 1 for d in range(r)]
        n, cb, length = x.shape
        k = math.prod(block)
        if cb % k or length != math.prod(counts):
            raise ValueError(f"Col2Im input {list(x.shape)} does not fit image {image}, block {block} "
                             f"({math.prod(counts)} blocks)")
        offs = torch.cartesian_prod(*[torch.arange(b) * dl for b, dl in zip(block, dilations)]).reshape(k, r)
        pos = torch.cartesian_prod(*[torch.arange(c) * s for c, s in zip(counts, strides)]).reshape(length, r)
        coord = offs[:, None, :] + pos[None, :, :]  # [k, L, r] in the padded image
        place = torch.tensor([math.prod(padded[d + 1:]) for d in range(r)], dtype=torch.int64)
        flat = (coord * place).sum(-1).reshape(-1).to(x.device)
        out = x.new_zeros((n, cb // k, math.prod(padded)))
        out.index_add_(2, flat, x.reshape(n, cb // k, k * length))
        out = out.reshape(n, cb // k, *padded)
        crop = tuple(slice(pads[d], pads[d] + image[d]) for d in range(r))
        return [out[(slice(None), slice(None)) + crop].contiguous()]

    return run


def _bilinear(x: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """``x[N, C, H, W]`` sampled at fractional ``(h, w)`` of shape ``[N, P]`` (zeros outside)."""
    n, c, height, width = x.shape
    flat = x.reshape(n, c, height * width)
    h0, w0 = torch.floor(h), torch.floor(w)
    out = x.new_zeros((n, c, h.shape[1]))
    for dh in (0, 1):
        for dw in (0, 1):
            hi, wi = h0 + dh, w0 + dw
            weight = (1 - (h - hi).abs()) * (1 - (w - wi).abs())
            inside = (hi >= 0) & (hi < height) & (wi >= 0) & (wi < width)
            index = (hi.clamp(0, height - 1) * width + wi.clamp(0, width - 1)).long()
            vals = flat.gather(2, index.unsqueeze(1).expand(n, c, index.shape[1]))
            out += vals * (weight * inside).unsqueeze(1).to(x.dtype)
    return out


@register_kernel(OpType.DEFORM_CONV)
def deform_conv(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX DeformConv (2-D): each kernel tap samples the input bilinearly at its place moved by
    the offset (scaled by the mask), then a grouped matrix product with the weights."""
    a = node.attrs
    conv = a.conv

    def run(inputs: Inputs) -> list:
        x, w, offset, bias, mask = inputs[0], inputs[1], inputs[2], arg(inputs, 3), arg(inputs, 4)
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x, w, offset = x.to(work), w.to(work), offset.to(work)
        n, c, _, _ = x.shape
        oc, _, kh, kw = w.shape
        oh, ow = offset.shape[2:]
        g_off, group = a.offset_group, conv.group
        sh, sw = conv.strides
        dh, dw = conv.dilations
        off = offset.reshape(n, g_off, kh, kw, 2, oh, ow)
        base_h = (torch.arange(oh, dtype=work) * sh - conv.pads[0]).reshape(1, 1, 1, oh, 1) + \
            (torch.arange(kh, dtype=work) * dh).reshape(kh, 1, 1, 1)
        base_w = (torch.arange(ow, dtype=work) * sw - conv.pads[1]).reshape(1, 1, 1, 1, ow) + \
            (torch.arange(kw, dtype=work) * dw).reshape(1, kw, 1, 1)
        hs = off[:, :, :, :, 0] + base_h.reshape(1, 1, kh, 1, oh, 1).to(x.device)
        ws = off[:, :, :, :, 1] + base_w.reshape(1, 1, 1, kw, 1, ow).to(x.device)
        m = mask.to(work).reshape(n, g_off, kh, kw, oh, ow) if mask is not None else None
        per = c // g_off
        cols = []
        for g in range(g_off):
            sampled = _bilinear(x[:, g * per:(g + 1) * per], hs[:, g].reshape(n, -1), ws[:, g].reshape(n, -1))
            sampled = sampled.reshape(n, per, kh, kw, oh, ow)
            cols.append(sampled * m[:, g].unsqueeze(1) if m is not None else sampled)
        col = torch.cat(cols, dim=1).reshape(n, group, (c // group) * kh * kw, oh * ow)
        wg = w.reshape(group, oc // group, (c // group) * kh * kw)
        out = torch.einsum("gok,ngkp->ngop", wg, col).reshape(n, oc, oh, ow)
        if bias is not None:
            out = out + bias.to(work).reshape(1, -1, 1, 1)
        return [out.to(inputs[0].dtype)]

    return run
