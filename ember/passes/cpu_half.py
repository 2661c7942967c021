"""Half-precision storage on the CPU: where a bf16 / fp16 CPU engine converts its activations,
planned once, here, instead of inside every kernel.

``assign_precisions`` decided which layers compute in half precision (``Records.precision``;
``ember.passes.precision``). As on CUDA, the graph keeps the model's types (float32: every op's
type rules hold, for the max-shape plan of a dynamic model too) and a layer's precision says how
its outputs are stored (``storage_dtype``): a half layer stores its float32 outputs in 16 bits,
except graph outputs, which it writes in their declared type (the user gets what the model
declares). This pass adds one conversion layer wherever a tensor meets a reader of the other
precision (a half layer reading an fp32 tensor: a graph input, the output of a layer without a
half kernel; an fp32 layer reading a half one), placed before the first such reader and shared
by all of them: a ``Cast`` to float32 whose precision is the reader's, so it stores its output
as the reader reads it (``x::bf16`` for bf16 readers, ``x::fp32`` back to float32).

Constant inputs (weights, biases, normalization parameters) stay float32 arrays: the half kernels
convert or prepack them once, when the engine is compiled (``ember.backends.cpu.half``).

Before (``conv`` and ``pool`` in bf16, ``topk`` without a half kernel)::

    x -> conv -> c -> pool -> p -> topk

After (``c`` and ``p`` stored in bf16)::

    x -> Cast[bf16] -> x::bf16 -> conv -> c -> pool -> p -> Cast[fp32] -> p::fp32 -> topk

The records follow: the conversions are in the precision plan, their outputs take their
source's memory format in the layout plan, and a planned Concat reads its converted inputs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ember.backends.cpu.half import HALF_DTYPES, storage_dtype
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import CastAttrs
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.config import Device, Precision
from ember.plan.records import ConcatEntry, ConcatPlan, PrecisionPlan, Records

#: Short names in the converted tensors' names (``x::bf16``).
_SUFFIX = {DType.BFLOAT16: "bf16", DType.FLOAT16: "fp16", DType.FLOAT32: "fp32"}

RULE = "tensor read in another precision => Cast"


def is_conversion(node_rule: str) -> bool:
    """Whether a layer (by its ``rule``) is a conversion this pass planned."""
    return node_rule == RULE


@register_pass("plan_half_dtypes", Phase.PRECISION)
def plan_half_dtypes(graph: Graph, ctx: PassContext) -> Graph:
    """Inserts the planned conversions between half and fp32 layers (CPU builds)."""
    if ctx.device is not Device.CPU:
        return graph
    precisions = dict(ctx.records.precision.layers)
    if not any(p in HALF_DTYPES for p in precisions.values()):
        return graph
    work = graph.copy()
    stored = {i: graph.types[i].dtype for i in graph.inputs}
    taken = {n.name for n in graph.nodes}
    casts: dict[tuple[str, DType], str] = {}  # (tensor, dtype) -> the tensor converted to it
    cast_nodes: list[Node] = []
    renamed: dict[str, dict[str, str]] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        precision = precisions.get(node.name, Precision.FP32)
        reads = HALF_DTYPES.get(precision, DType.FLOAT32)
        renames: dict[str, str] = {}
        for name in node.inputs:
            if not name or name in renames or name in graph.constants or name not in stored:
                continue
            if graph.types[name].dtype is not DType.FLOAT32 or stored[name] is reads:
                continue
            key = (name, reads)
            if key not in casts:
                out = work.fresh_name(f"{name}::{_SUFFIX[reads]}")
                work.types[out] = graph.types[name]
                cast = Node(_fresh_node(f"{out}/cast", taken, work), OpType.CAST, (name,), (out,),
                            CastAttrs(DType.FLOAT32), origin=(f"{name} -> {_SUFFIX[reads]} for {node.name}",),
                            rule=RULE)
                precisions[cast.name] = Precision.FP32 if reads is DType.FLOAT32 else precision
                stored[out] = reads
                casts[key] = out
                cast_nodes.append(cast)
                nodes.append(cast)
            renames[name] = casts[key]
        if renames:
            renamed[node.name] = renames
            node = node.with_(inputs=tuple(renames.get(i, i) for i in node.inputs))
        nodes.append(node)
        for o in node.outputs:
            if o:
                stored[o] = storage_dtype(graph, precisions, node.name, o)
    if not cast_nodes:
        return graph
    ctx.records = _follow(ctx.records, precisions, casts, renamed)
    ctx.count(RULE, len(cast_nodes))
    return work.replace_nodes(nodes)


def _fresh_node(base: str, taken: set[str], work: Graph) -> str:
    name, k = base, 0
    while name in taken or name in work.types:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _follow(records: Records, precisions: Mapping[str, Precision], casts: Mapping[tuple[str, DType], str],
            renamed: Mapping[str, Mapping[str, str]]) -> Records:
    """The records for the graph with its conversions: their precisions, their outputs in their
    source's memory format, planned Concats reading the converted inputs."""
    layout = records.layout
    if layout is not None:
        nhwc = {out for (src, _), out in casts.items() if src in layout.nhwc}
        if nhwc:
            layout = replace(layout, nhwc=layout.nhwc | nhwc)
    concat = records.concat
    if concat:
        entries = dict(concat.concats)
        for cname, entry in concat.concats.items():
            moved = renamed.get(cname)
            if moved:
                entries[cname] = ConcatEntry(entry.output, entry.axis, tuple(
                    replace(s, tensor=moved.get(s.tensor, s.tensor)) for s in entry.slices), entry.contiguous)
        concat = ConcatPlan(entries)
    return records.with_(precision=PrecisionPlan(dict(precisions)), layout=layout, concat=concat)


__all__ = ["is_conversion", "plan_half_dtypes"]
