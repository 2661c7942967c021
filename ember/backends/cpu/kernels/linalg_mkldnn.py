"""oneDNN fast path for Gemm / MatMul / FusedGemm whose weight is a constant.

The weight is transposed to ``[N, K]``, scaled by ``alpha`` and reordered to oneDNN's blocked
layout once, at compile time; ``mkldnn._linear_pointwise`` then runs the product with the bias
and the activation fused. Measured on the 2-core AVX-512 machine at BERT-base shapes
(128 x 768 x 3072), this runs at the machine's peak, about 20 % ahead of MKL's ``sgemm``
(``torch.matmul`` / ``addmm``) and of MKL's own packed GEMM.

Half precision: in a bf16 (fp16) layer the weight is converted before the reorder, the input and
output are 16-bit and the bias stays float32 (oneDNN adds it to its float32 accumulator): a
128x768x3072 product runs on AMX (``brg_matmul:avx10_1_512_amx``) about 4.5x faster than fp32
(``bench/probes/cpu_bf16.py``). ``mkldnn_prepacked_fp32`` is the fp32 alternative of a half
layer, for tuned builds to time.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from ember.backends.activations import NO_POSTOP, OneDNNPostOp, activation_after, onednn_postop
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.half import (
    finite_or_exact,
    finite_postop,
    finite_safe,
    half_applies,
    layer_dtype,
    owns_constants,
)
from ember.backends.cpu.kernels.common import Inputs, arg, const_input
from ember.backends.cpu.registry import register_kernel
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.plan.records import Records

#: Post-ops of the activation table that ``_linear_pointwise`` is not given (the convolution
#: takes hardsigmoid; the linear layer was never offered it and applies it after the call).
_NOT_FUSED = frozenset({Activation.HARD_SIGMOID})


def _linear_postop(act: Activation, params: tuple[float, ...]) -> Optional[OneDNNPostOp]:
    """The post-op the prepacked linear layer fuses for ``act``, or ``None`` (applied after)."""
    return None if act in _NOT_FUSED else onednn_postop(act, params)


@functools.cache
def linear_available() -> bool:
    """Whether this PyTorch has oneDNN's linear with prepacked weights."""
    try:
        ops = torch.ops.mkldnn
        return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                and hasattr(ops, "_reorder_linear_weight"))
    except (AttributeError, RuntimeError):
        return False


def _gemm_parts(node: Node) -> tuple[GemmAttrs, Activation, tuple[float, ...]]:
    a = node.attrs
    if isinstance(a, FusedGemmAttrs):
        return a.gemm, a.activation, tuple(a.act_params)
    if isinstance(a, GemmAttrs):
        return a, Activation.NONE, ()
    return GemmAttrs(), Activation.NONE, ()  # MatMul


def _rank(graph: Graph, name: str) -> Optional[int]:
    t = graph.types.get(name)
    return t.rank if t is not None else None


def linear_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """Float32 products (a half layer's too: the graph keeps float32 types) whose right operand
    is a constant matrix and left operand has rank >= 2."""
    if not linear_available() or graph is None or not const_input(node, graph, 1):
        return False
    b = graph.constants[node.input(1)]
    if b.ndim != 2 or str(b.dtype) != "float32":
        return False
    t = graph.types.get(node.input(0))
    if t is None or t.dtype is not DType.FLOAT32 or t.rank < 2:
        return False
    g, _, _ = _gemm_parts(node)
    return not (g.trans_a and t.rank != 2)


