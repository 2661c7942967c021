"""Convolution on cuDNN: Conv, FusedConv (bias, residual, activation epilogues), BatchNorm,
ConvTranspose.

Weights are cast to the layer's precision and put in the layer's memory format once, at compile
time. The format is the layout plan's (``graph.meta["layout"]``, read through
``ember.backends.layout``): channels-last by default (what cuDNN's fastest fp16/bf16 kernels
want), NCHW where the plan says so (``BuildConfig(layout="nchw")``); without a plan, channels-last.
cuDNN computes in the format of its input and weight, so both are put in the output's format and
the output comes out in it. FusedConv tactics:

- ``cudnn_fused``: ``torch.cudnn_convolution_relu`` (conv + bias + ReLU) and
  ``torch.cudnn_convolution_add_relu`` (conv + bias + residual + ReLU): one cuDNN call.
- ``cudnn``: the convolution with its bias, then the residual add and activation in place.
- ``cudnn_triton``: the convolution alone, then one Triton pass for bias + residual + activation.

Tactics that only exist for channels-last (``cublaslt_1x1``: a GEMM over the NHWC matrix;
``*_cpad8``: channel padding for the NHWC tensor-core kernels; ``cudnn_triton``: its epilogue
indexes channels as the fastest dim) do not apply where the plan stores the output NCHW.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import InplaceAct, activation_fn, inplace_activation
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into, write_into_of
from ember.backends.cpu.kernels.common import arg, auto_pads, split_pads, torch_pad_arg
from ember.backends.cuda.device import cast_float, compute_dtype, conv_scope, tf32_scope
from ember.backends.cuda.registry import register_cuda_kernel
from ember.backends.gemm_into import MatrixViews, gemm_into, input_matrix, matrix_view
from ember.backends.layout import (
    CHANNELS_LAST,
    planned_format,
    planned_weight_format,
    to_format,
)
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, BatchNormAttrs, ConvAttrs, ConvTransposeAttrs, FusedConvAttrs
from ember.plan.records import Records

Tensor = torch.Tensor
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
#: Epilogues the ``cudnn`` tactic applies in place after the convolution (and so can apply to an
#: output it writes into); the others run out of place, and the tactic offers no ``write_into``.
_CUDNN_IN_PLACE = frozenset({Activation.NONE, Activation.RELU, Activation.CLIP})


class ConvGeom:
    """Stride/padding/dilation of one conv, with ONNX's asymmetric or ``auto_pad`` pads resolved."""

    def __init__(self, attrs: ConvAttrs, node: Node, graph: Graph) -> None:
        self.attrs = attrs
        self.n = len(attrs.kernel_shape)
        if self.n not in _CONV:
            raise BuildError(f"node {node.name!r}: {self.n}-D convolution is not supported on CUDA; "
                             f"only 1-D, 2-D and 3-D convolutions are")
        self.stride = tuple(attrs.strides) or (1,) * self.n
        self.dilation = tuple(attrs.dilations) or (1,) * self.n
        self.groups = attrs.group
        x_shape = graph.types[node.inputs[0]].shape if node.inputs[0] in graph.types else ()
        self._static = all(isinstance(d, int) for d in x_shape[2:]) and len(x_shape) == self.n + 2
        self._fixed = self._resolve(x_shape[2:]) if self._static else None

    def _resolve(self, spatial) -> tuple[tuple[int, ...], Optional[list[int]]]:
        a = self.attrs
        pads = auto_pads(a.auto_pad, a.pads, spatial, a.kernel_shape, self.stride, self.dilation)
        begins, ends = split_pads(pads)
        if begins == ends:
            return tuple(begins), None
        return (0,) * self.n, torch_pad_arg(begins, ends)

    def padding(self, x: Tensor) -> tuple[tuple[int, ...], Optional[list[int]]]:
        """(symmetric padding for the conv call, explicit F.pad argument or None)."""
        return self._fixed if self._fixed is not None else self._resolve(tuple(x.shape[2:]))


def conv_format(node: Node, ctx: CompileContext) -> torch.memory_format:
    """The memory format a 2-D conv computes and writes in: the layout plan's for its output
    (else for its weight), channels-last without a plan. Input and weight are put in it."""
    fmt = planned_format(ctx, node.outputs[0])
    if fmt is None:
        fmt = planned_weight_format(ctx, node.input(1))
    return CHANNELS_LAST if fmt is None else fmt


