"""INT8 layers on the CPU: QConv and QGemm through oneDNN's INT8 primitives, as PyTorch exposes them
(``torch.ops.onednn.qconv_prepack`` / ``qconv2d_pointwise`` / ``qlinear_prepack`` /
``qlinear_pointwise``, the entry points Inductor's quantization uses; the deprecated
``torch.ao.quantization`` stack and ``torch.ops.quantized.*`` are not used).

- The weight is quantized here, at compile time, with the layer's per-output-channel symmetric
  scales (``QConvAttrs.w_scales``: ``q = clamp(round(w / s), -127, 127)``) and prepacked once
  (for the conv, for the input shape the graph gives, else a nominal one).
- Input 0 arrives 8-bit (the previous INT8 layer wrote it so) or float32, which is quantized
  here with ``attrs.x`` (one fused multiply, add, clamp and narrowing: rounding half up, where
  ONNX's QuantizeLinear rounds half to even: only exact ties differ, by one step).
- Bias, ReLU / clip (conv) or ReLU / GELU (GEMM), the residual add (``sum`` into the residual,
  which is copied first: oneDNN writes the result into it) and the requantization to
  ``attrs.out`` are oneDNN post-ops: the output is written 8-bit for INT8 readers, or float32.
  Activations oneDNN's INT8 ops do not fuse run after a float32 output, then quantize.

Measured on the 2-core AMX Xeon (``bench/probes/int8_onednn.py``): oneDNN's convolution takes
unsigned activations only (hence uint8 storage with a zero point for signed tensors), computes
channels-last whatever the input, and its outputs are within one quantization step of a float64
reference.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.features import INT8_SAFE_WEIGHT, cpu_features, int8_saturates
from ember.backends.cpu.kernels.common import Inputs
from ember.backends.cpu.kernels.conv import conv_forward
from ember.backends.cpu.kernels.conv_mkldnn import ConvPadder, reorder_params
from ember.backends.cpu.registry import register_kernel
from ember.backends.layout import NCHW, planned_format
from ember.backends.tensors import torch_dtype
from ember.errors import BuildError, EmberError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, AutoPad, ConvAttrs, QConvAttrs, QGemmAttrs, QuantParams

_RANGE = {DType.UINT8: (0, 255), DType.INT8: (-128, 127)}


@functools.cache
def int8_available() -> bool:
    """Whether this PyTorch has oneDNN's INT8 convolution and linear entry points."""
    try:
        ops = torch.ops.onednn
        return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "qconv_prepack")
                    and hasattr(ops, "qconv2d_pointwise") and hasattr(ops, "qlinear_prepack")
                    and hasattr(ops, "qlinear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def gemm_input(x: torch.Tensor, xp: QuantParams, inv: Optional[torch.Tensor], layer: str) -> torch.Tensor:
    """An INT8 GEMM's input as its kernel takes it: a float one quantized as ``xp`` says (``inv``:
    the SmoothQuant multipliers, which need it float), an 8-bit one as it is; contiguous."""
    if x.dtype != torch_dtype(xp.dtype):
        return quantize(x.contiguous(), xp, inv=inv)
    if inv is not None:
        raise EmberError(f"INT8 layer {layer!r} smooths its input and must be given it in float32")
    return x if x.is_contiguous() else x.contiguous()


def quantize(x: torch.Tensor, p: QuantParams, out: Optional[torch.Tensor] = None,
             inv: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` (float) stored as ``p`` says: ``clamp(x / scale + zero_point)`` rounded half up, in
    ``out``'s memory format when given (one pass writes the float temporary in that format).
    ``inv``: a multiplier along the last dim used instead of ``1 / scale`` (smoothing folded in)."""
    m, add, top, signed_out = quantize_constants(p)
    m = inv if inv is not None else m
    v = torch.mul(x, m, out=out) if out is not None else torch.mul(x, m)
    q = v.add_(add).clamp_(0.0, top).to(torch.uint8)
    return q.bitwise_xor_(0x80).view(torch.int8) if signed_out else q


def quantize_constants(p: QuantParams) -> tuple[float, float, float, bool]:
    """``quantize``'s arithmetic as four numbers, shared with the native extension's
    ``quantize_nhwc`` (same float32 operations, same bytes): the multiplier ``1 / scale``, the
    addend (the zero point, plus the shift that makes the stored range non-negative so that
    narrowing truncates as rounding half up, plus 0.5), the clamp's upper bound in that shifted
    range, and whether the result is int8 (stored as uint8 with the top bit flipped)."""
    lo, hi = _RANGE[p.dtype]
    return 1.0 / p.scale, float(p.zero_point - lo + 0.5), float(hi - lo + 0.5), p.dtype is DType.INT8


def dequantize(q: torch.Tensor, p: QuantParams) -> torch.Tensor:
    """Float32 values of an 8-bit tensor stored as ``p`` says."""
    v = q.to(torch.float32)
    if p.zero_point:
        v.sub_(p.zero_point)
    return v.mul_(p.scale)


def quantize_weight(w: torch.Tensor, scales: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric int8 weight: ``clamp(round(w / s), -127, 127)`` along ``axis``."""
    shape = [1] * w.dim()
    shape[axis] = -1
    return torch.round(w.to(torch.float64) / scales.to(torch.float64).reshape(shape)).clamp_(-127, 127).to(torch.int8)


def _out_args(p: Optional[QuantParams]) -> tuple[float, int, torch.dtype]:
    """oneDNN's (output_scale, output_zero_point, output_dtype) for an output stored as ``p``
    (float32: scale 1, zero point 0)."""
    return (1.0, 0, torch.float32) if p is None else (p.scale, p.zero_point, torch_dtype(p.dtype))


def _conv_postop(act: Activation, params: tuple[float, ...], residual: bool) -> Optional[tuple[str, list, str]]:
    """(attr, scalars, algorithm) of the unary post-op oneDNN's INT8 convolution fuses, or None."""
    if act is Activation.NONE:
        return ("none", [], "")
    if act is Activation.RELU:
        return ("relu", [], "")
    if act is Activation.CLIP and not residual and len(params) == 2:
        return ("hardtanh", [float(params[0]), float(params[1])], "")
    return None


def _gemm_postop(act: Activation) -> Optional[tuple[str, list, str]]:
    """(post_op_name, args, algorithm) of the post-op oneDNN's INT8 linear fuses, or None."""
    return {Activation.NONE: ("none", [], ""), Activation.RELU: ("relu", [], ""),
            Activation.GELU_ERF: ("gelu", [], "none"), Activation.GELU_TANH: ("gelu", [], "tanh")}.get(act)


def _epilogue(act: Activation, params: tuple[float, ...], out: Optional[QuantParams]):
    """The activation (then quantization) of a float32 result, for epilogues oneDNN does not fuse."""
    fn = activation_fn(act, params)

    def finish(y: torch.Tensor) -> torch.Tensor:
        y = fn(y) if fn is not None else y
        return quantize(y, out) if out is not None else y

    return finish


def _zero_point_folded(a: QConvAttrs, qw: torch.Tensor, w_scales: torch.Tensor,
                       bias: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], int]:
    """(bias, zero point left to the kernel): where no padding reads the input's zero point, the
    compensation is a constant per output channel, folded into the bias (sum (q - zp) w = sum q w -
    zp sum w) and the kernel sees zero point 0; elsewhere both as they are."""
    zp = a.x.zero_point
    if not zp or _padded(a.conv):
        return bias, zp
    comp = (zp * a.x.scale) * w_scales.double() * qw.double().sum(dim=tuple(range(1, qw.dim())))
    return ((bias.double() if bias is not None else 0.0) - comp).to(torch.float32).contiguous(), 0


def _padded(a: ConvAttrs) -> bool:
    """Whether the convolution pads its input at all (explicit pads or ``auto_pad`` SAME)."""
    return any(a.pads or ()) or a.auto_pad not in (AutoPad.NOTSET, AutoPad.VALID)


def _static_input(node: Node, ctx: CompileContext) -> Optional[list[int]]:
    t = ctx.graph.types.get(node.inputs[0]) if ctx.graph is not None else None
    if t is None or not all(isinstance(d, int) for d in t.shape[1:]):
        return None
    return [t.shape[0] if isinstance(t.shape[0], int) else 1, *t.shape[1:]]


@register_kernel(OpType.QCONV)
def qconv(node: Node, ctx: CompileContext) -> Kernel:
    """QConv through ``onednn.qconv2d_pointwise`` (``.binary`` with a residual)."""
    return _compile(node, ctx, _qconv)


def _compile(node: Node, ctx: CompileContext, make) -> Kernel:
    """``make(node, ctx, weight, bias)`` on the constant weight, or on each weight it is given."""
    if not int8_available():
        raise BuildError(f"layer {node.name!r} is an INT8 layer ({node.op}), and this PyTorch has no oneDNN "
                         f"INT8 kernels; build with precision fp32")
    w = ctx.const(node.input(1))
    if w is None:
        return _with_runtime_weights(node, ctx, make)
    return make(node, ctx, w, ctx.const(node.input(2)))


def _with_runtime_weights(node: Node, ctx: CompileContext, make) -> Kernel:
    """The kernel for weights that arrive as inputs (a node evaluated on its own, as the
    reference evaluator and tests do): compiled on first use, again when the weight changes."""
    made: dict[tuple, Kernel] = {}

    def run(inputs: Inputs) -> list:
        w, b = inputs[1], inputs[2] if len(inputs) > 2 else None
        key = (w.data_ptr(), tuple(w.shape), None if b is None else b.data_ptr())
        kernel = made.get(key)
        if kernel is None:
            made.clear()
            kernel = made[key] = make(node, ctx, w, b)
        return kernel(inputs)

    return run


def saturates(qw: torch.Tensor, x: QuantParams) -> bool:
    """Whether oneDNN's 8-bit kernels could saturate on this CPU for a layer with int8 weights
    ``qw`` reading activations stored as ``x`` (``features.int8_saturates``): only where the CPU
    adds pairs of products in 16 bits, and then unless the input is uint8 and the weights fit
    ``features.INT8_SAFE_WEIGHT`` (a calibrated build on such a CPU quantizes them so). Such
    layers compute in float32 on the same integers (``_qconv_exact`` / ``_qgemm_exact``)."""
    if not int8_saturates():
        return False
    return x.dtype is not DType.UINT8 or qw.numel() == 0 or int(qw.abs().max()) > INT8_SAFE_WEIGHT


def _qconv(node: Node, ctx: CompileContext, w: torch.Tensor, bias: Optional[torch.Tensor]) -> Kernel:
    a: QConvAttrs = node.attrs
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    w_zp = torch.zeros(len(a.w_scales), dtype=torch.int64)
    qw = quantize_weight(w.to(torch.float32), w_scales, 0)
    if saturates(qw, a.x):
        return _qconv_exact(node, ctx, w, bias)
    bias = bias.reshape(-1).to(torch.float32).contiguous() if bias is not None else None
    pads = ConvPadder(a.conv, tuple(w.shape))
    padding, strides, dilations, in_size = reorder_params(a.conv, tuple(w.shape), _static_input(node, ctx), pads)
    xp = a.x
    # a non-zero input zero point makes oneDNN compensate on every call (+50 us a layer measured)
    bias, x_zp = _zero_point_folded(a, qw, w_scales, bias)
    packed = torch.ops.onednn.qconv_prepack(qw, w_scales, xp.scale, x_zp, strides, padding,
                                            dilations, a.conv.group, in_size)
    out = a.out
    group, residual, res_p = a.conv.group, a.has_residual, a.residual
    o_scale, o_zp, o_dtype = _out_args(out)
    fused = _conv_postop(a.activation, tuple(a.act_params), a.has_residual)
    finish = None
    if fused is None:  # compute float32, then the activation and the quantization
        o_scale, o_zp, o_dtype = _out_args(None)
        finish = _epilogue(a.activation, tuple(a.act_params), out)
        fused = ("none", [], "")
    unary, scalars, algorithm = fused
    to_nchw = out is None and finish is None and planned_format(ctx, node.outputs[0]) is NCHW
    # the residual is summed 8-bit (as ``a.residual`` says) into an 8-bit output, else float32
    acc_p = res_p if out is not None and finish is None else None
    if residual and acc_p is None and out is not None and finish is None:
        raise BuildError(f"INT8 layer {node.name!r} writes an 8-bit output and has no residual scale")
    cl = torch.channels_last
    conv = torch.ops.onednn.qconv2d_pointwise
    x_dtype = torch_dtype(xp.dtype)
    zp_fill = float(xp.zero_point)

    def prepare(x: torch.Tensor) -> tuple[torch.Tensor, list, list, list]:
        pad, stride, dil, explicit = pads(tuple(x.shape))
        if x.dtype != x_dtype:
            x = quantize(x, xp, torch.empty(x.shape, dtype=torch.float32, memory_format=cl))
        elif not x.is_contiguous(memory_format=cl):
            x = x.contiguous(memory_format=cl)
        if explicit is not None:  # real 0 is the zero point
            x = F.pad(x, explicit, value=zp_fill).contiguous(memory_format=cl)
        return x, pad, stride, dil

    def accumulator(r: torch.Tensor) -> torch.Tensor:
        """A fresh channels-last accumulator holding the residual as ``acc_p`` stores it (float32
        where ``acc_p`` is None); oneDNN writes the result into it."""
        if acc_p is None:
            if r.dtype != torch.float32:
                return dequantize(r, res_p).contiguous(memory_format=cl)
            return r.clone(memory_format=cl)
        if r.dtype == torch.float32:
            return quantize(r, acc_p, torch.empty(r.shape, dtype=torch.float32, memory_format=cl))
        return r.clone(memory_format=cl)

    acc_scale, acc_zp = (1.0, 0) if acc_p is None else (acc_p.scale, acc_p.zero_point)

    def run(inputs: Inputs) -> list:
        x, pad, stride, dil = prepare(inputs[0])
        if residual:
            acc = accumulator(inputs[3])
            y = conv.binary(x, xp.scale, x_zp, packed, w_scales, w_zp, acc, bias, stride, pad, dil,
                            group, o_scale, o_zp, o_dtype, acc_scale, acc_zp, "sum", 1.0,
                            None if unary == "none" else unary, scalars, None)
        else:
            y = conv(x, xp.scale, x_zp, packed, w_scales, w_zp, bias, stride, pad, dil, group,
                     o_scale, o_zp, o_dtype, unary, scalars, algorithm or None)
        if finish is not None:
            y = finish(y)
        return [y.contiguous() if to_nchw else y]

    return run


@register_kernel(OpType.QGEMM)
def qgemm(node: Node, ctx: CompileContext) -> Kernel:
    """QGemm through ``onednn.qlinear_pointwise``: ``[.., K] @ [K, N]`` on any leading dims."""
    return _compile(node, ctx, _qgemm)


def _gemm_weight(a: QGemmAttrs, w: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The [N, K] float weight (the SmoothQuant factors folded in) and the input's multipliers
    (``gemm_input``'s ``inv``; None without smoothing)."""
    w_nk = (w if a.gemm.trans_b else w.t()).to(torch.float32).contiguous()  # [N, K]
    if not a.smooth:
        return w_nk, None
    s = torch.tensor(a.smooth, dtype=torch.float64)  # x @ w == (x / s) @ (s * w)
    return (w_nk.double() * s[None, :]).to(torch.float32), (1.0 / (s * a.x.scale)).to(torch.float32)


def _qgemm(node: Node, ctx: CompileContext, w: torch.Tensor, c: Optional[torch.Tensor]) -> Kernel:
    a: QGemmAttrs = node.attrs
    w_nk, inv = _gemm_weight(a, w)
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    w_zp = torch.zeros(len(a.w_scales), dtype=torch.int64)
    qw = quantize_weight(w_nk, w_scales, 0)
    if saturates(qw, a.x):
        return _qgemm_exact(node, ctx, w, c)
    k = int(w_nk.shape[1])
    packed = torch.ops.onednn.qlinear_prepack(qw, None)
    bias = (c.reshape(-1).to(torch.float32) * a.gemm.beta).contiguous() if c is not None else None
    out = a.out
    o_scale, o_zp, o_dtype = _out_args(out)
    fused = _gemm_postop(a.activation)
    finish = None
    if fused is None:
        o_scale, o_zp, o_dtype = _out_args(None)
        finish = _epilogue(a.activation, tuple(a.act_params), out)
        fused = ("none", [], "")
    post, post_args, algorithm = fused
    xp = a.x
    linear = torch.ops.onednn.qlinear_pointwise

    def run(inputs: Inputs) -> list:
        x = gemm_input(inputs[0], xp, inv, node.name)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k) if x.dim() != 2 else x
        y = linear(x2, xp.scale, xp.zero_point, packed, w_scales, w_zp, bias, o_scale, o_zp, o_dtype,
                   post, post_args, algorithm or "none")
        if finish is not None:
            y = finish(y)
        return [y.reshape(*lead, y.shape[-1]) if x.dim() != 2 else y]

    return run


# On x86 CPUs without VNNI or AMX, oneDNN's 8-bit kernels add pairs of u8 x s8 products in 16 bits
# and saturate (``features.int8_saturates``) unless the weights fit 7 bits (``saturates``: what a
# calibrated build there makes). The other INT8 layers (an engine built on a VNNI CPU, a Q/DQ
# model's full-range weights) compute in float32 on the same
# operands: the 8-bit input's integers (its zero point subtracted, or folded into the bias where
# no padding reads it) times the weight's integers times their scales, on PyTorch's prepacked
# fp32 convolution / MKL's GEMM, then the residual, the activation and the output quantization in
# the order of oneDNN's post-ops. No saturation; the only difference from integer arithmetic is
# float32 rounding (about 1e-6 relative), far under a quantization step. Speed: an fp32 layer's,
# plus the conversions at its edges.

_said_exact = False


def _say_exact() -> None:
    """One warning a process that this CPU's INT8 layers take the float32 path."""
    global _said_exact
    if not _said_exact:
        _said_exact = True
        logging.getLogger("ember.build").warning(
            "this CPU (%s) has no VNNI or AMX: oneDNN's 8-bit kernels would saturate on it (as ONNX Runtime's "
            "do) for INT8 layers whose weights use more than 7 bits (an engine built on another CPU, or a "
            "Q/DQ model's weights), so those compute in float32 on the same 8-bit operands: right results, "
            "without INT8's speed-up. An INT8 build calibrated on this CPU quantizes weights to 7 bits and "
            "runs at INT8 speed", cpu_features().name)


def _residual_added(y: torch.Tensor, residual: torch.Tensor, res_p: Optional[QuantParams],
                    out: Optional[QuantParams]) -> torch.Tensor:
    """``y`` + the residual, in place. An 8-bit residual counts as ``res_p`` stores it; a float32
    one added to an 8-bit output is first stored that way too, as ``_qconv``'s 8-bit sum does."""
    if residual.dtype == torch.float32 and out is not None and res_p is not None:
        residual = quantize(residual, res_p)
    return y.add_(residual if residual.dtype == torch.float32 else dequantize(residual, res_p))


def _qconv_exact(node: Node, ctx: CompileContext, w: torch.Tensor, bias: Optional[torch.Tensor]) -> Kernel:
    """``_qconv``'s result without oneDNN's 8-bit kernels (see above)."""
    from ember.backends.cpu.kernels.conv_mkldnn import pointwise_available

    _say_exact()
    a: QConvAttrs = node.attrs
    xp, res_p, x_dtype = a.x, a.residual, torch_dtype(a.x.dtype)
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    qw = quantize_weight(w.to(torch.float32), w_scales, 0)
    scales = (xp.scale * w_scales.double()).reshape((-1,) + (1,) * (qw.dim() - 1))
    w_eff = (qw.double() * scales).to(torch.float32).contiguous()  # the dequantized weight
    bias, zp = _zero_point_folded(a, qw, w_scales, bias)  # zp: subtracted from the input below
    nchw = planned_format(ctx, node.outputs[0]) is NCHW
    finish = _epilogue(a.activation, tuple(a.act_params), a.out)
    prepacked = qw.dim() == 4 and pointwise_available()
    cl = torch.channels_last if qw.dim() == 4 else torch.contiguous_format
    if prepacked:
        pads = ConvPadder(a.conv, tuple(w.shape))
        padding, strides, dilations, in_size = reorder_params(a.conv, tuple(w.shape), _static_input(node, ctx), pads)
        packed = torch.ops.mkldnn._reorder_convolution_weight(w_eff, padding, strides, dilations, a.conv.group,
                                                              in_size)
        conv_pw, group = torch.ops.mkldnn._convolution_pointwise, a.conv.group

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        q = x if x.dtype == x_dtype else quantize(x.contiguous(), xp)
        v = q.to(torch.float32)
        if zp:
            v = v.sub_(zp)  # padding then reads 0: the zero point, as ONNX pads
        if prepacked:
            pad, stride, dil, explicit = pads(tuple(v.shape))
            if explicit is not None:
                v = F.pad(v, explicit)
            y = conv_pw(v.contiguous(memory_format=cl), packed, bias, pad, stride, dil, group, "none", [], "")
        else:
            y = conv_forward(v, w_eff, bias, a.conv)
        if a.has_residual:
            y = _residual_added(y, inputs[3], res_p, a.out)
        y = finish(y)  # the activation, then the output quantization
        return [y.contiguous() if nchw else y.contiguous(memory_format=cl)]

    return run


def _qgemm_exact(node: Node, ctx: CompileContext, w: torch.Tensor, c: Optional[torch.Tensor]) -> Kernel:
    """``_qgemm``'s result without oneDNN's 8-bit kernels (see above)."""
    _say_exact()
    a: QGemmAttrs = node.attrs
    w_nk, inv = _gemm_weight(a, w)
    w_scales = torch.tensor(a.w_scales, dtype=torch.float64)
    qw = quantize_weight(w_nk, w_scales, 0).to(torch.float64)
    w_kn = (qw * (a.x.scale * w_scales)[:, None]).t()  # [K, N], dequantized
    bias = -a.x.zero_point * w_kn.sum(dim=0)  # the zero point folded in: sum (q - zp) w
    if c is not None:
        bias += c.reshape(-1).to(torch.float64) * a.gemm.beta
    bias, w_kn = bias.to(torch.float32), w_kn.to(torch.float32).contiguous()
    xp, finish = a.x, _epilogue(a.activation, tuple(a.act_params), a.out)

    def run(inputs: Inputs) -> list:
        v = gemm_input(inputs[0], xp, inv, node.name).to(torch.float32)
        y = torch.addmm(bias, v.reshape(-1, v.shape[-1]), w_kn).reshape(*v.shape[:-1], w_kn.shape[1])
        return [finish(y)]

    return run


__all__ = ["dequantize", "int8_available", "quantize", "quantize_weight", "saturates"]
