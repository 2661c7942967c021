"""oneDNN fast paths for convolutions: weights prepacked once at compile time, activations in
channels-last, bias / residual add / activation fused into the convolution where PyTorch's
``mkldnn._convolution_pointwise`` offers it.

Tactics (for ``Conv`` and ``FusedConv`` with constant weights):

- ``mkldnn_prepacked``: ``_convolution_pointwise`` on a weight reordered to oneDNN's blocked
  layout at compile time; the residual add (and a ReLU after it) through its ``.binary`` form.
  Without prepacking the weight is reordered on every call, which is why an earlier
  measurement of the unpacked op showed no gain.
- ``channels_last``: aten convolution with channels-last activations and weights.

Layout (``Records.layout``, read through ``ember.backends.layout``): PyTorch runs
``_convolution_pointwise`` channels-last whenever its weight is a oneDNN tensor (an NCHW input is
reordered inside the call and the output comes back channels-last), so the prepacked tactic
computes channels-last whatever the plan, and its weight is packed for a channels-last source
(``_reorder_convolution_weight`` does so when it is given an input size). Where the plan stores
the output NCHW, the output is reordered to NCHW after the call; the ``channels_last`` tactic
does not apply there. Without a plan the output stays channels-last (as before the plan was read).

Concat elimination: a 1x1, stride-1, unpadded, ungrouped conv of either tactic has a
``write_into`` that computes its Concat slice as one MKL GEMM into the strided slice
(``gemm_write_into``, ``ember.backends.gemm_into``); it accepts only GEMMs of at most
``BuildConfig.cpu_gemm_into_max_macs`` multiply-adds, none by default, because on the CPU measured the GEMM plus
no copy was slower than oneDNN plus the copy (BENCHMARKS.md).

Half precision (bf16; fp16 on CPUs with AMX-FP16): in a half layer (``CompileContext.precision``)
the same two tactics convert the weight to the layer's dtype before prepacking it, read and write
16-bit activations (the build planned them so: ``ember.passes.cpu_half``) and keep the bias in
float32 (oneDNN accumulates in float32 and adds it there). ``mkldnn_prepacked_fp32`` is the
alternative a tuned build may time against them: the layer's fp32 kernel on its input converted
to float32, the output converted back (where a 16-bit kernel is the slower, e.g. on a CPU whose
oneDNN has no AMX path for that shape).

Post-op names come from the activation table (``ember.backends.activations.onednn_postop``);
whether this PyTorch's oneDNN takes one is decided here. Every feature is detected at run time
(``_convolution_pointwise`` may be missing, and the set of post-ops the binary form accepts
differs between PyTorch releases); a missing feature makes the tactic inapplicable or falls back
to an unfused epilogue, never to a wrong result.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import (
    NO_POSTOP,
    OneDNNPostOp,
    activation_after,
    activation_fn,
    inplace_activation,
    onednn_postop,
)
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.half import (
    finite_or_exact,
    finite_postop,
    finite_safe,
    half_applies,
    layer_dtype,
    owns_constants,
)
from ember.backends.cpu.kernels.common import Inputs, const_input, split_pads, torch_pad_arg
from ember.backends.cpu.kernels.conv import conv_geometry
from ember.backends.cpu.registry import register_kernel
from ember.backends.gemm_into import MatrixViews, gemm_into, input_matrix, matrix_view, pointwise_conv
from ember.backends.layout import NCHW, planned_format
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, AutoPad, ConvAttrs, FusedConvAttrs
from ember.plan.records import Records

#: Epilogues ``gemm_write_into`` leaves to the copy path although they have an in-place form:
#: GELU's (``aten.gelu_``) joined the activation table with the CUDA GEMMs that use it; this CPU
#: path (off by default, ``worth_it``) never offered it and keeps it so until it is measured.
_GEMM_INTO_DECLINED = frozenset({Activation.GELU_ERF, Activation.GELU_TANH})


@functools.cache
def pointwise_available() -> bool:
    """Whether this PyTorch has oneDNN's fused convolution with prepacked weights."""
    try:
        ops = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
                and hasattr(ops, "_reorder_convolution_weight"))
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def binary_supports(unary: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``_convolution_pointwise.binary`` accepts ``add`` followed by ``unary`` here, in ``dtype``."""
    if not pointwise_available():
        return False
    x = torch.ones(1, 8, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.ones(8, 8, 1, 1, dtype=dtype)
    try:
        pw = torch.ops.mkldnn._reorder_convolution_weight(w, [0, 0], [1, 1], [1, 1], 1, [1, 8, 4, 4])
        with torch.no_grad():
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, x, pw, None, [0, 0], [1, 1], [1, 1], 1, "add", None, unary or None, [], "")
        return bool(torch.allclose(y, torch.full_like(y, 9.0)))
    except RuntimeError:
        return False


def _conv_parts(node: Node) -> tuple[ConvAttrs, Activation, tuple[float, ...], bool]:
    a = node.attrs
    if isinstance(a, FusedConvAttrs):
        return a.conv, a.activation, tuple(a.act_params), a.has_residual
    return a, Activation.NONE, (), False


def _float32(graph: Optional[Graph], name: str) -> bool:
    t = graph.types.get(name) if graph is not None else None
    return t is None or t.dtype is DType.FLOAT32


def prepack_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """2-D / 3-D float32 convolutions whose weight (and bias) are graph constants."""
    if not pointwise_available() or graph is None or not const_input(node, graph, 1):
        return False
    if node.input(2) and not const_input(node, graph, 2):
        return False
    w = graph.constants[node.input(1)]
    return w.ndim in (4, 5) and _float32(graph, node.input(0)) and str(w.dtype) == "float32"


def prepack_fp32_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """``prepack_applies`` to a half layer: its fp32 alternative."""
    return half_applies(node, records) and prepack_applies(node, graph, records)


def _memory_format(rank: int) -> torch.memory_format:
    return torch.channels_last if rank == 4 else torch.channels_last_3d


_Resolved = tuple[list[int], list[int], list[int], Optional[list[int]]]


class ConvPadder:
    """Resolves pads per input shape (auto_pad) and pads explicitly when they are asymmetric."""

    def __init__(self, a: ConvAttrs, w_shape: tuple[int, ...]):
        self.a, self.w_shape = a, w_shape
        self.cache: dict[tuple[int, ...], _Resolved] = {}

    def __call__(self, shape: tuple[int, ...]):
        hit = self.cache.get(shape)
        if hit is None:
            geo = conv_geometry(self.a, shape, self.w_shape)
            explicit = None if geo.symmetric else torch_pad_arg(geo.begins, geo.ends)
            padding = geo.begins if geo.symmetric else [0] * len(geo.begins)
            hit = self.cache[shape] = (padding, geo.strides, geo.dilations, explicit)
        return hit


#: Spatial size of the nominal input a weight is packed for when the real one is dynamic.
NOMINAL_SPATIAL = 32


def reorder_params(a: ConvAttrs, w_shape: tuple[int, ...], in_size: Optional[list[int]], pads: ConvPadder):
    """(padding, strides, dilations, input_size) the weight is reordered for.

    With a static input shape these are exactly the run's; with a dynamic one, the attribute
    values and a nominal input (batch 1, ``NOMINAL_SPATIAL`` or the kernel's extent per spatial
    dim). An input size is always given: without one, PyTorch packs the weight for an NCHW
    source, while the call always computes channels-last (see the module docstring), so the
    packed weight would not match the source it meets. Any input size still runs.
    """
    n = len(w_shape) - 2
    if in_size is not None:
        padding, strides, dilations, explicit = pads(tuple(in_size))
        if explicit is not None:
            in_size = list(F.pad(torch.empty(in_size, device="meta"), explicit).shape)
        return padding, strides, dilations, in_size
    strides = [int(v) for v in a.strides] if a.strides else [1] * n
    dilations = [int(v) for v in a.dilations] if a.dilations else [1] * n
    explicit = bool(a.pads) and a.auto_pad is AutoPad.NOTSET
    begins, ends = split_pads(a.pads) if explicit else ([0] * n, [0] * n)
    padding = begins if begins == ends else [0] * n
    spatial = [max(NOMINAL_SPATIAL, (k - 1) * d + 1) for k, d in zip(w_shape[2:], dilations)]
    return padding, strides, dilations, [1, w_shape[1] * a.group, *spatial]


def _input_size(node: Node, ctx: CompileContext) -> Optional[list[int]]:
    """The input size the weight is reordered for. A dynamic batch alone is planned as batch 1:
    without a size oneDNN picks a generic weight layout and every call pays a reorder (a
    dynamic-batch ResNet-50 ran 2x slower at batch 1); the packed weight runs any batch."""
    t = ctx.graph.types.get(node.input(0)) if ctx.graph is not None else None
    if t is None or not all(isinstance(d, int) for d in t.shape[1:]):
        return None
    return [t.shape[0] if isinstance(t.shape[0], int) else 1, *t.shape[1:]]


def _prepare(x: torch.Tensor, pads: ConvPadder, fmt: torch.memory_format, dtype: torch.dtype = torch.float32):
    """The convolution's input padded (asymmetric pads), in ``fmt`` and ``dtype`` (a half layer's
    fp32 tactic converts here), with the run's (padding, strides, dilations)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    pad, stride, dil, expl = pads(tuple(x.shape))
    if expl is not None:
        x = F.pad(x, expl)
    if not x.is_contiguous(memory_format=fmt):
        x = x.contiguous(memory_format=fmt)
    return x, pad, stride, dil


