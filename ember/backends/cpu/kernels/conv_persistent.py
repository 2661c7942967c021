"""Convolutions on persistent oneDNN primitives: the CPU tactic ``onednn_persistent`` (issue 19).

PyTorch's ``mkldnn._convolution_pointwise`` (the ``mkldnn_prepacked`` tactic) rebuilds memory
descriptors, the post-op attribute and a primitive descriptor on every call: 36-70 us of CPU per
convolution on the 2-core Xeon measured, 2.5-3.3 ms of a batch-1 MobileNetV2 run
(bench/probes/onednn_persistent). This tactic runs Ember's compiled extension
(``ember.backends.cpu.native``): each layer's weight is reordered once (per weight layout a
primitive asks for, shared by all input shapes), its primitive is made once per input shape (at
compile time for a static shape; for a dynamic one at the first run of each shape, kept on the
kernel, at most ``MAX_SHAPES``), and a call only binds the tensors and executes.

What it covers: ``Conv`` / ``FusedConv`` in float32 with a constant 4-D weight (and bias):
groups and depthwise, strides, dilations, asymmetric pads and ``auto_pad`` (oneDNN takes
begin / end pads), a residual (oneDNN's binary-add post-op, then the activation), any activation.
ReLU, Clip, LeakyRelu, HardSigmoid, HardSwish, Sigmoid, SiLU and Tanh (``native.eltwise``) are
fused as oneDNN eltwise post-ops only in runs whose inputs are all finite
(``ember.backends.cpu.half.inputs_finite``) and where nothing upstream can make a finite value
non-finite (``finite_safe``), because oneDNN's relu / clip turn NaN into 0 where ONNX keeps it
(issue 17); other runs, and other activations, apply the activation after the call, in place.
Fused, they also let the layer join a chain (MobileNetV3's HardSwish and squeeze-excite
HardSigmoid layers, EfficientNet's SiLU and Sigmoid ones).
Activations are computed channels-last; where the layout plan stores the output NCHW it is
reordered after the call, as ``mkldnn_prepacked`` does. Concat elimination: the same
``gemm_write_into`` as the other tactics (off by default).

Re-entrant: the kernel is shared by every execution context; the primitives hold no per-call
state (the extension makes memory handles per call and keeps one scratchpad per thread), and the
shape cache is filled under a lock.

The tactic is a candidate only where the extension is available (``native.extension()``: the
library, a compiler and ninja present, built once per machine and cached) and
``EMBER_ONEDNN_PERSISTENT`` is not ``0``; otherwise ``mkldnn_prepacked`` is the default, as before.
Its rank (5, before ``mkldnn_prepacked``'s 10) comes from the measurements in docs/CPU_NATIVE.md.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

import torch

from ember.backends.activations import activation_after
from ember.backends.base import CompileContext, Kernel, with_write_into
from ember.backends.cpu import native
from ember.backends.cpu.chains import ChainLink
from ember.backends.cpu.half import (
    finite_safe,
    inputs_finite,
    layer_dtype,
    owns_constants,
    storage_dtype,
)
from ember.backends.cpu.kernels import qlayers
from ember.backends.cpu.kernels.common import Inputs, const_input
from ember.backends.cpu.kernels.conv import conv_forward, conv_geometry
from ember.backends.cpu.kernels.conv_mkldnn import gemm_write_into
from ember.backends.cpu.kernels.qlayers import (
    dequantize,
    qconv,
    quantize,
    quantize_constants,
    quantize_weight,
    saturates,
)
from ember.backends.cpu.registry import register_kernel
from ember.backends.layout import NCHW, planned_format
from ember.backends.tensors import torch_dtype
from ember.errors import BuildError, EmberError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    Activation,
    AutoPad,
    ConvAttrs,
    FusedConvAttrs,
    QConvAttrs,
    QuantParams,
)
from ember.plan.config import Precision
from ember.plan.records import Records

TACTIC = "onednn_persistent"
#: Input shapes a dynamic-shape kernel keeps primitives for (the oldest is dropped past it).
MAX_SHAPES = 32
CL = torch.channels_last


def available() -> bool:
    """Whether the extension is usable here and the tactic is switched on (builds it on first call)."""
    return native.enabled() and native.extension() is not None


def _parts(node: Node) -> tuple[ConvAttrs, Activation, tuple[float, ...], bool]:
    a = node.attrs
    if isinstance(a, FusedConvAttrs):
        return a.conv, a.activation, tuple(a.act_params), a.has_residual
    return a, Activation.NONE, (), False


def persistent_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """float32 2-D convolutions with a constant 4-D float32 weight (and constant bias), in an fp32
    or a bf16 layer (not fp16: ``mkldnn_prepacked`` keeps those); the registry asks
    ``available()`` separately."""
    if graph is None or node.attrs is None or not const_input(node, graph, 1):
        return False
    if node.input(2) and not const_input(node, graph, 2):
        return False
    precision = records.precision.layers.get(node.name) if records is not None else None
    if precision is not None and precision.is_half and precision is not Precision.BF16:
        return False
    w = graph.constants[node.input(1)]
    t = graph.types.get(node.input(0))
    return not (w.ndim != 4 or str(w.dtype) != "float32" or (t is not None and t.dtype is not DType.FLOAT32))


@register_kernel(OpType.CONV, tactic=TACTIC, rank=5, when=persistent_applies, available=available)
@register_kernel(OpType.FUSED_CONV, tactic=TACTIC, rank=5, when=persistent_applies, available=available)
def conv_persistent(node: Node, ctx: CompileContext) -> Kernel:
    """Conv / FusedConv on persistent oneDNN primitives (see the module docstring)."""
    ext = native.extension()
    if ext is None:
        raise BuildError(f"node {node.name!r}: CPU tactic {TACTIC!r} needs Ember's oneDNN extension, which is "
                         f"unavailable here ({native.unavailable_reason()}); rebuild the engine on this machine "
                         f"to use mkldnn_prepacked instead")
    a, act, params, residual = _parts(node)
    w = ctx.const(node.input(1)).to(torch.float32).contiguous()
    b = ctx.const(node.input(2))
    kind, lo, hi = native.eltwise(act, params)
    dtype = layer_dtype(ctx)  # the activations' type: float32, or bfloat16 in a bf16 layer
    out_dtype = _output_dtype(node, ctx)
    layer = ext.Layer(w, None if b is None else b.reshape(-1).to(torch.float32).contiguous(),
                      [int(s) for s in a.strides] if a.strides else [1, 1],
                      [int(d) for d in a.dilations] if a.dilations else [1, 1],
                      int(a.group), activation=kind, alpha=lo, beta=hi, residual=residual,
                      src_dtype=native.dtype_name(dtype), dst_dtype=native.dtype_name(out_dtype))
    shapes = _ShapeCache(layer, a, tuple(w.shape))
    t, static = _static_input(node, ctx, shapes)
    after = activation_after(act, params)
    fusable = kind != "none" and ctx.graph is not None and finite_safe(node, ctx.graph)
    to_nchw = planned_format(ctx, node.outputs[0]) is NCHW
    bias = b

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        # nothing for oneDNN to do (or a clear shape error); and a bf16 layer on a run with NaN or
        # infinity in its inputs: oneDNN's AMX kernels spread a NaN to outputs whose windows do not
        # hold it (their tiles multiply padding by it), so that run computes in float32
        if x.dim() != 4 or x.numel() == 0 or (dtype != torch.float32 and not inputs_finite()):
            y = conv_forward(x.to(torch.float32), w, bias, a)
            if residual:
                y = y + inputs[3]
            y = (after(y) if after is not None else y).to(out_dtype)
            return [y.contiguous() if to_nchw or y.dim() != 4 else y.contiguous(memory_format=CL)]
        if x.dtype != dtype:
            x = x.to(dtype)
        if not x.is_contiguous(memory_format=CL):
            x = x.contiguous(memory_format=CL)
        conv, out_shape = shapes.get(x.shape)
        out = torch.empty(out_shape, dtype=out_dtype, memory_format=CL)
        fused = fusable and inputs_finite()
        if residual:
            r = inputs[3]
            if r.dtype != dtype:
                r = r.to(dtype)
            if r.shape != out.shape:  # a broadcast residual: oneDNN's post-op reads a full tensor
                conv.run(x, out, torch.zeros(out_shape, dtype=dtype, memory_format=CL), False)
                out.add_(r)
                fused = False
            else:
                conv.run(x, out, r if r.is_contiguous(memory_format=CL) else r.contiguous(memory_format=CL), fused)
        else:
            conv.run(x, out, None, fused)
        if not fused and after is not None:
            out = after(out)
        return [out.contiguous() if to_nchw else out]

    kernel = with_write_into(run, gemm_write_into(node, ctx))
    link = _chain_link(node, ctx, shapes, t, static, residual, fusable, after is not None, to_nchw, out_dtype)
    if link is not None:
        kernel.chain_link = link  # type: ignore[attr-defined]
    return kernel


def _output_dtype(node: Node, ctx: CompileContext) -> torch.dtype:
    """What a layer's output is stored as: float32, or bfloat16 for a bf16 layer's output that is
    not a graph output (``half.storage_dtype``)."""
    precision = Precision(ctx.precision)
    if precision is not Precision.BF16 or ctx.graph is None:
        return torch.float32
    return torch_dtype(storage_dtype(ctx.graph, {node.name: precision}, node.name, node.outputs[0]))


def _static_input(node: Node, ctx: CompileContext, shapes: _ShapeCache) -> tuple[Any, Optional[tuple[Any, Any]]]:
    """The input's planned type and, where it is a static 4-D shape, the layer's primitive for it
    (made now, at compile time) and its output shape."""
    t = ctx.graph.types.get(node.input(0)) if ctx.graph is not None else None
    if t is None or len(t.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in t.shape):
        return t, None
    return t, shapes.get(tuple(int(d) for d in t.shape))


def _residual_type(node: Node, ctx: CompileContext, out_shape: Any) -> Any:
    """The planned type of the residual (input 3) where it has the output's static shape, else None."""
    r = ctx.graph.types.get(node.input(3)) if ctx.graph is not None else None
    return r if r is not None and tuple(r.shape) == tuple(out_shape) else None