def conv_weight(ctx: CompileContext, node: Node, dtype: torch.dtype, fmt: torch.memory_format) -> Tensor:
    w = ctx.const(node.inputs[1])
    if w is None:
        raise BuildError(f"node {node.name!r}: the CUDA conv kernels need a constant weight "
                         f"(input {node.inputs[1]!r} is computed at run time); fold it or build for cpu")
    w = w.to(dtype)
    return w.contiguous(memory_format=fmt) if w.dim() == 4 else w.contiguous()


def conv_bias(ctx: CompileContext, node: Node, dtype: torch.dtype) -> Optional[Tensor]:
    b = ctx.const(node.input(2))
    return None if b is None else b.to(dtype).contiguous()


def prepare_input(x: Tensor, geom: ConvGeom, dtype: torch.dtype,
             fmt: torch.memory_format) -> tuple[Tensor, tuple[int, ...]]:
    if x.dim() == 4:  # cast and reorder in one copy (a no-op when already both)
        x = x.to(dtype=dtype, memory_format=fmt)
    else:
        x = cast_float(x, dtype).contiguous()
    padding, extra = geom.padding(x)
    if extra is not None:
        x = F.pad(x, extra)
        x = x.contiguous(memory_format=fmt) if x.dim() == 4 else x.contiguous()
    return x, padding


def conv_attrs(node: Node) -> tuple[ConvAttrs, Activation, tuple[float, ...], bool]:
    a = node.attrs
    if isinstance(a, FusedConvAttrs):
        return a.conv, a.activation, tuple(a.act_params), a.has_residual
    return a, Activation.NONE, (), False


@register_cuda_kernel(OpType.CONV, "cudnn", rank=0)
@register_cuda_kernel(OpType.FUSED_CONV, "cudnn", rank=10)
def conv_cudnn(node: Node, ctx: CompileContext) -> Kernel:
    """cuDNN convolution with bias, then residual add and activation as separate in-place ops."""
    conv, act, params, has_res = conv_attrs(node)
    dtype = compute_dtype(ctx.precision)
    geom = ConvGeom(conv, node, ctx.graph)
    fmt = conv_format(node, ctx)
    w, b = conv_weight(ctx, node, dtype, fmt), conv_bias(ctx, node, dtype)
    fn, act_fn, prec = _CONV[geom.n], activation_fn(act, params), ctx.precision
    in_place = act in _CUDNN_IN_PLACE
    act_ = _cudnn_inplace(act, params)

    def run(inputs) -> list:
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        with conv_scope(prec):
            y = fn(x, w, b, geom.stride, padding, geom.dilation, geom.groups)
        if has_res:
            y.add_(cast_float(arg(inputs, 3), dtype))
        if act_ is not None:
            act_(y)
        elif act_fn is not None:
            y = act_fn(y)
        return [y]

    if has_res or not in_place or geom.n != 2:
        return run
    return with_write_into(run, _cudnn_write_into(geom, w, b, act_, dtype, prec, fmt))


def _cudnn_inplace(act: Activation, params: tuple[float, ...]) -> Optional[InplaceAct]:
    """The in-place epilogue of the ``cudnn`` tactic (``_CUDNN_IN_PLACE``), ``None`` for no
    activation or one applied out of place."""
    if act is Activation.NONE or act not in _CUDNN_IN_PLACE:
        return None
    return inplace_activation(act, params)


def _packed(out: Tensor, dtype: torch.dtype, fmt: torch.memory_format) -> bool:
    """An output cuDNN can be given directly: 4-D, the layer's dtype, and packed in the layer's
    memory format ``fmt`` (the strides of a fresh output). cuDNN itself accepts strided outputs,
    but PyTorch caches its execution plans by input/weight geometry and alignment only, not by
    the output's strides (``CacheKeyWrapper`` in aten/src/ATen/native/cudnn/Conv_v8.cpp), so a
    plan made for a packed output of the same convolution (tactic timing, another layer) could be
    replayed on a strided one and write the wrong elements; and ``cudnn_convolution.out`` puts
    input and weight in the *output's* format, so an output in the other format would reorder the
    weight on every call. A channel slice of a channels-last Concat buffer is packed only when
    H = W = 1; of an NCHW buffer, when N = 1; slices along the batch axis always are."""
    return out.dim() == 4 and out.dtype == dtype and out.is_contiguous(memory_format=fmt)


