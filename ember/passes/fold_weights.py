"""Folding per-channel affine maps into the weights of the linear layer before them.

``BatchNorm(conv(x, w, b))`` is ``conv(x, w * s, b * s + t)`` with ``s = gamma / sqrt(var + eps)``
and ``t = beta - mean * s``; the same holds for ConvTranspose (output channels on axis 1 of its
weight), Gemm and 2-D MatMul (output features on the last axis). A Mul by a constant that is
per output channel (or a scalar) scales the weights and bias; an Add/Sub of such a constant goes
into the bias. Both are exact up to float rounding. Nothing folds when a parameter is not a
constant or the layer's output has another reader.

A weight dequantized from int8 in a Q/DQ model (its ``source="qdq"`` record: per output channel
or per tensor, zero point 0) stays an int8 weight: scaling output channel ``c`` by ``k_c`` keeps
its int8 values (up to sign) and multiplies its scale by ``|k_c|``, so the folded weight gets that
per-channel record (``_carry_weight_record``) and ``quantize_layers`` still makes the layer INT8.
Without it, a QDQ model whose Conv is followed by BatchNormalization (``ember quantize`` of a
model with BatchNorm, ONNX Runtime's ``quantize_static`` without ``quant_pre_process``) ran its
convolutions in fp32.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, GemmAttrs
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.rewrite import Const, Match, Op, Rule, apply_rules
from ember.plan.records import QuantDType, QuantRecord

CARRIED = "int8 weight scaled per channel keeps its Q/DQ record"

CONV_OPS = frozenset({OpType.CONV, OpType.CONV_TRANSPOSE, OpType.FUSED_CONV})
GEMM_OPS = frozenset({OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM})
LINEAR_OPS = CONV_OPS | GEMM_OPS


def channel_axis(node: Node, rank: int) -> int:
    """The output axis that carries the layer's output channels/features."""
    return 1 if node.op in CONV_OPS else rank - 1