def _chain_link(node: Node, ctx: CompileContext, shapes: _ShapeCache, t: Any, static: Optional[tuple[Any, Any]],
                residual: bool, fusable: bool, has_after: bool, to_nchw: bool,
                out_dtype: torch.dtype) -> Optional[ChainLink]:
    """How the program may run this layer inside a chain of persistent convolutions (one C++ call
    for many layers, ``ember.backends.cpu.chains``): where its input is a static float 4-D
    tensor (stored float32, or bfloat16 in a bf16 layer), its output stays channels-last, a
    residual has the output's shape, and its activation is fused in finite runs (or it has none)."""
    if static is None or to_nchw or t.dtype is not DType.FLOAT32 or (has_after and not fusable):
        return None
    layer, a, w_shape = shapes.layer, shapes.a, shapes.w_shape
    conv, out_shape = static
    if residual:
        r = _residual_type(node, ctx, out_shape)
        if r is None or r.dtype is not DType.FLOAT32:
            return None
    shape = [int(d) for d in t.shape]
    geo = conv_geometry(a, tuple(shape), w_shape)

    def relayout(src_layout: str, dst_layout: str) -> Any:
        """The layer's primitive for its static input with these activation layouts: channels-last
        the one the layer runs alone too (from the shape cache), another (a blocked chain's) made now."""
        if src_layout == dst_layout == "nhwc":
            return shapes.get(tuple(shape))[0]
        return layer.prepare(shape, list(geo.begins), list(geo.ends), src_layout, dst_layout)

    def release(kept: str) -> None:
        """After the program chose layout ``kept`` for this layer's chain ("dw": the layer runs in a
        depthwise pair, ``chains.with_dw_pairs``): drops the weight copies only the other layout's
        primitives used (and, for a blocked chain or a pair, the channels-last primitives, which a
        run of the layer alone makes again)."""
        if kept != "nhwc":
            shapes.clear()
        layer.release_unused()

    pads = tuple(geo.begins) + tuple(geo.ends)
    return ChainLink(None, residual, fusable, dtype=out_dtype, relayout=relayout, release=release, layer=layer,
                     shape=tuple(shape), pads=pads, pair_role=_pair_role(a, w_shape, pads))


