"""Matrix products on cuBLAS: Gemm, MatMul and FusedGemm (bias + activation epilogues).

A constant B is transposed once at compile time into the ``[N, K]`` row-major layout that
``F.linear`` hands to cuBLAS, with ``alpha`` and ``beta`` folded into it and the bias. FusedGemm
tactics:

- ``cublas``: ``F.linear`` with the bias (cuBLAS's own bias epilogue), activation after.
- ``cublaslt_epilogue``: ``torch._addmm_activation`` (cuBLASLt bias + ReLU / tanh-GELU epilogue).
- ``cublas_triton``: ``F.linear`` without bias, then one Triton pass for bias + activation.

``write_into`` (``ember.backends.base``): the same products straight into a given ``out``, with
the GEMMs ``F.linear`` itself runs (``addmm``/``mm``/``_addmm_activation`` with ``out=``, real
structured kernels whose output is handed to cuBLAS as it is when it is a row-major matrix,
``ldc`` = its row stride: ``_out_matrix``). ``cublas`` takes such a strided view too (a slice of
a Concat along the last axis); ``cublaslt_epilogue`` only a packed one, as cuBLASLt's epilogue
needs a contiguous result (on a strided one aten falls back to cuBLAS plus separate bias and
activation passes: more work than the copy saved); ``cublas_triton`` only a packed one, since
its Triton epilogue indexes the output linearly. ``matmul`` writes a packed ``out`` through
``torch.matmul(..., out=)``, which runs the same ``mm``/``bmm`` into views of it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import ACTIVATIONS, activation_fn, inplace_activation
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import arg
from ember.backends.cpu.kernels.linalg import gemm_value
from ember.backends.cuda.device import cast_float, cast_inputs, compute_dtype, tf32_scope
from ember.backends.cuda.libs.triton_conv import TileConfig
from ember.backends.cuda.registry import register_cuda_kernel
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.plan.config import Precision
from ember.plan.records import Records

Tensor = torch.Tensor


class Linear:
    """``y = alpha * op(a) @ op(B) + beta * c`` with constant 2-D ``B`` and 1-D-like ``c``."""

    def __init__(self, node: Node, ctx: CompileContext, g: GemmAttrs, dtype: torch.dtype) -> None:
        b = ctx.const(node.inputs[1])
        assert b is not None and b.dim() == 2
        w = (b if g.trans_b else b.t()).double() * float(g.alpha)   # [N, K]
        self.weight = w.to(dtype).contiguous()
        c = ctx.const(node.input(2))
        self.bias: Optional[Tensor] = None
        if c is not None and float(g.beta) != 0.0:
            self.bias = (c.double() * float(g.beta)).reshape(-1).to(dtype).expand(w.shape[0]).contiguous()
        self.trans_a = g.trans_a

    def a(self, x: Tensor) -> Tensor:
        return x.transpose(-1, -2) if self.trans_a else x


def _out_matrix(out: Tensor, n: int) -> Optional[Tensor]:
    """``out`` (``[..., n]``) as the ``[rows, n]`` matrix cuBLAS writes as it is: row-major with
    row stride ``>= n`` (``prepare_matrix_for_cublas`` keeps it, ``ldc`` = row stride), its
    leading dims collapsing into one stride; ``None`` otherwise. Works on meta tensors."""
    if out.dim() < 2 or out.shape[-1] != n:
        return None
    rows = math.prod(out.shape[:-1])
    try:
        m = out.view(rows, n)
    except RuntimeError:  # leading dims not expressible as one stride
        return None
    return m if m.stride(1) == 1 and (rows <= 1 or m.stride(0) >= n) else None


def _linear_input(x: Tensor, bias: bool) -> Optional[Tensor]:
    """``x`` (``[..., K]``) as the matrix ``F.linear`` hands to its single GEMM, or ``None`` where
    ``F.linear`` runs something else (``at::linear``): a 2-D input as it is; with a bias, a
    contiguous N-D input flattened (``addmm``); without, an N-D input whose leading dims fold
    into one stride (``matmul``'s ``should_fold``: ``mm``). Others go through ``bmm``."""
    if x.dim() == 2:
        return x
    if x.dim() < 2:
        return None
    if bias:
        ok = x.is_contiguous()
    else:
        ok = x.numel() == 0 or all(x.stride(i) == x.stride(i + 1) * x.shape[i + 1] for i in range(x.dim() - 2))
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if ok else None


Gemm2d = Callable[[Tensor, Tensor], bool]


def _linear_write_into(lin: Linear, dtype: torch.dtype, prec: str, packed: bool, gemm: Gemm2d) -> WriteInto:
    """The ``WriteInto`` shared by the linear tactics: ``gemm(x, out2)`` computes the product of
    the (cast, maybe transposed) input ``x`` into ``out2``, the ``[rows, N]`` matrix of ``out``
    (``_out_matrix``), and returns ``False`` when it cannot (nothing written). ``accepts``: the
    layer's dtype, ``N`` columns, a matrix cuBLAS writes as it is, and contiguous if ``packed``."""
    n = int(lin.weight.shape[0])

    def matrix(out: Tensor) -> Optional[Tensor]:
        ok = out.dtype == dtype and (not packed or out.is_contiguous())
        return _out_matrix(out, n) if ok else None

    def write(inputs, out: Tensor) -> bool:
        x, out2 = inputs[0], matrix(out)
        if x is None or out2 is None or x.dim() < 2 or out.device != x.device:
            return False
        x = lin.a(cast_float(x, dtype))
        if x.dtype != dtype or tuple(out.shape) != (*x.shape[:-1], n):
            return False
        with tf32_scope(prec):
            return gemm(x, out2)

    return WriteInto(write, lambda out: matrix(out) is not None)


def linear_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """B constant 2-D and C absent or a constant broadcastable along N (a bias vector)."""
    if graph is None or node.input(1) not in graph.constants:
        return False
    b = graph.constants[node.input(1)]
    if b.ndim != 2:
        return False
    g = gemm_attrs(node)
    c_name = node.input(2)
    if c_name and g.beta != 0:
        c = graph.constants.get(c_name)
        n = b.shape[0] if g.trans_b else b.shape[1]
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return False
    return True


def gemm_attrs(node: Node) -> GemmAttrs:
    """The ``GemmAttrs`` of a Gemm, MatMul (defaults) or FusedGemm node."""
    a = node.attrs
    if isinstance(a, FusedGemmAttrs):
        return a.gemm
    if isinstance(a, GemmAttrs):
        return a
    return GemmAttrs()


def gemm_activation(node: Node) -> tuple[Activation, tuple[float, ...]]:
    """A FusedGemm's epilogue activation and its parameters (``NONE`` for Gemm and MatMul)."""
    a = node.attrs
    if isinstance(a, FusedGemmAttrs):
        return a.activation, tuple(a.act_params)
    return Activation.NONE, ()


@register_cuda_kernel(OpType.GEMM, "cublas", rank=0, when=linear_applies)
@register_cuda_kernel(OpType.MATMUL, "cublas", rank=0, when=linear_applies)
@register_cuda_kernel(OpType.FUSED_GEMM, "cublas", rank=0, when=linear_applies)
def linear_cublas(node: Node, ctx: CompileContext) -> Kernel:
    """``F.linear`` with the prepared weight and bias; the activation (if any) after."""
    dtype = compute_dtype(ctx.precision)
    lin = Linear(node, ctx, gemm_attrs(node), dtype)
    act, params = gemm_activation(node)
    act_fn, prec = activation_fn(act, params), ctx.precision

    def run(inputs) -> list:
        x = lin.a(cast_float(inputs[0], dtype))
        with tf32_scope(prec):
            y = F.linear(x, lin.weight, lin.bias)
        if act is Activation.RELU:
            y.relu_()
        elif act_fn is not None:
            y = act_fn(y)
        return [y]

    act_ = inplace_activation(act, params)
    if act_ is None:
        return run
    w_t = lin.weight.t()

    def gemm(x: Tensor, out2: Tensor) -> bool:
        x2 = _linear_input(x, lin.bias is not None)
        if x2 is None:
            return False
        if lin.bias is not None:
            torch.addmm(lin.bias, x2, w_t, out=out2)
        else:
            torch.mm(x2, w_t, out=out2)
        act_(out2)
        return True

    return with_write_into(run, _linear_write_into(lin, dtype, prec, False, gemm))


#: The cuBLASLt epilogues (``ActivationRow.cublaslt``) ``torch._addmm_activation`` exposes, with
#: its ``use_gelu`` for each: bias + ReLU and bias + tanh-GELU only (no plain bias, no erf GELU).
_ADDMM_ACTIVATION_EPILOGUES = {"RELU_BIAS": False, "GELU_BIAS": True}


def _lt_epilogue(act: Activation) -> Optional[bool]:
    """``use_gelu`` of ``torch._addmm_activation`` for ``act``, or ``None`` when it has no such
    cuBLASLt epilogue."""
    return _ADDMM_ACTIVATION_EPILOGUES.get(ACTIVATIONS[act].cublaslt or "")


def _lt_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    a = node.attrs
    return (isinstance(a, FusedGemmAttrs) and _lt_epilogue(a.activation) is not None
            and bool(node.input(2)) and linear_applies(node, graph))


@register_cuda_kernel(OpType.FUSED_GEMM, "cublaslt_epilogue", rank=10, when=_lt_applies)
def linear_cublaslt(node: Node, ctx: CompileContext) -> Kernel:
    """Bias + ReLU (or tanh-GELU) in the cuBLASLt epilogue: one kernel, no extra pass."""
    return _cublaslt_kernel(node, ctx, bool(_lt_epilogue(gemm_activation(node)[0])))


#: The largest difference between erf GELU and its tanh approximation, over all inputs (at x = 2.70).
GELU_TANH_MAX_ERROR = 4.8e-4


def _gelu_tanh_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """An erf-GELU FusedGemm with a bias, in a half-precision layer."""
    a = node.attrs
    return (isinstance(a, FusedGemmAttrs) and a.activation is Activation.GELU_ERF and bool(node.input(2))
            and records is not None and linear_applies(node, graph)
            and records.precision.of(node.name, Precision.FP32) in (Precision.FP16, Precision.BF16))


@register_cuda_kernel(OpType.FUSED_GEMM, "cublaslt_gelu_tanh", rank=40, when=_gelu_tanh_applies)
def linear_cublaslt_gelu_tanh(node: Node, ctx: CompileContext) -> Kernel:
    """An fp16/bf16 erf-GELU layer through cuBLASLt's tanh-GELU epilogue: GELU's tanh
    approximation differs from erf GELU by at most ``GELU_TANH_MAX_ERROR`` (4.7e-4 at x = 2.7,
    a quarter of fp16's spacing there; it moves fp16 results by at most one unit in the last
    place) and fuses into the GEMM, where erf GELU costs a second pass over the output (BERT-base's
    FFN-in at batch 128 on the H100: 0.142 against 0.198 ms). Offered to half-precision layers
    only (an fp32 layer keeps erf) and last among the tactics, so only the tactic timer picks it."""
    return _cublaslt_kernel(node, ctx, True)


def _cublaslt_kernel(node: Node, ctx: CompileContext, gelu: bool) -> Kernel:
    dtype = compute_dtype(ctx.precision)
    lin = Linear(node, ctx, gemm_attrs(node), dtype)
    w_t, prec = lin.weight.t(), ctx.precision

    # cuBLASLt's half-precision RELU_BIAS epilogue turns NaN into 0 (measured on the H100,
    # bench/probes/cuda_nan.py; fp32's keeps it): there, bias in the epilogue, ReLU in place after
    relu_after = not gelu and dtype != torch.float32

    def run(inputs) -> list:
        x = lin.a(cast_float(inputs[0], dtype))
        lead = x.shape[:-1]
        with tf32_scope(prec):
            if relu_after:
                y = torch.addmm(lin.bias, x.reshape(-1, x.shape[-1]), w_t).relu_()
            else:
                y = torch._addmm_activation(lin.bias, x.reshape(-1, x.shape[-1]), w_t, use_gelu=gelu)
        return [y.reshape(*lead, y.shape[-1])]

    def gemm(x: Tensor, out2: Tensor) -> bool:
        if relu_after:
            torch.addmm(lin.bias, x.reshape(-1, x.shape[-1]), w_t, out=out2).relu_()
        else:
            torch._addmm_activation(lin.bias, x.reshape(-1, x.shape[-1]), w_t, use_gelu=gelu, out=out2)
        return True

    return with_write_into(run, _linear_write_into(lin, dtype, prec, True, gemm))


def _triton_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    from ember.backends.cuda.libs.triton_ops import EPILOGUE_ACTIVATIONS

    a = node.attrs
    return (isinstance(a, FusedGemmAttrs) and a.activation in EPILOGUE_ACTIVATIONS
            and a.activation is not Activation.NONE and linear_applies(node, graph))


@register_cuda_kernel(OpType.FUSED_GEMM, "cublas_triton", rank=20, when=_triton_applies,
                      needs_triton=True)
def linear_triton_epilogue(node: Node, ctx: CompileContext) -> Kernel:
    """cuBLAS product without bias, then Ember's Triton bias + activation pass (e.g. exact GELU)."""
    from ember.backends.cuda.libs.triton_ops import bias_act_

    dtype = compute_dtype(ctx.precision)
    lin = Linear(node, ctx, gemm_attrs(node), dtype)
    act, params = gemm_activation(node)
    prec = ctx.precision

    def run(inputs) -> list:
        x = lin.a(cast_float(inputs[0], dtype))
        with tf32_scope(prec):
            y = F.linear(x, lin.weight)
        return [bias_act_(y, lin.bias, None, act, params)]

    w_t = lin.weight.t()

    def gemm(x: Tensor, out2: Tensor) -> bool:
        x2 = _linear_input(x, False)
        if x2 is None:
            return False
        torch.mm(x2, w_t, out=out2)
        return True

    write_gemm = _linear_write_into(lin, dtype, prec, True, gemm)

    def write(inputs, out: Tensor) -> bool:
        # the epilogue runs on ``out`` itself (the shape ``run`` gives it): packed, it is
        # updated in place, as ``y`` is
        if not write_gemm(inputs, out):
            return False
        bias_act_(out, lin.bias, None, act, params)
        return True

    return with_write_into(run, WriteInto(write, write_gemm.accepts))


def _fused_triton_gemm_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """An activation cuBLASLt cannot fuse (erf GELU, SiLU, clip, ...), that Triton's epilogue
    computes; the product of a constant weight and an untransposed input."""
    return (_triton_applies(node, graph, records) and _lt_epilogue(node.attrs.activation) is None
            and not gemm_attrs(node).trans_a)


def _triton_gemm_factory(config: TileConfig) -> Callable[[Node, CompileContext], Kernel]:
    def linear_triton_gemm(node: Node, ctx: CompileContext) -> Kernel:
        """One Triton GEMM with bias and activation fused (``libs.triton_gemm``); fp32 layers
        multiply in full precision, tf32 layers in TF32."""
        from ember.backends.cuda.libs.triton_gemm import linear

        dtype = compute_dtype(ctx.precision)
        tf32 = ctx.precision == Precision.TF32
        lin = Linear(node, ctx, gemm_attrs(node), dtype)
        act, params = gemm_activation(node)
        n, k = (int(d) for d in lin.weight.shape)

        def run(inputs) -> list:
            x = cast_float(inputs[0], dtype)
            lead = tuple(x.shape[:-1])
            y = linear(x.reshape(-1, k), lin.weight, lin.bias, act=act, act_params=params, config=config, tf32=tf32)
            return [y.reshape(*lead, n)]

        def gemm(x: Tensor, out2: Tensor) -> bool:
            linear(x.reshape(-1, k), lin.weight, lin.bias, act=act, act_params=params, config=config, out=out2,
                   tf32=tf32)
            return True

        return with_write_into(run, _linear_write_into(lin, dtype, ctx.precision, False, gemm))

    return linear_triton_gemm


def _register_triton_gemms() -> None:
    from ember.backends.cuda.libs.triton_gemm import CONFIGS

    for i, config in enumerate(CONFIGS):
        register_cuda_kernel(OpType.FUSED_GEMM, f"triton_gemm_{config.name}", rank=25 + i,
                             when=_fused_triton_gemm_applies, needs_triton=True)(_triton_gemm_factory(config))


_register_triton_gemms()


@register_cuda_kernel(OpType.GEMM, "matmul", rank=50)
@register_cuda_kernel(OpType.FUSED_GEMM, "matmul", rank=50)
def gemm_general(node: Node, ctx: CompileContext) -> Kernel:
    """Any Gemm/FusedGemm (B or C computed at run time, C of any broadcastable shape)."""
    dtype = compute_dtype(ctx.precision)
    g = gemm_attrs(node)
    act, params = gemm_activation(node)
    act_fn, prec = activation_fn(act, params), ctx.precision

    def run(inputs) -> list:
        a, b, c = cast_inputs([inputs[0], inputs[1], arg(inputs, 2)], dtype)
        with tf32_scope(prec):
            y = gemm_value(a, b, c, g)
        return [act_fn(y) if act_fn is not None else y]

    return run


@register_cuda_kernel(OpType.MATMUL, "matmul", rank=50)
def matmul_general(node: Node, ctx: CompileContext) -> Kernel:
    """``torch.matmul`` with numpy semantics (batched, broadcast, 1-D operands)."""
    dtype = compute_dtype(ctx.precision)
    prec = ctx.precision

    def run(inputs) -> list:
        a, b = cast_inputs([inputs[0], inputs[1]], dtype)
        with tf32_scope(prec):
            return [torch.matmul(a, b)]

    def accepts(out: Tensor) -> bool:
        return out.dim() >= 2 and out.dtype == dtype and out.is_contiguous()

    def write(inputs, out: Tensor) -> bool:
        """``torch.matmul(a, b, out=out)``: for operands of 2+ dims and a contiguous ``out`` of
        the result's shape it runs ``run``'s ``mm`` (folded) or ``bmm`` into views of ``out``
        (``at::_matmul_impl``); 1-D operands go through ``dot``/``mv``/an ``out`` resize."""
        a, b = cast_inputs([inputs[0], inputs[1]], dtype)
        if a is None or b is None or a.dim() < 2 or b.dim() < 2 or not accepts(out) \
                or a.dtype != out.dtype or b.dtype != out.dtype or out.device != a.device \
                or a.shape[-1] != b.shape[-2]:
            return False
        try:
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            return False
        if tuple(out.shape) != (*batch, a.shape[-2], b.shape[-1]):
            return False
        with tf32_scope(prec):
            torch.matmul(a, b, out=out)
        return True

    return with_write_into(run, WriteInto(write, accepts))