def gemm_write_into(node: Node, ctx: CompileContext) -> Optional[WriteInto]:
    """Concat elimination for a 1x1, stride-1, unpadded, ungrouped float32 Conv/FusedConv: the
    convolution as one MKL GEMM straight into the channel slice of a channels-last Concat buffer
    (``ember.backends.gemm_into``), bias put into the slice first, residual likewise, activation
    in place. oneDNN's convolution has no strided-output form (``convolution.out`` computes a
    temporary and copies), so the ordinary run keeps the prepacked oneDNN call and only this
    path uses the GEMM. ``None`` for other convolutions and for epilogues with no in-place form.

    ``accepts(out)``: a float32 ``[N, Cout, H, W]`` whose pixel matrix aten's GEMM writes
    directly (``matrix_view``: a channel slice of a channels-last buffer, or of an NCHW one at
    N = 1), and a GEMM of no more than ``BuildConfig.cpu_gemm_into_max_macs`` multiply-adds
    (by default none, as the GEMM did not pay on the CPU measured: ``worth_it``)."""
    a, act, params, residual = _conv_parts(node)
    max_macs = ctx.config.cpu_gemm_into_max_macs
    if max_macs <= 0:
        return None
    w = ctx.const(node.input(1))
    if w is None or w.dtype != torch.float32 or not pointwise_conv(a, tuple(w.shape)):
        return None
    if not _float32(ctx.graph, node.input(0)) or not _float32(ctx.graph, node.outputs[0]):
        return None
    act_ = inplace_activation(act, params) if act not in _GEMM_INTO_DECLINED else None
    if act_ is None:
        return None
    cout, cin = int(w.shape[0]), int(w.shape[1])
    w_t = w.reshape(cout, cin).t().contiguous()  # [Cin, Cout] row-major
    b = ctx.const(node.input(2))
    bias = b.reshape(-1).to(torch.float32).contiguous() if b is not None else None

    def fits(out: torch.Tensor) -> bool:
        return (out.dim() == 4 and out.dtype == torch.float32 and int(out.shape[1]) == cout
                and matrix_view(out) is not None and worth_it(out, cin, max_macs))

    out_views, in_views = MatrixViews(), MatrixViews()
    checked: dict[tuple, bool] = {}  # (x shape, out shape) -> shapes agree and the GEMM pays

    def write(inputs: Inputs, out: torch.Tensor) -> bool:
        x = inputs[0]
        if x is None or x.dtype != torch.float32 or out.dtype != torch.float32 or x.device != out.device:
            return False
        key = (x.shape, out.shape)
        ok = checked.get(key)
        if ok is None:
            ok = checked[key] = (x.dim() == 4 and int(x.shape[1]) == cin
                                 and list(out.shape) == [x.shape[0], cout, *x.shape[2:]]
                                 and worth_it(out, cin, max_macs))
        o2 = out_views(out) if ok else None
        if o2 is None:
            return False
        r2 = None
        if residual:
            r = inputs[3]
            if r is None or r.shape != out.shape:
                return False
            r2 = in_views(r.to(torch.float32))
            if r2 is None:
                r2 = input_matrix(r)
        x2 = in_views(x)
        gemm_into(o2, x2 if x2 is not None else input_matrix(x), w_t, bias, r2, act_)
        return True

    return WriteInto(write, fits)