def _pair_role(a: ConvAttrs, w_shape: tuple[int, ...], pads: tuple[int, ...]) -> str:
    """The layer's part in a depthwise pair (``ChainLink.pair_role``), by the shapes
    ``Layer.prepare_dw`` accepts: an unpadded stride-1 1x1 convolution starts one, a 3x3 depthwise
    convolution padded by 1 on every side (stride 1 or 2) ends one (``with_dw_pairs`` checks that
    neither adds a residual)."""
    strides = tuple(int(s) for s in a.strides) if a.strides else (1, 1)
    dilations = tuple(int(d) for d in a.dilations) if a.dilations else (1, 1)
    if len(w_shape) != 4 or dilations != (1, 1):
        return ""
    if w_shape[2:] == (1, 1) and int(a.group) == 1 and strides == (1, 1) and not any(pads):
        return "1x1"
    if (w_shape[2:] == (3, 3) and int(a.group) == w_shape[0] and w_shape[1] == 1 and strides in ((1, 1), (2, 2))
            and pads == (1, 1, 1, 1)):
        return "dw3x3"
    return ""


class _ShapeCache:
    """The layer's primitives per input shape, made on first use under a lock."""

    def __init__(self, layer: Any, a: ConvAttrs, w_shape: tuple[int, ...]) -> None:
        self.layer, self.a, self.w_shape = layer, a, w_shape
        self.prims: dict[tuple[int, ...], tuple[Any, tuple[int, ...]]] = {}
        self.lock = threading.Lock()

    def get(self, shape: tuple[int, ...]) -> tuple[Any, tuple[int, ...]]:
        hit = self.prims.get(shape)
        if hit is not None:
            return hit
        with self.lock:
            hit = self.prims.get(shape)
            if hit is None:
                geo = conv_geometry(self.a, shape, self.w_shape)
                conv = self.layer.prepare([int(d) for d in shape], list(geo.begins), list(geo.ends))
                hit = (conv, tuple(conv.dst_dims))
                if len(self.prims) >= MAX_SHAPES:
                    self.prims.pop(next(iter(self.prims)))
                self.prims = {**self.prims, tuple(shape): hit}  # readers outside the lock see a whole dict
        return hit

    def clear(self) -> None:
        """Forgets every primitive (the next run of each shape makes its own again)."""
        with self.lock:
            self.prims = {}


