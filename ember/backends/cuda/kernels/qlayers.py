"""INT8 layers on CUDA: QConv and QGemm on Ember's Triton INT8 implicit-GEMM kernel
(``ember.backends.cuda.libs.triton_qconv``), one tactic per tile configuration,
``triton_int8_<BMxBNxBK>``; QConv also on cuDNN's INT8 convolution engines (``cudnn_int8``,
through the cuDNN frontend: on the H100, 2x cuDNN fp16 on ResNet-50's 14x14 and 7x7 layers, and
slower than the Triton kernel on its 56x56 ones, so the tactic timer picks per layer).

The layers are the plan's (``QConvAttrs`` / ``QGemmAttrs``, made by ``ember.passes.int8`` from
calibration or a Q/DQ model), computed as the CPU's oneDNN INT8 layers compute them: the weight is
quantized once here with the layer's per-output-channel scales; 8-bit activations arrive int8 with
their zero point (``ember.passes.int8.signed``: the tensor cores take them as loaded), or float
(fp16 from a half-precision neighbour, fp32 from an input), quantized to int8 once by a small
kernel before the layer's (``quantize_int8``); bias, residual (float, or 8-bit with its own scale),
activation and the requantization to the output's scale are the kernel's epilogue, so activations
stay 8-bit between INT8 layers. A float output is half precision (the CUDA INT8 build's float
layers run fp16; ``compute_dtype("int8")``); a convolution's output is in the layout plan's format
(channels-last unless the plan says NCHW: the kernel writes through any strides).

What it takes: 2-D ungrouped convolutions (on CUDA the INT8 pass leaves grouped and other
convolutions in half precision) and GEMMs ``[.., K] @ [K, N]``. Needs Triton: without it a CUDA
build refuses INT8 (``ember.builder.int8``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import arg
from ember.backends.cuda.device import compute_dtype
from ember.backends.cuda.kernels.conv import clip_bounds
from ember.backends.cuda.kernels.conv_triton import ConvPads, conv_kernel
from ember.backends.cuda.libs import cudnn_graph
from ember.backends.cuda.libs.triton_conv import TileConfig
from ember.backends.cuda.libs.triton_qconv import CONFIGS
from ember.backends.cuda.registry import DEQUANTIZED, register_cuda_kernel
from ember.backends.layout import planned_format
from ember.errors import BuildError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, QConvAttrs, QGemmAttrs, QuantParams

TACTIC_PREFIX = "triton_int8_"


_STORAGE = {DType.UINT8: torch.uint8, DType.INT8: torch.int8}


def _prequantize(x: torch.Tensor, p: QuantParams, inv: float | torch.Tensor) -> torch.Tensor:
    """A float input of an int8-stored ``p`` quantized once, before the layer's kernel (channels
    last for a 4-D input: the channel is the packed dim ``quantize_int8`` walks)."""
    from ember.backends.cuda.libs import triton_qconv as Q

    if x.dim() == 4:
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        return Q.quantize_int8(nhwc, inv, p.zero_point).permute(0, 3, 1, 2)
    return Q.quantize_int8(x, inv, p.zero_point)


def _float_bias(ctx: CompileContext, name: str, scale: float = 1.0) -> Optional[torch.Tensor]:
    b = ctx.const(name)
    return None if b is None else (b.detach().reshape(-1).to(torch.float32) * scale).contiguous()


def _qconv_factory(config: TileConfig):
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        from ember.backends.cuda.libs import triton_qconv as Q

        a = node.attrs
        if not isinstance(a, QConvAttrs) or len(a.conv.kernel_shape) != 2 or a.conv.group != 1:
            raise BuildError(f"INT8 layer {node.name!r}: the CUDA INT8 convolution does 2-D ungrouped "
                             f"convolutions only")
        w = ctx.const(node.inputs[1])
        if w is None or w.dim() != 4:
            raise BuildError(f"INT8 layer {node.name!r} needs a constant 4-D weight (input "
                             f"{node.inputs[1]!r})")
        x_signed = a.x.dtype is DType.INT8
        packed = Q.pack_weight(w.to(torch.float32), a.w_scales, a.x.scale, a.x.zero_point, ctx.device, x_signed)
        bias = _float_bias(ctx, node.input(2))
        out = a.out
        res = a.residual
        io = Q.QuantIO(a.x.zero_point, 1.0 / a.x.scale, None if out is None else out.scale,
                       0 if out is None else out.zero_point, 1.0 if res is None else res.scale,
                       0 if res is None else res.zero_point, out is not None and out.dtype is DType.INT8)
        stride = tuple(int(s) for s in (a.conv.strides or (1, 1)))
        dilation = tuple(int(d) for d in (a.conv.dilations or (1, 1)))
        pads = ConvPads(a.conv, stride, dilation)
        float_dtype = compute_dtype(ctx.precision)
        fmt = planned_format(ctx, node.outputs[0]) or torch.channels_last  # the kernel writes any strides
        act, params, has_res = a.activation, tuple(a.act_params), a.has_residual

        def out_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
            n, _, h, wd = x.shape
            oh, ow = Q.output_hw(h, wd, (packed.kh, packed.kw), stride, pads(h, wd), dilation)
            return (n, packed.cout, oh, ow)

        def compute(inputs, dest: Optional[torch.Tensor]) -> torch.Tensor:
            x = inputs[0]
            if x_signed and x.is_floating_point():
                x = _prequantize(x, a.x, 1.0 / a.x.scale)
            r = arg(inputs, 3) if has_res else None
            if r is not None and not r.is_floating_point() and res is None:
                raise BuildError(f"INT8 layer {node.name!r} got an 8-bit residual without its scale")
            return Q.conv2d(x, packed, bias, r, io, stride=stride, pads=pads(x.shape[2], x.shape[3]),
                            dilation=dilation, act=act, act_params=params, config=config, out=dest,
                            out_dtype=float_dtype)

        def run(inputs) -> list:
            x = inputs[0]
            dest = torch.empty(out_shape(x), dtype=_STORAGE[out.dtype] if out is not None else float_dtype,
                               device=x.device, memory_format=fmt)
            return [compute(inputs, dest)]

        def accepts(dest: torch.Tensor) -> bool:
            return dest.dim() == 4 and (dest.dtype == _STORAGE[out.dtype] if out is not None
                                        else dest.is_floating_point())

        return conv_kernel(run, compute, accepts, out_shape)

    factory.__name__ = f"qconv_triton_{config.name}"
    factory.__doc__ = f"Triton INT8 implicit-GEMM convolution, {config.name} tiles, fused epilogue."
    return factory


def _qgemm_factory(config: TileConfig):
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        from ember.backends.cuda.libs import triton_qconv as Q

        a = node.attrs
        if not isinstance(a, QGemmAttrs) or a.gemm.trans_a or a.gemm.alpha != 1.0:
            raise BuildError(f"INT8 layer {node.name!r}: the CUDA INT8 GEMM takes op(a) = a and alpha 1")
        w = ctx.const(node.inputs[1])
        if w is None or w.dim() != 2:
            raise BuildError(f"INT8 layer {node.name!r} needs a constant 2-D weight (input {node.inputs[1]!r})")
        x_signed = a.x.dtype is DType.INT8
        w_kn = (w.t() if a.gemm.trans_b else w).to(torch.float32)
        inv: float | torch.Tensor = 1.0 / a.x.scale
        if a.smooth:  # x @ w == (x / s) @ (s * w): the input quantized with 1 / (s * x_scale)
            s = torch.tensor(a.smooth, dtype=torch.float64, device=w_kn.device)
            w_kn = (w_kn.double() * s[:, None]).to(torch.float32)
            inv = (1.0 / (s * a.x.scale)).to(torch.float32).to(ctx.device)
        packed = Q.pack_gemm_weight(w_kn, a.w_scales, a.x.scale, a.x.zero_point, ctx.device, x_signed)
        bias = _float_bias(ctx, node.input(2), a.gemm.beta)
        out = a.out
        io = Q.QuantIO(a.x.zero_point, inv, None if out is None else out.scale,
                       0 if out is None else out.zero_point, out_signed=out is not None and out.dtype is DType.INT8)
        float_dtype = compute_dtype(ctx.precision)
        act, params = a.activation, tuple(a.act_params)

        def compute(inputs, dest: Optional[torch.Tensor]) -> torch.Tensor:
            x = inputs[0]
            if x_signed and x.is_floating_point():  # quantized once (smoothing folded in)
                x = _prequantize(x, a.x, inv)
                return Q.gemm(x, packed, bias, replace(io, x_inv=1.0), act=act, act_params=params, config=config,
                              out=dest, out_dtype=float_dtype)
            return Q.gemm(x, packed, bias, io, act=act, act_params=params, config=config, out=dest,
                          out_dtype=float_dtype)

        def run(inputs) -> list:
            return [compute(inputs, None)]

        def accepts(dest: torch.Tensor) -> bool:
            return dest.is_contiguous() and (dest.dtype == _STORAGE[out.dtype] if out is not None
                                             else dest.is_floating_point())

        def write(inputs, dest: torch.Tensor) -> bool:
            x = inputs[0]
            if not accepts(dest) or x is None or tuple(dest.shape) != (*x.shape[:-1], packed.cout):
                return False
            compute(inputs, dest)
            return True

        return with_write_into(run, WriteInto(write, accepts))

    factory.__name__ = f"qgemm_triton_{config.name}"
    factory.__doc__ = f"Triton INT8 GEMM, {config.name} tiles, fused epilogue."
    return factory


#: tactic name -> kernel factory, per op (registered below; tests call a factory directly, e.g.
#: under ``TRITON_INTERPRET=1`` where the registry offers no Triton)
FACTORIES: dict[OpType, dict[str, Callable[[Node, CompileContext], Kernel]]] = {
    OpType.QCONV: {TACTIC_PREFIX + cfg.name: _qconv_factory(cfg) for cfg in CONFIGS},
    OpType.QGEMM: {TACTIC_PREFIX + cfg.name: _qgemm_factory(cfg) for cfg in CONFIGS},
}

for _op, _table in FACTORIES.items():
    for _rank, (_name, _f) in enumerate(_table.items()):
        register_cuda_kernel(_op, _name, rank=_rank, needs_triton=True)(_f)


# ---- cuDNN's INT8 convolution ----------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Epilogue:
    """The float epilogue of an INT8 convolution on an int32 accumulator, in the output's units:
    ``t = acc * scale + bias`` (both ``[1, K, 1, 1]``), then ``act`` with ``clip`` bounds; an 8-bit
    output is ``t`` rounded and saturated. Zero points are folded into the bias: the output's, and
    the input's as ``-zp_x * scale * sum(w_k)`` (the convolution is unpadded, or its input has no
    zero point: the tactic writes a zero-pointed input's border itself)."""

    scale: torch.Tensor
    bias: torch.Tensor
    act: str
    clip: tuple[Optional[float], Optional[float]]


