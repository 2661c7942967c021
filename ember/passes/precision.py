"""Precision assignment: the compute precision of every floating-point layer.

The result is a ``PrecisionPlan`` (``ctx.records.precision``): node name -> ``Precision``, for
nodes with a floating-point output (integer and shape arithmetic has no precision). The
default is ``BuildConfig.precision``; ``BuildConfig.layer_precisions`` overrides it by key, where
a key is a node name, one of the source-node names a fused layer absorbed (``origin``), its
display name, or an op type (``"Softmax"``, ``"FusedConv"``). A fused layer also matches the op
types of what it absorbed (a FusedAttention for ``"Softmax"``). CPU builds run fp32, except the
convolutions and GEMMs that ``precision="int8"`` or an ``int8`` entry marks (``INT8_OPS``); the
``quantize_layers`` pass that follows makes them INT8 layers where it can, fp32 where not.
"""
from __future__ import annotations

from collections.abc import Mapping

from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.config import Device, Precision
from ember.plan.records import PrecisionPlan

#: Source op types a fused layer stands for, for op-type keys of ``layer_precisions``.
ABSORBED_OPS: dict[OpType, tuple[str, ...]] = {
    OpType.FUSED_CONV: ("Conv",),
    OpType.FUSED_GEMM: ("Gemm", "MatMul"),
    OpType.FUSED_ATTENTION: ("MatMul", "Softmax"),
    OpType.SKIP_LAYER_NORM: ("Add", "LayerNormalization"),
}


#: Ops whose arithmetic ONNX defines in float32 (the scale division, the dequantized product):
#: they keep FP32 whatever the build's precision, or a half-precision build would round their
#: scales and change which integer a value quantizes to. Integer-output ones are recorded too, so
#: a backend that casts a layer's float inputs to its precision leaves their scales alone.
FP32_ONLY_OPS = frozenset({OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR, OpType.DYNAMIC_QUANTIZE_LINEAR})

#: Precisions a CPU build computes in: fp32, and int8 for the layers of ``INT8_OPS``.
CPU_PRECISIONS = (Precision.FP32, Precision.INT8)
#: Ops that ``BuildConfig.precision="int8"`` (or an ``int8`` entry of ``layer_precisions``) makes
#: INT8 layers, where their form allows (``ember.passes.int8``); every other layer stays fp32.
INT8_OPS = frozenset({OpType.CONV, OpType.FUSED_CONV, OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM})


def absorbed_ops(node: Node) -> tuple[str, ...]:
    """The source op types ``node`` stands for: a fused layer's absorbed ops (a FusedElementwise
    lists its steps' ops), else none."""
    if node.op is OpType.FUSED_ELEMENTWISE and node.attrs is not None:
        return tuple(dict.fromkeys(step.op.value for step in node.attrs.steps))
    return ABSORBED_OPS.get(node.op, ())


def _override(node: Node, table: Mapping[str, Precision]) -> Precision | None:
    for key in (node.name, node.display_name, *node.origin):
        if key in table:
            return table[key]
    for key in (node.op.value, *absorbed_ops(node)):
        if key in table:
            return table[key]
    return None


def layer_precision(node: Node, default: Precision, table: Mapping[str, Precision]) -> Precision:
    """The precision of ``node`` given the build's default and per-layer table."""
    return _override(node, table) or default


def _check_keys(graph: Graph, table: Mapping[str, Precision]) -> None:
    known = {op.value for op in OpType}
    for node in graph.nodes:
        known.update((node.name, node.display_name, *node.origin))
    unknown = sorted(k for k in table if k not in known)
    if unknown:
        raise BuildError(f"layer_precisions names {unknown}, which are neither layers of model "
                         f"{graph.name!r} nor op types; use names shown by `ember inspect`")


@register_pass("assign_precisions", Phase.PRECISION)
def assign_precisions(graph: Graph, ctx: PassContext) -> Graph:
    """Records each floating-point layer's compute precision (``ctx.records.precision``)."""
    cfg = ctx.config
    cpu = cfg.device is Device.CPU
    _check_keys(graph, cfg.layer_precisions)
    if cpu:  # the CPU computes fp32, or int8 where a layer can (``ember.passes.int8``)
        default = Precision.FP32
        table: Mapping[str, Precision] = {k: p for k, p in cfg.layer_precisions.items() if p in CPU_PRECISIONS}
    else:  # an INT8 CUDA build runs its float layers in half precision (TensorRT's int8 + fp16)
        default = Precision.FP16 if cfg.precision is Precision.INT8 else cfg.precision
        table = cfg.layer_precisions
    int8_default = cfg.precision is Precision.INT8
    precisions: dict[str, Precision] = {}
    for node in graph.nodes:
        if node.op in FP32_ONLY_OPS:
            precisions[node.name] = Precision.FP32
            continue
        outs = [graph.types.get(o) for o in node.outputs if o]
        if not any(t is not None and t.dtype.is_float for t in outs):
            continue
        chosen = _override(node, table)
        if chosen is None:
            chosen = Precision.INT8 if int8_default and node.op in INT8_OPS else default
        elif chosen is Precision.INT8 and node.op not in INT8_OPS:
            chosen = default  # only convolutions and GEMMs have INT8 kernels
        precisions[node.name] = chosen
    plan = PrecisionPlan(precisions)
    if ctx.records.precision == plan:
        return graph
    ctx.records = ctx.records.with_(precision=plan)
    ctx.count("layer => precision", len(precisions))
    return graph
