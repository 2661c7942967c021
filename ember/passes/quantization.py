"""The quantization of an explicitly quantized (Q/DQ) model as the plan's typed records.

``record_qdq`` (fold phase, before ``fold_constants`` so that the DequantizeLinear of constant
int8 weights is still a node) writes one ``QuantRecord`` (``source="qdq"``) into
``ctx.records.quantization`` for every QuantizeLinear/DequantizeLinear whose scale and zero point
are constants, under the name of the *float* tensor on its side of the quantization:

- QuantizeLinear ``q = Q(x)``: the record is under ``x``, its float input;
- DequantizeLinear ``y = DQ(q)``: the record is under ``y``, its float output. For a DQ of a
  constant weight, constant folding replaces the node by a float constant that keeps the DQ's
  output name, so the record names that weight constant of the optimized graph.

The dtype is the quantized tensor's type (the zero point's type, or Q's output / DQ's input type
when there is no zero point; a missing zero point records 0): int8 -> ``QuantDType.INT8``, uint8
-> ``UINT8``. Per-tensor scales (one value) record ``axis=None``; a 1-D scale records the
channel ``axis``, made non-negative. Not recorded (each counted under its rule):

- a scale or zero point computed at run time (no constant to read);
- other quantized types (int16, uint16, int32 biases): Ember's INT8 engines only know 8 bits;
- blocked quantization (``block_size > 0``), which ``QuantRecord`` cannot express yet;
- non-positive (or NaN) scales, which ``QuantRecord`` refuses;
- a second Q/DQ on the same float tensor with other scales (a DQ feeding a Q that requantizes):
  the first one in node order is kept.

The passes after it may rename or remove what a record names (constant de-duplication in
``cse``, BatchNorm/scale folding into a weight, horizontal fusion concatenating weights, a Q/DQ
whose float side is removed). ``prune_quant_records`` runs last and drops the records whose
tensor is no longer in the optimized graph, so every record names a tensor of the graph it
comes with (``docs/CONTRACTS.md``); the records of activations that stay between Q/DQ pairs and
of weights that are only dequantized survive.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import QuantizeAttrs
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.records import QuantDType, QuantizationPlan, QuantRecord

QDQ_OPS = frozenset({OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR})
#: The quantized types a record can hold.
RECORDED_DTYPES = {DType.INT8: QuantDType.INT8, DType.UINT8: QuantDType.UINT8}

RECORDED = "Q/DQ with constant scales => quantization record"
COMPUTED = "Q/DQ with computed scale or zero point => not recorded"
NOT_8BIT = "Q/DQ of a type other than int8/uint8 => not recorded"
BLOCKED = "blocked Q/DQ => not recorded"
BAD_SCALE = "Q/DQ with a non-positive or non-float scale => not recorded"
CONFLICT = "second Q/DQ of a tensor with other scales => first kept"
STALE = "quantization record of a removed tensor => dropped"


def float_side(node: Node) -> str:
    """The float tensor a Q/DQ node quantizes (Q: its input) or produces (DQ: its output)."""
    return node.inputs[0] if node.op is OpType.QUANTIZE_LINEAR else node.outputs[0]


def quantized_side(node: Node) -> str:
    """The integer tensor of a Q/DQ node (Q: its output; DQ: its input)."""
    return node.outputs[0] if node.op is OpType.QUANTIZE_LINEAR else node.inputs[0]


def qdq_chain(name: str, producers: Mapping[str, Node]) -> tuple[Node, Node] | None:
    """``(Q, DQ)`` when tensor ``name`` is ``DequantizeLinear(QuantizeLinear(x))``'s output (what
    the INT8 and FP8 passes fold into their layers), else ``None``."""
    dq = producers.get(name)
    if dq is None or dq.op is not OpType.DEQUANTIZE_LINEAR:
        return None
    q = producers.get(dq.inputs[0])
    if q is None or q.op is not OpType.QUANTIZE_LINEAR:
        return None
    return q, dq


def qdq_record(node: Node, graph: Graph) -> QuantRecord | str:
    """The record of one Q/DQ node, or the rule that says why there is none."""
    scale_name, zp_name = node.input(1), node.input(2)
    scale = graph.constants.get(scale_name)
    zp = graph.constants.get(zp_name) if zp_name else None
    if scale is None or (zp_name and zp is None):
        return COMPUTED
    qtype = graph.types.get(quantized_side(node))
    if qtype is None or qtype.dtype not in RECORDED_DTYPES:
        return NOT_8BIT
    attrs: QuantizeAttrs = node.attrs if node.attrs is not None else QuantizeAttrs()
    if attrs.block_size > 0:
        return BLOCKED
    if scale.dtype.kind != "f":  # type inference allows float scales only; be safe
        return BAD_SCALE
    scales = np.asarray(scale, dtype=np.float64).reshape(-1)
    zps = (np.zeros(scales.shape, np.int64) if zp is None
           else np.asarray(zp).astype(np.int64).reshape(-1))
    if zps.size == 1 and scales.size > 1:
        zps = np.broadcast_to(zps, scales.shape)
    if not np.all(scales > 0):
        return BAD_SCALE
    axis: int | None = None
    if scale.ndim == 1 and scale.size > 1:
        rank = graph.type_of(node.inputs[0]).rank
        axis = attrs.axis + rank if attrs.axis < 0 else attrs.axis
    return QuantRecord(float_side(node), RECORDED_DTYPES[qtype.dtype], tuple(scales.tolist()),
                       tuple(zps.tolist()), axis, "qdq")


@register_pass("record_qdq", Phase.FOLD)
def record_qdq(graph: Graph, ctx: PassContext) -> Graph:
    """Records the scales of Q/DQ nodes as ``QuantRecord``s of their float tensors."""
    tensors = dict(ctx.records.quantization.tensors)
    added = False
    for node in graph.nodes:
        if node.op not in QDQ_OPS:
            continue
        rec = qdq_record(node, graph)
        if isinstance(rec, str):
            ctx.count(rec)
            continue
        have = tensors.get(rec.tensor)
        if have is not None and have != rec:
            ctx.count(CONFLICT)
            continue
        ctx.count(RECORDED)
        if have is None:
            tensors[rec.tensor] = rec
            added = True
    if added:
        ctx.records = ctx.records.with_(quantization=replace(ctx.records.quantization, tensors=tensors))
    return graph


@register_pass("prune_quant_records", Phase.PRECISION)
def prune_quant_records(graph: Graph, ctx: PassContext) -> Graph:
    """Drops quantization records of tensors the optimizer removed or renamed."""
    plan = ctx.records.quantization
    kept = {name: rec for name, rec in plan.tensors.items() if name in graph.types}
    channels = {name: v for name, v in plan.channel_max.items() if name in graph.types}
    if len(kept) != len(plan.tensors) or len(channels) != len(plan.channel_max):
        ctx.count(STALE, len(plan.tensors) - len(kept))
        ctx.records = ctx.records.with_(quantization=QuantizationPlan(kept, channels))
    return graph