def int8_epilogue(wq: torch.Tensor, a: QConvAttrs, bias: Optional[torch.Tensor]) -> Int8Epilogue:
    """The epilogue constants of QConv ``a`` (no residual) with int8 weight ``wq`` ``[K, C, KH, KW]``
    and float ``bias`` ``[K]`` (float32, on ``wq``'s device)."""
    if a.has_residual:
        raise BuildError("the cuDNN INT8 convolution takes no residual yet")
    k = int(wq.shape[0])
    dev = wq.device
    so, zo = (a.out.scale, a.out.zero_point) if a.out is not None else (1.0, 0)
    mult = torch.tensor(a.w_scales, dtype=torch.float64, device=dev) * (a.x.scale / so)
    const = (bias.to(device=dev, dtype=torch.float64) if bias is not None
             else torch.zeros(k, dtype=torch.float64, device=dev)) / so + zo
    if a.x.zero_point:
        const = const - a.x.zero_point * mult * wq.to(torch.float64).sum(dim=(1, 2, 3))
    act, clip = "none", (None, None)
    if a.activation is Activation.RELU:
        act, clip = "relu", ((float(zo), None) if zo else (None, None))
    elif a.activation is Activation.CLIP:
        lo, hi = clip_bounds(tuple(a.act_params))
        act, clip = "clip", (None if lo is None else lo / so + zo, None if hi is None else hi / so + zo)
    elif a.activation is not Activation.NONE:
        raise BuildError(f"the cuDNN INT8 convolution fuses no {a.activation.value} activation")
    cl = torch.channels_last
    return Int8Epilogue(mult.to(torch.float32).view(1, k, 1, 1).contiguous(memory_format=cl),
                        const.to(torch.float32).view(1, k, 1, 1).contiguous(memory_format=cl), act, clip)