def _cudnn_write_into(geom: ConvGeom, w: Tensor, b: Optional[Tensor], act_: Optional[InplaceAct],
                      dtype: torch.dtype, prec: str, fmt: torch.memory_format) -> WriteInto:
    """The ``cudnn`` tactic straight into a given output: ``aten::cudnn_convolution.out`` (a real
    out= kernel: ConvShared.cpp hands ``out`` to cuDNN as the y tensor), then bias and the
    in-place activation ``act_`` (ReLU/Clip, ``_cudnn_inplace``) on it."""
    bias = None if b is None else b.view(1, -1, 1, 1)

    def write(inputs, out: Tensor) -> bool:
        if not _packed(out, dtype, fmt) or inputs[0] is None or inputs[0].dim() != 4:
            return False
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        _cudnn_out(x, w, padding, geom, prec, out)
        if bias is not None:
            out.add_(bias)
        if act_ is not None:
            act_(out)
        return True

    return WriteInto(write, lambda out: _packed(out, dtype, fmt))


def clip_bounds(params: tuple[float, ...]) -> tuple[Optional[float], Optional[float]]:
    lo = params[0] if len(params) > 0 else None
    hi = params[1] if len(params) > 1 else None
    return lo, hi


def _relu_2d(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    a = node.attrs
    return (isinstance(a, FusedConvAttrs) and a.activation is Activation.RELU
            and len(a.conv.kernel_shape) == 2)


@register_cuda_kernel(OpType.FUSED_CONV, "cudnn_fused", rank=0, when=_relu_2d)
def conv_cudnn_fused(node: Node, ctx: CompileContext) -> Kernel:
    """conv + bias (+ residual) + ReLU in one cuDNN call."""
    conv, _, _, has_res = conv_attrs(node)
    dtype = compute_dtype(ctx.precision)
    geom = ConvGeom(conv, node, ctx.graph)
    fmt = conv_format(node, ctx)
    w, b = conv_weight(ctx, node, dtype, fmt), conv_bias(ctx, node, dtype)
    stride, dilation, groups, prec = list(geom.stride), list(geom.dilation), geom.groups, ctx.precision

    def run(inputs) -> list:
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        with conv_scope(prec):
            if has_res:
                z = to_format(cast_float(inputs[3], dtype), fmt)
                y = torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, stride, list(padding), dilation, groups)
            else:
                y = torch.cudnn_convolution_relu(x, w, b, stride, list(padding), dilation, groups)
        return [y]

    return run


def _channel_pad_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """A 2-D, ungrouped conv whose input channels are not a multiple of 8 (an RGB stem), computed
    channels-last: cuDNN's tensor-core kernels want channels-last inputs with C % 8 == 0."""
    a = node.attrs
    conv = a.conv if isinstance(a, FusedConvAttrs) else a
    if not isinstance(conv, ConvAttrs) or len(conv.kernel_shape) != 2 or conv.group != 1 or graph is None:
        return False
    w = graph.constants.get(node.input(1))
    return w is not None and w.shape[1] % 8 != 0 and w.shape[1] < 64