def per_channel(c: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``c`` as a vector of ``channels`` values when it broadcasts along ``axis`` only."""
    if c.ndim > rank or not np.issubdtype(c.dtype, np.floating):
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)


def _channels(m: Match, lin: Node) -> int | None:
    w = m.view.const(lin.input(1))
    if w is None:
        return None
    if lin.op is OpType.CONV_TRANSPOSE:
        group: int = lin.attrs.group
        return int(w.shape[1]) * group
    axis = _weight_out_axis(lin, w)
    return None if axis is None else int(w.shape[axis])


def _gemm(lin: Node) -> GemmAttrs:
    return lin.attrs.gemm if lin.op is OpType.FUSED_GEMM else (lin.attrs or GemmAttrs())


def _plain(lin: Node) -> bool:
    """A fused layer takes a folded affine only before its epilogue does anything."""
    if lin.op is OpType.FUSED_CONV:
        return lin.attrs.activation is Activation.NONE and not lin.attrs.has_residual
    if lin.op is OpType.FUSED_GEMM:
        return lin.attrs.activation is Activation.NONE
    return True


def _scaled_weight(lin: Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    out: np.ndarray  # numpy's stubs type a product of two dtype-Any arrays as Any
    if lin.op in (OpType.CONV, OpType.FUSED_CONV):
        out = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif lin.op is OpType.CONV_TRANSPOSE:
        g: int = lin.attrs.group
        cin_g, cout_g = w.shape[0] // g, w.shape[1]
        ws = w.reshape((g, cin_g, cout_g) + w.shape[2:])
        out = (ws * s.reshape((g, 1, cout_g) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif lin.op is not OpType.MATMUL and _gemm(lin).trans_b:
        out = w * s[:, None]
    else:
        out = w * s[None, :]
    return out.astype(w.dtype)


def fold_affine(m: Match, lin: Node, s: np.ndarray | None,
                t: np.ndarray | None) -> list[Node] | None:
    """``lin(x) * s + t`` (per output channel vectors) as one layer with folded constants."""
    w = m.view.const(lin.input(1))
    if w is None or not _plain(lin):
        return None
    dtype = w.dtype
    new_w = _scaled_weight(lin, w, s) if s is not None else w
    bias_name = lin.input(2)
    bias = m.view.const(bias_name) if bias_name else None
    if bias_name and bias is None:
        return None
    ins = [lin.inputs[0], m.add_constant(f"{lin.name}_w", new_w) if s is not None else lin.inputs[1]]
    if s is not None:
        _carry_weight_record(m, lin, w, ins[1], s)
    if lin.op in CONV_OPS:
        vec = s if s is not None else t
        if vec is None:
            return None
        b = bias.astype(np.float64) if bias is not None else np.zeros(len(vec))
        b = b * (s if s is not None else 1.0) + (t if t is not None else 0.0)
        ins.append(m.add_constant(f"{lin.name}_b", b.astype(dtype)))
        return [m.fuse(lin.op, ins, lin.attrs)]
    g = _gemm(lin)
    c: np.ndarray | float | None = None if bias is None else g.beta * bias.astype(np.float64)
    if c is not None or t is not None:
        c = (0.0 if c is None else c) * (s if s is not None else 1.0) + (0.0 if t is None else t)
    if lin.op is OpType.MATMUL:
        if c is None:
            return [m.fuse(OpType.MATMUL, ins)]
        if m.type(lin.inputs[0]).rank != 2 or w.ndim != 2:
            return None  # an N-D MatMul + bias is the gemm fusion's job
        ins.append(m.add_constant(f"{lin.name}_c", np.asarray(c, dtype=dtype)))
        return [m.fuse(OpType.GEMM, ins, GemmAttrs())]
    if c is not None:
        ins.append(m.add_constant(f"{lin.name}_c", np.asarray(c, dtype=dtype)))
    new_g = dataclasses.replace(g, beta=1.0) if c is not None else g
    attrs = dataclasses.replace(lin.attrs, gemm=new_g) if lin.op is OpType.FUSED_GEMM else new_g
    return [m.fuse(lin.op, ins, attrs)]


def _weight_out_axis(lin: Node, w: np.ndarray) -> int | None:
    """The axis of ``lin``'s weight that holds its output channels (``None``: ConvTranspose,
    whose grouped output channels span two axes)."""
    if lin.op in (OpType.CONV, OpType.FUSED_CONV):
        return 0
    if lin.op is OpType.CONV_TRANSPOSE or w.ndim != 2:
        return None
    return 0 if lin.op is not OpType.MATMUL and _gemm(lin).trans_b else 1


def _carry_weight_record(m: Match, lin: Node, w: np.ndarray, new_name: str, s: np.ndarray) -> None:
    """The folded weight ``new_name`` (``w`` with output channel ``c`` times ``s[c]``) keeps the
    int8 Q/DQ record of ``w``, its scales times ``|s[c]|`` (module docstring)."""
    ctx = m.ctx
    plan = ctx.records.quantization if ctx is not None else None
    rec = plan.get(lin.input(1)) if plan is not None else None
    axis = _weight_out_axis(lin, w)
    if (ctx is None or plan is None or rec is None or axis is None or rec.source != "qdq"
            or rec.dtype is not QuantDType.INT8 or any(rec.zero_point)):
        return
    channels = int(w.shape[axis])
    if rec.axis is None:
        base = np.full(channels, rec.scale[0], np.float64)
    elif rec.axis == axis and len(rec.scale) == channels:
        base = np.asarray(rec.scale, np.float64)
    else:
        return
    tiny = float(np.finfo(np.float32).eps)  # a channel scaled by 0 is all zeros
    scales = np.maximum(base * np.abs(s), tiny)
    carried = QuantRecord(new_name, QuantDType.INT8, tuple(scales.tolist()), (0,) * channels, axis, "qdq")
    ctx.records = ctx.records.with_(quantization=dataclasses.replace(plan, tensors={**plan.tensors,
                                                                                    new_name: carried}))
    ctx.count(CARRIED)


def _vector(m: Match, lin: Node, name: str) -> np.ndarray | None:
    channels = _channels(m, lin)
    out_t = m.type(m.root.outputs[0])
    if channels is None or out_t != m.type(lin.outputs[0]):
        return None  # the constant must not broadcast the layer's output to a larger shape
    rank = out_t.rank
    return per_channel(m.const(name), rank, channel_axis(lin, rank), channels)


def _fold_bn(m: Match) -> list[Node] | None:
    lin, bn = m.node("lin"), m.root
    rank = m.type(lin.outputs[0]).rank
    if channel_axis(lin, rank) != 1 or _channels(m, lin) is None:
        return None  # BatchNorm normalizes axis 1; a gemm's features must be there (rank 2)
    channels = _channels(m, lin)
    params = [m.const(k).astype(np.float64).reshape(-1) for k in ("gamma", "beta", "mean", "var")]
    if any(p.shape != (channels,) for p in params):
        return None
    gamma, beta, mean, var = params
    s = gamma / np.sqrt(var + bn.attrs.epsilon)
    return fold_affine(m, lin, s, beta - mean * s)


def _fold_mul(m: Match) -> list[Node] | None:
    s = _vector(m, m.node("lin"), "c")
    return None if s is None else fold_affine(m, m.node("lin"), s, None)


def _fold_add(m: Match) -> list[Node] | None:
    lin = m.node("lin")
    if lin.op is OpType.MATMUL:
        return None  # MatMul + bias becomes a FusedGemm in the fuse phase
    t = _vector(m, lin, "c")
    if t is None:
        return None
    return fold_affine(m, lin, None, -t if m.root.op is OpType.SUB else t)


def _lin(name: str = "lin") -> Op:
    return Op(LINEAR_OPS, name=name)


BN_INTO_LINEAR = Rule(
    "batchnorm(conv(x, w, b)) => conv(x, w * s, b * s + t)",
    Op(OpType.BATCH_NORM, (_lin(), Const("gamma"), Const("beta"), Const("mean"), Const("var"))),
    _fold_bn)
MUL_INTO_LINEAR = Rule("conv(x, w, b) * c => conv(x, w * c, b * c)",
                       Op(OpType.MUL, (_lin(), Const("c"))), _fold_mul)
ADD_INTO_LINEAR = Rule("conv(x, w, b) + c => conv(x, w, b + c)",
                       Op(frozenset({OpType.ADD, OpType.SUB}), (_lin(), Const("c"))), _fold_add)
SCALE_RULES = [BN_INTO_LINEAR, MUL_INTO_LINEAR, ADD_INTO_LINEAR]


@register_pass("fold_batchnorm", Phase.FOLD)
def fold_batchnorm(graph: Graph, ctx: PassContext) -> Graph:
    """Folds BatchNormalization into the Conv, ConvTranspose, Gemm or 2-D MatMul before it."""
    return apply_rules(graph, [BN_INTO_LINEAR], ctx)


@register_pass("fold_scales", Phase.FOLD)
def fold_scales(graph: Graph, ctx: PassContext) -> Graph:
    """Folds per-channel constant Mul/Add/Sub after a linear layer into its weights and bias."""
    return apply_rules(graph, [MUL_INTO_LINEAR, ADD_INTO_LINEAR], ctx)