def int8_epilogue_reference(x: torch.Tensor, wq: torch.Tensor, ep: Int8Epilogue, padding: tuple[int, int],
                            stride: tuple[int, int], dilation: tuple[int, int], out_dtype: torch.dtype) -> torch.Tensor:
    """What the cuDNN graph of ``ep`` computes, in float32 (exact products of 8-bit values): the
    check a cuDNN plan's result must pass, and the CPU tests' model of the graph."""
    import torch.nn.functional as F

    t = F.conv2d(x.float(), wq.float(), None, stride, padding, dilation) * ep.scale + ep.bias
    lo, hi = ep.clip
    if ep.act == "relu" and lo is None:
        lo = 0.0
    if ep.act != "none" and (lo is not None or hi is not None):
        t = t.clamp(lo, hi)
    if out_dtype == torch.int8:
        return torch.round(t).clamp_(-128, 127)
    return t


def _cudnn_int8_applies(node: Node, graph, records=None) -> bool:
    """A 2-D ungrouped QConv on int8-stored activations with ReLU / Clip / no activation, and no
    residual: the graphs verified on the H100 take per-channel scale and bias operands only (a
    whole-map bias broadcast over the batch gave cuDNN a misaligned address, which no process
    survives), and a graph with the residual's scale has not run on a GPU yet."""
    a = node.attrs
    return (isinstance(a, QConvAttrs) and len(a.conv.kernel_shape) == 2 and a.conv.group == 1
            and not a.has_residual and a.x.dtype is DType.INT8 and (a.out is None or a.out.dtype is DType.INT8)
            and a.activation in (Activation.NONE, Activation.RELU, Activation.CLIP) and cudnn_graph.available())