def _bias(c: Optional[torch.Tensor], beta: float,
          n: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(bias fused as a length-N vector, or a constant term added afterwards)."""
    if c is None or beta == 0:
        return None, None
    c = c * beta if beta != 1.0 else c
    if c.numel() == n and (c.dim() == 1 or all(d == 1 for d in c.shape[:-1])):
        return c.reshape(n).contiguous(), None
    if c.numel() == 1:
        return c.reshape(1).expand(n).contiguous(), None
    return None, c


def _batch(node: Node, graph: Graph) -> Optional[int]:
    t = graph.types.get(node.input(0))
    if t is None or not t.is_static:
        return None
    return math.prod(t.shape[:-1]) if t.rank > 2 else int(t.shape[0])


def linear_fp32_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """``linear_applies`` to a half layer: its fp32 alternative."""
    return half_applies(node, records) and linear_applies(node, graph, records)


def prepacked_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """``linear_applies``, but not to an fp32 layer of one row (a batch-1 classifier): a GEMV reads
    each weight once, and MKL's (the ``aten`` tactic) does it from the plain row-major weight
    faster than oneDNN from its blocked one, the weights cold after the layers before it
    (MobileNetV2 batch 1: 4.93 -> 4.77 ms; ResNet-50 34.59 -> 34.34; GoogLeNet 19.85 -> 19.62)."""
    if not linear_applies(node, graph, records):
        return False
    return half_applies(node, records) or graph is None or _batch(node, graph) != 1


@register_kernel(OpType.GEMM, tactic="mkldnn_prepacked", rank=10, when=prepacked_applies)
@register_kernel(OpType.MATMUL, tactic="mkldnn_prepacked", rank=10, when=prepacked_applies)
@register_kernel(OpType.FUSED_GEMM, tactic="mkldnn_prepacked", rank=10, when=prepacked_applies)
def linear_prepacked(node: Node, ctx: CompileContext) -> Kernel:
    """``act(alpha * a @ op(b) + beta * c)`` with ``op(b)`` prepacked for oneDNN here (in the
    layer's dtype)."""
    return _linear_prepacked(node, ctx, layer_dtype(ctx))


@register_kernel(OpType.GEMM, tactic="mkldnn_prepacked_fp32", rank=15, when=linear_fp32_applies)
@register_kernel(OpType.MATMUL, tactic="mkldnn_prepacked_fp32", rank=15, when=linear_fp32_applies)
@register_kernel(OpType.FUSED_GEMM, tactic="mkldnn_prepacked_fp32", rank=15, when=linear_fp32_applies)
def linear_prepacked_fp32(node: Node, ctx: CompileContext) -> Kernel:
    """A half layer's product computed in fp32 (input converted; the output converted back by
    ``ember.backends.cpu.half``)."""
    return _linear_prepacked(node, ctx, torch.float32)


def _linear_prepacked(node: Node, ctx: CompileContext, dtype: torch.dtype) -> Kernel:
    g, act, params = _gemm_parts(node)
    b = ctx.const(node.input(1))
    w = (b if g.trans_b else b.t()).contiguous()  # [N, K], as a linear layer stores it
    if g.alpha != 1.0:
        w = w * float(g.alpha)
    w = w.to(dtype)
    n = w.shape[0]
    c_name = node.input(2) if node.op is not OpType.MATMUL else ""
    c_const = ctx.const(c_name)
    bias, extra = _bias(c_const, float(g.beta), n) if c_const is not None else (None, None)
    if extra is not None:
        extra = extra.to(dtype)
    runtime_c = bool(c_name) and c_const is None and g.beta != 0
    packed = torch.ops.mkldnn._reorder_linear_weight(w, _batch(node, ctx.graph))
    beta, trans_a = float(g.beta), g.trans_a
    linear = torch.ops.mkldnn._linear_pointwise

    def build(fused: Optional[OneDNNPostOp]) -> Kernel:
        """The kernel with ``fused`` as oneDNN's post-op (``None``: the activation after the call)."""
        # the epilogue must come after every addend: fuse it only when nothing is added later
        if fused is None or extra is not None or runtime_c:
            unary, scalars, algorithm = NO_POSTOP.args()
            post = activation_after(act, params)
        else:
            (unary, scalars, algorithm), post = fused.args(), None

        def run(inputs: Inputs) -> list:
            x = inputs[0].t() if trans_a else inputs[0]
            if x.dtype != dtype:
                x = x.to(dtype)
            y = linear(x, packed, bias, unary, scalars, algorithm)
            if extra is not None:
                y = y + extra
            if runtime_c:
                c = arg(inputs, 2)
                if c is not None:
                    y = y + (c * beta if beta != 1.0 else c).to(dtype)
            return [post(y) if post is not None else y]

        return run

    exact = _linear_postop(act, params)
    run = build(exact)
    fast = exact
    if dtype != torch.float32 and finite_safe(node, ctx.graph) and act not in _NOT_FUSED:
        fast = finite_postop(act, params)
    if fast != exact:  # a half layer: the epilogue fused when the run's inputs are finite
        run = finite_or_exact(build(fast), run)
    return run


owns_constants((OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM), ("mkldnn_prepacked", "mkldnn_prepacked_fp32"),
               (1, 2))