def worth_it(out: torch.Tensor, cin: int, max_macs: int) -> bool:
    """Whether the GEMM into ``out`` is expected to beat the convolution + copy: at most
    ``max_macs`` multiply-adds (``BuildConfig.cpu_gemm_into_max_macs``; M*K*N with M = N*H*W).

    The default, 0, writes none: on the CPU measured so far the GEMM does not pay (16777216
    covers GoogLeNet's batch-1 pool projections). Measured on the 2-core AVX-512 EPYC, 2 threads (BENCHMARKS.md, "Concat
    elimination"): in isolation MKL's GEMM into the slice beats oneDNN's prepacked convolution +
    copy on small batch-1 shapes (192->32 at 28x28: 61 vs 81 us warm, 120 vs 155 us cold) and
    loses on larger ones (batch 8, 480->192 at 14x14: 1453 vs 1317 us; MKL's kernel is 10-15%
    slower than oneDNN's here, the strided output itself costs nothing); but inside GoogLeNet's
    run, the nine Inception pool projections took 1461 us as GEMMs into their slices against
    1361 us as oneDNN + copy at batch 1 (8196 vs 7017 us at batch 8), and the whole run was
    0.2-0.5 ms slower, so the copy stays the default."""
    n, cout, h, w = (int(d) for d in out.shape)
    return n * h * w * cin * cout <= max_macs