@register_cuda_kernel(OpType.QCONV, "cudnn_int8", rank=20, when=_cudnn_int8_applies)
def qconv_cudnn_int8(node: Node, ctx: CompileContext) -> Kernel:
    """QConv on cuDNN's INT8 convolution engines: int8 channels-last input and weight, int32
    accumulation, the epilogue (``int8_epilogue``: per-channel scale and bias) fused, int8 or half
    output written anywhere cuDNN can describe (the arena, a Concat's slice). A padded
    convolution whose input has a zero point gets its border written (the zero point, a real 0:
    one pass over the 8-bit input) and runs unpadded, so the zero point folds into the bias."""
    import torch.nn.functional as F

    from ember.backends.cpu.kernels.qlayers import quantize_weight
    from ember.backends.cuda.libs.triton_conv import output_hw

    a = node.attrs
    w = ctx.const(node.inputs[1])
    if not isinstance(a, QConvAttrs) or w is None or w.dim() != 4 or a.conv.group != 1:
        raise BuildError(f"INT8 layer {node.name!r}: the cuDNN INT8 convolution takes a 2-D ungrouped "
                         f"convolution with a constant 4-D weight")
    if a.has_residual:
        raise BuildError(f"INT8 layer {node.name!r}: the cuDNN INT8 convolution takes no residual yet; "
                         f"the Triton INT8 tactics run this layer")
    cl = torch.channels_last
    wq = quantize_weight(w.detach().to(torch.float32).cpu(), torch.tensor(a.w_scales, dtype=torch.float64), 0)
    extra = -int(wq.shape[1]) % 4  # cuDNN's INT8 convolutions read channels in fours: zero weights for the padding
    if extra:
        wq = F.pad(wq.to(torch.int32), (0, 0, 0, 0, 0, extra)).to(torch.int8)
    wq = wq.to(ctx.device).contiguous(memory_format=cl)
    ep = int8_epilogue(wq, a, _float_bias(ctx, node.input(2)))
    stride = tuple(int(s) for s in (a.conv.strides or (1, 1)))
    dilation = tuple(int(d) for d in (a.conv.dilations or (1, 1)))
    pads = ConvPads(a.conv, stride, dilation)
    out_dtype = torch.int8 if a.out is not None else compute_dtype(ctx.precision)
    fmt = planned_format(ctx, node.outputs[0]) or cl

    def out_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
        n, _, h, wd = x.shape
        return (n, int(wq.shape[0]), *output_hw(h, wd, wq.shape[2:], stride, pads(h, wd), dilation))

    def compute(inputs, dest: torch.Tensor) -> None:
        x = inputs[0]
        t, left, b, r = pads(int(x.shape[2]), int(x.shape[3]))
        if extra:  # the padded channels meet zero weights: any value does
            x = F.pad(x.permute(0, 2, 3, 1), (0, extra)).permute(0, 3, 1, 2)
        if x.is_floating_point():
            x = _prequantize(x, a.x, 1.0 / a.x.scale)
        if a.x.zero_point and (t or left or b or r):
            # the border holds the zero point (a real 0) in memory, so the epilogue stays per channel
            x = F.pad(x.permute(0, 2, 3, 1), (0, 0, left, r, t, b), value=a.x.zero_point).permute(0, 3, 1, 2)
            t = left = b = r = 0
        elif t != b or left != r:
            raise BuildError(f"INT8 layer {node.name!r}: the cuDNN INT8 convolution takes symmetric pads, "
                             f"not {(t, left, b, r)}; the Triton INT8 tactics run this layer")
        if not x.is_contiguous(memory_format=cl):
            x = x.contiguous(memory_format=cl)
        padding = (t, left)

        def check(out: torch.Tensor) -> torch.Tensor:
            return int8_epilogue_reference(x, wq, ep, padding, stride, dilation, out.dtype)

        try:
            graph = cudnn_graph.qconv_graph(x, wq, ep.scale, ep.bias, dest, list(padding), list(stride),
                                            list(dilation), ep.act, ep.clip, check=check)
        except BuildError as e:
            raise BuildError(f"INT8 layer {node.name!r} (cudnn_int8 tactic): {e}; rebuild the engine on this "
                             f"machine so the builder picks a tactic that runs here") from e
        graph.run({"x": x, "w": wq, "scale": ep.scale, "bias": ep.bias, "out": dest})

    def accepts(dest: torch.Tensor) -> bool:
        return dest.dim() == 4 and dest.dtype == out_dtype and dest.stride()[1] == 1

    def run(inputs) -> list:  # cuDNN writes channels-last; another planned format is a reorder after
        dest = torch.empty(out_shape(inputs[0]), dtype=out_dtype, device=inputs[0].device, memory_format=cl)
        compute(inputs, dest)
        return [dest if fmt is cl else dest.contiguous(memory_format=fmt)]

    return conv_kernel(run, compute, accepts, out_shape)