def _dt(dtype: DType) -> str:
    """The extension's name of an 8-bit activation type."""
    return native.dtype_name(torch_dtype(dtype)) or ""


def _int8_epilogue(a: QConvAttrs) -> Optional[tuple[str, float, float]]:
    """The eltwise post-op of a QConv (fused before the requantization), as ``qlayers`` fuses
    them: ReLU, or Clip with both bounds and no residual; ``None`` for the others."""
    if a.activation is Activation.NONE:
        return "none", 0.0, 0.0
    if a.activation is Activation.RELU:
        return "relu", 0.0, 0.0
    if a.activation is Activation.CLIP and not a.has_residual and len(a.act_params) == 2:
        return "clip", float(a.act_params[0]), float(a.act_params[1])
    return None


def qconv_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """INT8 convolutions with a constant 4-D weight (and bias) and an epilogue oneDNN fuses
    (``_int8_epilogue``; the registry asks ``available()`` separately); the others keep ``qlayers``'
    kernel."""
    if graph is None or not isinstance(node.attrs, QConvAttrs) or not const_input(node, graph, 1):
        return False
    if node.input(2) and not const_input(node, graph, 2):
        return False
    a: QConvAttrs = node.attrs
    if graph.constants[node.input(1)].ndim != 4 or _int8_epilogue(a) is None:
        return False
    # no residual scale for the 8-bit sum: ``qlayers`` says so at compile time
    return not (a.has_residual and a.out is not None and a.residual is None)