def _with_padded_channels(inner):
    """The tactic ``inner`` on inputs zero-padded to a multiple of 8 channels (weights padded with
    zero filters once, at compile time; the padding adds nothing to the result). The inner
    kernel's ``write_into`` is passed on (it then writes from the padded input)."""

    def factory(node: Node, ctx: CompileContext) -> Kernel:
        w = ctx.const(node.inputs[1])
        cin = w.shape[1]
        cpad = -(-cin // 8) * 8
        wp = torch.zeros((w.shape[0], cpad) + tuple(w.shape[2:]), dtype=w.dtype, device=w.device)
        wp[:, :cin] = w
        consts = dict(ctx.constants)
        consts[node.inputs[1]] = wp
        kernel = inner(node, dataclasses.replace(ctx, constants=consts))
        dtype = compute_dtype(ctx.precision)

        def padded(inputs) -> list:
            x = inputs[0]
            xp = torch.empty((x.shape[0], cpad) + tuple(x.shape[2:]), dtype=dtype, device=x.device,
                             memory_format=torch.channels_last)
            xp[:, cin:].zero_()
            xp[:, :cin].copy_(x)
            return [xp, *inputs[1:]]

        def run(inputs) -> list:
            return kernel(padded(inputs))

        inner_write = write_into_of(kernel)
        if inner_write is None:
            return run
        return with_write_into(run, WriteInto(lambda inputs, out: inner_write(padded(inputs), out),
                                              inner_write.accepts))

    factory.__name__ = f"{inner.__name__}_cpad8"
    factory.__doc__ = f"{inner.__doc__} Input channels zero-padded to a multiple of 8."
    return factory


def register_padded(op: OpType, tactic: str, rank: int, when, inner) -> None:
    """Registers ``inner`` on channel-padded inputs as ``tactic``, where ``when`` and the
    padding apply."""
    register_cuda_kernel(op, tactic, rank=rank,
                         when=lambda n, g, r=None: when(n, g, r) and _channel_pad_applies(n, g, r),
                         channels_last_only=True)(
        _with_padded_channels(inner))


register_padded(OpType.FUSED_CONV, "cudnn_fused_cpad8", 5, _relu_2d, conv_cudnn_fused)
register_padded(OpType.FUSED_CONV, "cudnn_cpad8", 15, lambda n, g, r=None: True, conv_cudnn)
register_padded(OpType.CONV, "cudnn_cpad8", 15, lambda n, g, r=None: True, conv_cudnn)


def _pointwise_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped 2-D conv with a ReLU or no activation: in
    channels-last order it is exactly a GEMM ``[N*H*W, Cin] x [Cin, Cout]``."""
    a = node.attrs
    conv = a.conv if isinstance(a, FusedConvAttrs) else a
    act = a.activation if isinstance(a, FusedConvAttrs) else Activation.NONE
    return (isinstance(conv, ConvAttrs) and tuple(conv.kernel_shape) == (1, 1) and conv.group == 1
            and all(s == 1 for s in (conv.strides or (1, 1))) and not any(conv.pads or ())
            and conv.auto_pad.value in ("NOTSET", "VALID") and act in (Activation.NONE, Activation.RELU))


@register_cuda_kernel(OpType.FUSED_CONV, "cublaslt_1x1", rank=30, when=_pointwise_applies, channels_last_only=True)
@register_cuda_kernel(OpType.CONV, "cublaslt_1x1", rank=30, when=_pointwise_applies, channels_last_only=True)
def conv_pointwise_gemm(node: Node, ctx: CompileContext) -> Kernel:
    """A 1x1 conv as one cuBLASLt GEMM on the channels-last activation viewed as a matrix, bias
    and ReLU in the GEMM's epilogue; a residual is accumulated by the GEMM itself (beta = 1).

    Concat elimination (``write_into``, ``_pointwise_write_into``): the same GEMM straight into
    a channel slice of a channels-last Concat buffer."""
    _, act, _, has_res = conv_attrs(node)
    dtype = compute_dtype(ctx.precision)
    w = ctx.const(node.inputs[1])
    w_t = w.reshape(w.shape[0], w.shape[1]).to(dtype).contiguous().t()  # [Cin, Cout] view of [Cout, Cin]
    b = conv_bias(ctx, node, dtype)
    relu, prec = act is Activation.RELU, ctx.precision

    def run(inputs) -> list:
        x = inputs[0].to(dtype=dtype, memory_format=torch.channels_last)
        n, c, h, wd = x.shape
        x2 = x.permute(0, 2, 3, 1).reshape(n * h * wd, c)
        with tf32_scope(prec):
            if has_res:
                r = inputs[3].to(dtype=dtype, memory_format=torch.channels_last)
                y2 = torch.addmm(r.permute(0, 2, 3, 1).reshape(n * h * wd, -1), x2, w_t)
                if b is not None:
                    y2.add_(b)
                if relu:
                    y2.relu_()
            elif b is not None and relu:
                y2 = torch._addmm_activation(b, x2, w_t)
            elif b is not None:
                y2 = torch.addmm(b, x2, w_t)
            else:
                y2 = torch.mm(x2, w_t)
                if relu:
                    y2.relu_()
        return [y2.view(n, h, wd, -1).permute(0, 3, 1, 2)]

    return with_write_into(run, _pointwise_write_into(w_t, b, relu, has_res, dtype, prec))


def _pointwise_write_into(w_t: Tensor, b: Optional[Tensor], relu: bool, has_res: bool,
                          dtype: torch.dtype, prec: str) -> WriteInto:
    """``cublaslt_1x1`` into ``out``: a channel slice of a channels-last Concat buffer is the
    pixel matrix ``[N*H*W, Cout]`` with row stride ``Ctot`` (``ember.backends.gemm_into``), which
    ``addmm``'s cuBLAS path writes with ``ldc = Ctot`` and no temporary. cuBLASLt's bias/ReLU
    epilogue needs a contiguous result, so here the bias (or bias + residual) is put into the
    slice first, the GEMM accumulates onto it (beta = 1) and the ReLU runs in place.
    ``accepts``: the layer's dtype, ``Cout`` channels, and a pixel matrix cuBLAS writes as is
    (``matrix_view``); not a packed copy of any other layout."""
    cin, cout = int(w_t.shape[0]), int(w_t.shape[1])
    act = inplace_activation(Activation.RELU if relu else Activation.NONE, ())
    assert act is not None  # both have an in-place form
    out_views, in_views = MatrixViews(), MatrixViews()

    def accepts(out: Tensor) -> bool:
        return out.dim() == 4 and out.dtype == dtype and int(out.shape[1]) == cout \
            and matrix_view(out) is not None

    def write(inputs, out: Tensor) -> bool:
        x = inputs[0]
        if x is None or x.dim() != 4 or out.dtype != dtype or x.device != out.device \
                or int(x.shape[1]) != cin or list(out.shape) != [x.shape[0], cout, *x.shape[2:]]:
            return False
        o2 = out_views(out)
        if o2 is None:
            return False
        x2 = in_views(x) if x.dtype == dtype else None
        if x2 is None:
            x2 = input_matrix(x.to(dtype))
        r2 = None
        if has_res:
            r = inputs[3]
            if r is None or r.shape != out.shape:
                return False
            r = r.to(dtype)
            r2 = in_views(r)
            if r2 is None:
                r2 = input_matrix(r)
        with tf32_scope(prec):
            gemm_into(o2, x2, w_t, b, r2, act)
        return True

    return WriteInto(write, accepts)


def _triton_epilogue_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    from ember.backends.cuda.libs.triton_ops import EPILOGUE_ACTIVATIONS

    a = node.attrs
    return (isinstance(a, FusedConvAttrs) and len(a.conv.kernel_shape) == 2
            and a.activation in EPILOGUE_ACTIVATIONS
            and (a.activation is not Activation.NONE or a.has_residual))


@register_cuda_kernel(OpType.FUSED_CONV, "cudnn_triton", rank=20, when=_triton_epilogue_applies,
                      channels_last_only=True, needs_triton=True)
def conv_cudnn_triton(node: Node, ctx: CompileContext) -> Kernel:
    """cuDNN convolution without bias, then Ember's Triton epilogue: bias + residual + activation."""
    from ember.backends.cuda.libs.triton_ops import bias_act_

    conv, act, params, has_res = conv_attrs(node)
    dtype = compute_dtype(ctx.precision)
    geom = ConvGeom(conv, node, ctx.graph)
    fmt = conv_format(node, ctx)
    w, b = conv_weight(ctx, node, dtype, fmt), conv_bias(ctx, node, dtype)
    prec = ctx.precision

    def run(inputs) -> list:
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        with conv_scope(prec):
            y = F.conv2d(x, w, None, geom.stride, padding, geom.dilation, geom.groups)
        res = to_format(cast_float(inputs[3], dtype), fmt) if has_res else None
        return [bias_act_(y, b, res, act, params)]

    def write(inputs, out: Tensor) -> bool:  # the same two passes, the conv writing into ``out``
        if not _packed(out, dtype, fmt) or inputs[0] is None or inputs[0].dim() != 4:
            return False
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        _cudnn_out(x, w, padding, geom, prec, out)
        res = to_format(cast_float(inputs[3], dtype), fmt) if has_res else None
        bias_act_(out, b, res, act, params)
        return True

    if geom.n != 2:
        return run
    return with_write_into(run, WriteInto(write, lambda out: _packed(out, dtype, fmt)))


def _cudnn_out(x: Tensor, w: Tensor, padding, geom: ConvGeom, prec: str, out: Tensor) -> None:
    """cuDNN's convolution (no bias) straight into ``out`` (``aten::cudnn_convolution.out``)."""
    with conv_scope(prec):
        torch.ops.aten.cudnn_convolution.out(
            x, w, list(padding), list(geom.stride), list(geom.dilation), geom.groups,
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.backends.cudnn.allow_tf32, out=out)


@register_cuda_kernel(OpType.BATCH_NORM, "scale_shift", rank=0)
def batch_norm(node: Node, ctx: CompileContext) -> Kernel:
    """Inference BatchNorm as one multiply-add, its scale and shift folded in fp32 at compile time
    (in the layout plan's format for its output; without a plan, the input's)."""
    eps = (node.attrs or BatchNormAttrs()).epsilon
    consts = [ctx.const(n) for n in node.inputs[1:5]]
    if any(c is None for c in consts):
        raise BuildError(f"node {node.name!r}: BatchNormalization needs constant scale, bias, mean "
                         f"and var on CUDA; fold them or build for cpu")
    gamma, beta, mean, var = (c.double() for c in consts)  # type: ignore[union-attr]
    scale64 = gamma / torch.sqrt(var + eps)
    shift64 = beta - mean * scale64
    dtype = compute_dtype(ctx.precision)
    scale, shift = scale64.to(dtype), shift64.to(dtype)
    fmt = planned_format(ctx, node.outputs[0])

    def run(inputs) -> list:
        x = to_format(cast_float(inputs[0], dtype), fmt)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return [to_format(torch.addcmul(shift.view(shape), x, scale.view(shape)), fmt)]

    return run


@register_cuda_kernel(OpType.CONV_TRANSPOSE, "cudnn", rank=0)
def conv_transpose(node: Node, ctx: CompileContext) -> Kernel:
    """Transposed convolution on cuDNN (explicit pads; ``output_shape`` resolved per call). With a
    layout plan, input, weight and output in the plan's format for the output; without, NCHW."""
    a: ConvTransposeAttrs = node.attrs
    n = len(a.kernel_shape)
    fns = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
    if n not in fns:
        raise BuildError(f"node {node.name!r}: {n}-D ConvTranspose is not supported on CUDA")
    dtype = compute_dtype(ctx.precision)
    w = ctx.const(node.inputs[1])
    if w is None:
        raise BuildError(f"node {node.name!r}: ConvTranspose needs a constant weight on CUDA")
    fmt = planned_format(ctx, node.outputs[0]) if n == 2 else None
    out_fmt = fmt if fmt is not None else torch.contiguous_format
    w = w.to(dtype).contiguous(memory_format=out_fmt)
    b = conv_bias(ctx, node, dtype)
    stride = tuple(a.strides) or (1,) * n
    dil = tuple(a.dilations) or (1,) * n
    pads = list(a.pads) or [0] * (2 * n)
    begins, ends = split_pads(pads)
    outpad = list(a.output_padding) or [0] * n
    prec = ctx.precision

    def run(inputs) -> list:
        x = to_format(cast_float(inputs[0], dtype), fmt)
        with conv_scope(prec):
            y = fns[n](x, w, b, stride, 0, tuple(outpad), a.group, dil)
        # crop the ONNX pads (they may be asymmetric) from the full transposed result
        idx = [slice(None), slice(None)] + [slice(bg, y.shape[2 + i] - e) for i, (bg, e) in
                                            enumerate(zip(begins, ends))]
        if a.output_shape is not None:
            idx = [slice(None), slice(None)] + [slice(s.start, s.start + o) for s, o in
                                                zip(idx[2:], a.output_shape[-n:])]
        return [y[tuple(idx)].contiguous(memory_format=out_fmt)]

    return run