# ---- the fallback where Triton cannot run ---------------------------------------------------------
def _to_float(t: torch.Tensor, p: Optional[QuantParams]) -> torch.Tensor:
    """An operand as float32: an 8-bit one dequantized with ``p``."""
    from ember.backends.cpu.kernels.qlayers import dequantize

    return t.to(torch.float32) if t.is_floating_point() or p is None else dequantize(t, p)


def _finish(y: torch.Tensor, p: Optional[QuantParams], float_dtype: torch.dtype) -> torch.Tensor:
    """The layer's output: quantized as ``p`` stores it (the CPU layers' rounding), or float."""
    from ember.backends.cpu.kernels.qlayers import quantize

    return y.to(float_dtype) if p is None else quantize(y, p)


@register_cuda_kernel(OpType.QCONV, DEQUANTIZED, rank=100)
def qconv_dequantized(node: Node, ctx: CompileContext) -> Kernel:
    """QConv as float32 arithmetic on the dequantized operands (the weight rounded to its int8
    grid once), for where Ember's Triton INT8 kernel cannot run (no Triton, or TensorFlow in the
    process): the same numbers as the INT8 kernel up to float rounding, at float speed."""
    import torch.nn.functional as F

    from ember.backends.activations import activation_fn
    from ember.backends.cpu.kernels.qlayers import dequantize, quantize, quantize_weight

    a = node.attrs
    w = ctx.const(node.inputs[1])
    if not isinstance(a, QConvAttrs) or w is None:
        raise BuildError(f"INT8 layer {node.name!r} needs QConv attributes and a constant weight")
    scales = torch.tensor(a.w_scales, dtype=torch.float64)
    wq = (quantize_weight(w.detach().cpu().to(torch.float32), scales, 0).double()
          * scales.view(-1, 1, 1, 1)).to(torch.float32).to(ctx.device)
    bias = _float_bias(ctx, node.input(2))
    stride = tuple(int(s) for s in (a.conv.strides or (1, 1)))
    dilation = tuple(int(d) for d in (a.conv.dilations or (1, 1)))
    pads = ConvPads(a.conv, stride, dilation)
    act = activation_fn(a.activation, tuple(a.act_params))
    float_dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = inputs[0]
        xf = dequantize(quantize(x.to(torch.float32), a.x) if x.is_floating_point() else x, a.x)
        t, left, b, r = pads(x.shape[2], x.shape[3])
        y = F.conv2d(F.pad(xf, (left, r, t, b)), wq, bias, stride, 0, dilation, a.conv.group)
        if a.has_residual:
            res = inputs[3]
            y = y + _to_float(res, a.residual)
        if act is not None:
            y = act(y)
        return [_finish(y, a.out, float_dtype).contiguous(memory_format=torch.channels_last)]

    return run