def qconv_offered(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """Whether a build here offers the tactic: not for weights that could saturate this CPU's 8-bit
    kernels (``qlayers.saturates``), which the kernel hands to ``qlayers``' float32 one, so the plan
    names that one (an engine built elsewhere still compiles the tactic, on that fallback)."""
    if not qlayers.int8_saturates() or graph is None:
        return True
    a: QConvAttrs = node.attrs
    try:
        w = torch.from_numpy(graph.constants[node.input(1)]).to(torch.float32)
        qw = quantize_weight(w, torch.tensor(a.w_scales, dtype=torch.float32), 0)
    except (RuntimeError, TypeError, ValueError):  # scales that do not fit the weight: the kernel says so
        return True
    return not saturates(qw, a.x)


@register_kernel(OpType.QCONV, tactic=TACTIC, rank=5, when=qconv_applies, available=available,
                 offered=qconv_offered)
def qconv_persistent(node: Node, ctx: CompileContext) -> Kernel:
    """QConv on persistent oneDNN INT8 primitives, computing what ``qlayers``' ``qconv2d_pointwise``
    kernel computes (same weight quantization, zero-point folding, residual and output rules). A
    layer whose weights could saturate oneDNN's 8-bit kernels on this CPU (``qlayers.saturates``)
    gets ``qlayers``' kernel, which computes it in float32."""
    ext = native.extension()
    if ext is None:
        raise BuildError(f"node {node.name!r}: CPU tactic {TACTIC!r} needs Ember's oneDNN extension, which is "
                         f"unavailable here ({native.unavailable_reason()}); rebuild the engine on this machine")
    a: QConvAttrs = node.attrs
    kind, lo, hi = _int8_epilogue(a) or ("none", 0.0, 0.0)
    w = ctx.const(node.input(1)).to(torch.float32)
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    qw = quantize_weight(w, w_scales, 0)
    if saturates(qw, a.x):
        return qconv(node, ctx)
    b = ctx.const(node.input(2))
    bias = b.reshape(-1).to(torch.float32) if b is not None else None
    xp, out_p, res_p, residual = a.x, a.out, a.residual, a.has_residual
    x_zp = xp.zero_point
    if x_zp and not _padded(a.conv):  # as qlayers: sum (q - zp) w = sum q w - zp sum w, in the bias
        comp = (x_zp * xp.scale) * w_scales.double() * qw.double().sum(dim=(1, 2, 3))
        bias = ((bias.double() if bias is not None else 0.0) - comp).to(torch.float32)
        x_zp = 0
    acc_p = res_p if out_p is not None else None  # the residual summed 8-bit into an 8-bit output, else float32
    layer = ext.Layer(
        qw.contiguous(), None if bias is None else bias.contiguous(),
        [int(v) for v in a.conv.strides] if a.conv.strides else [1, 1],
        [int(v) for v in a.conv.dilations] if a.conv.dilations else [1, 1], int(a.conv.group),
        activation=kind, alpha=lo, beta=hi, residual=residual, src_dtype=_dt(xp.dtype),
        dst_dtype="f32" if out_p is None else _dt(out_p.dtype), w_scales=w_scales, src_scale=xp.scale,
        src_zp=x_zp, dst_scale=1.0 if out_p is None else out_p.scale,
        dst_zp=0 if out_p is None else out_p.zero_point, sum_dtype="" if acc_p is None else _dt(acc_p.dtype),
        sum_scale=1.0 if acc_p is None else acc_p.scale, sum_zp=0 if acc_p is None else acc_p.zero_point)
    shapes = _ShapeCache(layer, a.conv, tuple(w.shape))
    t, static = _static_input(node, ctx, shapes)
    x_dtype = torch_dtype(xp.dtype)
    out_dtype = torch.float32 if out_p is None else torch_dtype(out_p.dtype)
    to_nchw = out_p is None and planned_format(ctx, node.outputs[0]) is NCHW
    name = node.name

    def accumulator(r: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A fresh channels-last output holding the residual as ``acc_p`` stores it (float32 where
        ``acc_p`` is None); oneDNN's sum post-op adds the convolution into it."""
        if tuple(r.shape) != shape:
            raise EmberError(f"INT8 layer {name!r}: residual of shape {list(r.shape)} for an output of {list(shape)}")
        if acc_p is None:
            if r.dtype != torch.float32:
                if res_p is None:
                    raise EmberError(f"INT8 layer {name!r}: an 8-bit residual without its quantization")
                return dequantize(r, res_p).contiguous(memory_format=CL)
            return r.clone(memory_format=CL)
        if r.dtype == torch.float32:
            acc = quantize(r, acc_p, torch.empty(r.shape, dtype=torch.float32, memory_format=CL))
        else:
            acc = r.clone(memory_format=CL)
        return acc if acc.dtype == out_dtype else acc.view(out_dtype)  # u8 <-> s8: oneDNN reads it as acc_p's

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        if x.dtype != x_dtype:
            x = quantize(x, xp, torch.empty(x.shape, dtype=torch.float32, memory_format=CL))
        elif not x.is_contiguous(memory_format=CL):
            x = x.contiguous(memory_format=CL)
        conv, out_shape = shapes.get(x.shape)
        y = accumulator(inputs[3], out_shape) if residual else torch.empty(out_shape, dtype=out_dtype,
                                                                             memory_format=CL)
        conv.run(x, y, None, False)
        return [y.contiguous() if to_nchw else y]

    link = _qchain_link(node, ctx, t, static, residual, acc_p is not None, x_dtype, out_dtype, to_nchw, xp)
    if link is not None:
        run.chain_link = link  # type: ignore[attr-defined]
    return run


def _qchain_link(node: Node, ctx: CompileContext, t: Any, static: Optional[tuple[Any, Any]], residual: bool,
                 acc_8bit: bool, x_dtype: torch.dtype, out_dtype: torch.dtype, to_nchw: bool,
                 xp: QuantParams) -> Optional[ChainLink]:
    """How the program may run this INT8 layer inside a chain: where its input is a static 4-D
    tensor in its 8-bit type (or a float32 one, which the chain stores 8-bit first: such a layer
    starts a chain), its output stays channels-last, and a residual needs no conversion (an 8-bit
    one summed into an 8-bit output, a float32 one into a float32 output): ``accumulator``'s copy
    is then ``run_chain``'s ``sum``."""
    if static is None or to_nchw:
        return None
    quant = None
    if t.dtype is DType.FLOAT32:
        quant = quantize_constants(xp)
    elif torch_dtype(t.dtype) != x_dtype:
        return None
    conv, out_shape = static
    if residual:
        r = _residual_type(node, ctx, out_shape)
        if r is None:
            return None
        r_dtype = torch_dtype(r.dtype)
        if (r_dtype == torch.float32) == acc_8bit or r_dtype.itemsize != out_dtype.itemsize:
            return None
    return ChainLink(conv, False, False, sum=residual, dtype=out_dtype, quant=quant)


def _padded(a: ConvAttrs) -> bool:
    return any(a.pads or ()) or a.auto_pad not in (AutoPad.NOTSET, AutoPad.VALID)


owns_constants((OpType.CONV, OpType.FUSED_CONV), (TACTIC,), (1, 2))

__all__ = ["MAX_SHAPES", "TACTIC", "available",
           "conv_persistent", "persistent_applies", "qconv_applies",
           "qconv_persistent"]
