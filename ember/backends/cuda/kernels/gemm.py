"""Matrix products on cuBLAS: Gemm, MatMul and FusedGemm (bias + activation epilogues).

A constant B is transposed once at compile time into the ``[N, K]`` row-major layout that
``F.linear`` hands to cuBLAS, with ``alpha`` and ``beta`` folded into it and the bias. FusedGemm
tactics:

- ``cublas``: ``F.linear`` with the bias (cuBLAS's own bias epilogue), activation after.
- ``cublaslt_epilogue``: ``torch._addmm_activation`` (cuBLASLt bias + ReLU / tanh-GELU epilogue).
- ``cublas_triton``: ``F.linear`` without bias, then one Triton pass for bias + activation.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import activation_fn, arg
from ember.backends.cpu.kernels.linalg import gemm_value
from ember.backends.cuda.device import cast_float, cast_inputs, compute_dtype, tf32_scope
from ember.backends.cuda.registry import register_cuda_kernel
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs

Tensor = torch.Tensor


class _Linear:
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


def _linear_applies(node: Node, graph: Optional[Graph]) -> bool:
    """B constant 2-D and C absent or a constant broadcastable along N (a bias vector)."""
    if graph is None or node.input(1) not in graph.constants:
        return False
    b = graph.constants[node.input(1)]
    if b.ndim != 2:
        return False
    g = _gemm_attrs(node)
    c_name = node.input(2)
    if c_name and g.beta != 0:
        c = graph.constants.get(c_name)
        n = b.shape[0] if g.trans_b else b.shape[1]
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return False
    return True


def _gemm_attrs(node: Node) -> GemmAttrs:
    a = node.attrs
    if isinstance(a, FusedGemmAttrs):
        return a.gemm
    if isinstance(a, GemmAttrs):
        return a
    return GemmAttrs()


def _act(node: Node) -> tuple[Activation, tuple[float, ...]]:
    a = node.attrs
    if isinstance(a, FusedGemmAttrs):
        return a.activation, tuple(a.act_params)
    return Activation.NONE, ()


@register_cuda_kernel(OpType.GEMM, "cublas", rank=0, when=_linear_applies)
@register_cuda_kernel(OpType.MATMUL, "cublas", rank=0, when=_linear_applies)
@register_cuda_kernel(OpType.FUSED_GEMM, "cublas", rank=0, when=_linear_applies)
def linear_cublas(node: Node, ctx: CompileContext) -> Kernel:
    """``F.linear`` with the prepared weight and bias; the activation (if any) after."""
    dtype = compute_dtype(ctx.precision)
    lin = _Linear(node, ctx, _gemm_attrs(node), dtype)
    act, params = _act(node)
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

    return run


def _lt_applies(node: Node, graph: Optional[Graph]) -> bool:
    a = node.attrs
    return (isinstance(a, FusedGemmAttrs) and a.activation in (Activation.RELU, Activation.GELU_TANH)
            and bool(node.input(2)) and _linear_applies(node, graph))


@register_cuda_kernel(OpType.FUSED_GEMM, "cublaslt_epilogue", rank=10, when=_lt_applies)
def linear_cublaslt(node: Node, ctx: CompileContext) -> Kernel:
    """Bias + ReLU (or tanh-GELU) in the cuBLASLt epilogue: one kernel, no extra pass."""
    dtype = compute_dtype(ctx.precision)
    lin = _Linear(node, ctx, _gemm_attrs(node), dtype)
    gelu = _act(node)[0] is Activation.GELU_TANH
    w_t, prec = lin.weight.t(), ctx.precision

    def run(inputs) -> list:
        x = lin.a(cast_float(inputs[0], dtype))
        lead = x.shape[:-1]
        with tf32_scope(prec):
            y = torch._addmm_activation(lin.bias, x.reshape(-1, x.shape[-1]), w_t, use_gelu=gelu)
        return [y.reshape(*lead, y.shape[-1])]

    return run


def _triton_applies(node: Node, graph: Optional[Graph]) -> bool:
    from ember.backends.cuda.triton_ops import EPILOGUE_ACTIVATIONS

    a = node.attrs
    return (isinstance(a, FusedGemmAttrs) and a.activation in EPILOGUE_ACTIVATIONS
            and a.activation is not Activation.NONE and _linear_applies(node, graph))


@register_cuda_kernel(OpType.FUSED_GEMM, "cublas_triton", rank=20, when=_triton_applies,
                      needs_triton=True)
def linear_triton_epilogue(node: Node, ctx: CompileContext) -> Kernel:
    """cuBLAS product without bias, then Ember's Triton bias + activation pass (e.g. exact GELU)."""
    from ember.backends.cuda.triton_ops import bias_act_

    dtype = compute_dtype(ctx.precision)
    lin = _Linear(node, ctx, _gemm_attrs(node), dtype)
    act, params = _act(node)
    prec = ctx.precision

    def run(inputs) -> list:
        x = lin.a(cast_float(inputs[0], dtype))
        with tf32_scope(prec):
            y = F.linear(x, lin.weight)
        return [bias_act_(y, lin.bias, None, act, params)]

    return run


@register_cuda_kernel(OpType.GEMM, "matmul", rank=50)
@register_cuda_kernel(OpType.FUSED_GEMM, "matmul", rank=50)
def gemm_general(node: Node, ctx: CompileContext) -> Kernel:
    """Any Gemm/FusedGemm (B or C computed at run time, C of any broadcastable shape)."""
    dtype = compute_dtype(ctx.precision)
    g = _gemm_attrs(node)
    act, params = _act(node)
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

    return run