@register_cuda_kernel(OpType.QGEMM, DEQUANTIZED, rank=100)
def qgemm_dequantized(node: Node, ctx: CompileContext) -> Kernel:
    """QGemm as float32 arithmetic on the dequantized operands (see ``qconv_dequantized``)."""
    from ember.backends.activations import activation_fn
    from ember.backends.cpu.kernels.qlayers import dequantize, quantize, quantize_weight

    a = node.attrs
    w = ctx.const(node.inputs[1])
    if not isinstance(a, QGemmAttrs) or w is None or a.gemm.trans_a:
        raise BuildError(f"INT8 layer {node.name!r} needs QGemm attributes, op(a) = a and a constant weight")
    w_kn = (w.t() if a.gemm.trans_b else w).detach().cpu().to(torch.float64)
    s = torch.tensor(a.smooth, dtype=torch.float64) if a.smooth else torch.ones(w_kn.shape[0], dtype=torch.float64)
    scales = torch.tensor(a.w_scales, dtype=torch.float64)
    wq = (quantize_weight((w_kn * s[:, None]).to(torch.float32), scales, 1).double() * scales[None, :])
    wq = wq.to(torch.float32).to(ctx.device)
    inv = (1.0 / (s * a.x.scale)).to(torch.float32).to(ctx.device)
    bias = _float_bias(ctx, node.input(2), a.gemm.beta)
    act = activation_fn(a.activation, tuple(a.act_params))
    float_dtype = compute_dtype(ctx.precision)

    def run(inputs) -> list:
        x = inputs[0]
        y = dequantize(quantize(x.to(torch.float32), a.x, inv=inv) if x.is_floating_point() else x, a.x) @ wq
        if bias is not None:
            y = y + bias
        if act is not None:
            y = act(y)
        return [_finish(y, a.out, float_dtype)]

    return run