@register_kernel(OpType.CONV, tactic="mkldnn_prepacked", rank=10, when=prepack_applies)
@register_kernel(OpType.FUSED_CONV, tactic="mkldnn_prepacked", rank=10, when=prepack_applies)
def conv_prepacked(node: Node, ctx: CompileContext) -> Kernel:
    """Conv / FusedConv through oneDNN with the weight reordered once, here (in the layer's dtype)."""
    return _conv_prepacked(node, ctx, layer_dtype(ctx))


@register_kernel(OpType.CONV, tactic="mkldnn_prepacked_fp32", rank=15, when=prepack_fp32_applies)
@register_kernel(OpType.FUSED_CONV, tactic="mkldnn_prepacked_fp32", rank=15, when=prepack_fp32_applies)
def conv_prepacked_fp32(node: Node, ctx: CompileContext) -> Kernel:
    """A half layer's convolution computed in fp32 (input converted; the output converted back by
    ``ember.backends.cpu.half``)."""
    return _conv_prepacked(node, ctx, torch.float32)


def _conv_prepacked(node: Node, ctx: CompileContext, dtype: torch.dtype) -> Kernel:
    a, act, params, residual = _conv_parts(node)
    w = ctx.const(node.input(1)).to(dtype).contiguous()
    bias = ctx.const(node.input(2))
    bias = bias.contiguous() if bias is not None else None
    pads = ConvPadder(a, tuple(w.shape))
    padding, strides, dilations, in_size = reorder_params(a, tuple(w.shape), _input_size(node, ctx), pads)
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, padding, strides, dilations, a.group, in_size)
    fmt = _memory_format(w.dim())
    to_nchw = planned_format(ctx, node.outputs[0]) is NCHW  # the call itself computes channels-last
    act_fn = activation_fn(act, params)  # residual without oneDNN's binary form: add, then this
    group = a.group
    conv_pw = torch.ops.mkldnn._convolution_pointwise

    def build(fused: Optional[OneDNNPostOp]) -> Kernel:
        """The kernel with ``fused`` as oneDNN's post-op (``None``: the activation after the call)."""
        post = None if fused is not None else activation_after(act, params)
        unary, scalars, algorithm = (fused or NO_POSTOP).args()
        bin_unary = unary if residual and binary_supports("" if unary == "none" else unary, dtype) else None
        bin_scalars, bin_algorithm = (scalars, algorithm) if bin_unary is not None else ([], "")
        if residual and bin_unary is None and binary_supports("", dtype):
            bin_unary, post = "none", activation_after(act, params)
        bin_bias = bias.to(dtype) if bias is not None and bin_unary is not None else bias  # binary: one dtype

        def run(inputs: Inputs) -> list:
            x, pad, stride, dil = _prepare(inputs[0], pads, fmt, dtype)
            if residual:
                r = inputs[3]
                if r.dtype != dtype:
                    r = r.to(dtype)
                if bin_unary is not None:
                    if not r.is_contiguous(memory_format=fmt):
                        r = r.contiguous(memory_format=fmt)
                    y = conv_pw.binary(x, r, packed, bin_bias, pad, stride, dil, group, "add", None,
                                       None if bin_unary == "none" else bin_unary, bin_scalars, bin_algorithm)
                    y = post(y) if post is not None else y
                else:
                    y = conv_pw(x, packed, bias, pad, stride, dil, group, "none", [], "") + r
                    y = act_fn(y) if act_fn is not None else y
            else:
                y = conv_pw(x, packed, bias, pad, stride, dil, group, unary, scalars, algorithm)
                y = post(y) if post is not None else y
            return [y.contiguous() if to_nchw else y]

        return run

    exact = onednn_postop(act, params)
    run = build(exact)
    fast = finite_postop(act, params) if dtype != torch.float32 and finite_safe(node, ctx.graph) else exact
    if fast != exact:  # a half layer: the epilogue fused when the run's inputs are finite
        run = finite_or_exact(build(fast), run)
    return with_write_into(run, gemm_write_into(node, ctx))


def _channels_last_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """Constant 4-D/5-D float weights, and an output the layout plan does not store NCHW."""
    if graph is None or not const_input(node, graph, 1):
        return False
    return graph.constants[node.input(1)].ndim in (4, 5) and _float32(graph, node.input(0))


@register_kernel(OpType.CONV, tactic="channels_last", rank=20, when=_channels_last_applies, channels_last_only=True)
@register_kernel(OpType.FUSED_CONV, tactic="channels_last", rank=20, when=_channels_last_applies,
                 channels_last_only=True)
def conv_channels_last(node: Node, ctx: CompileContext) -> Kernel:
    """aten convolution on channels-last activations and a channels-last weight made here."""
    a, act, params, residual = _conv_parts(node)
    dtype = layer_dtype(ctx)
    w = ctx.const(node.input(1))
    fmt = _memory_format(w.dim())
    w = w.to(dtype).contiguous(memory_format=fmt)
    bias = ctx.const(node.input(2))
    bias = bias.to(dtype) if bias is not None else None  # aten takes one dtype
    pads = ConvPadder(a, tuple(w.shape))
    act_fn = activation_fn(act, params)
    group = a.group

    def run(inputs: Inputs) -> list:
        x, pad, stride, dil = _prepare(inputs[0], pads, fmt, dtype)
        y = torch.convolution(x, w, bias, stride, pad, dil, False, [0] * len(pad), group)
        if residual:
            y = y.add_(inputs[3])
        return [act_fn(y) if act_fn is not None else y]

    return with_write_into(run, gemm_write_into(node, ctx))


owns_constants((OpType.CONV, OpType.FUSED_CONV), ("mkldnn_prepacked", "mkldnn_prepacked_fp32", "channels_last"),
               (1, 2))

__all__ = ["pointwise_available", "binary_supports", "prepack_applies"]
