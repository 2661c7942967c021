"""FP8 Q/DQ models on CUDA: a GEMM or convolution whose input is ``DequantizeLinear(QuantizeLinear(x))``
in float8e4m3fn becomes an FP8 layer that reads ``x``.

NVIDIA ModelOpt's FP8 exports put a Q/DQ pair (float8e4m3fn, one constant scale, zero point 0) in
front of each GEMM's (and convolution's) input and dequantize its float8 weight (``DequantizeLinear``
of a float8 initializer, folded into a float constant by ``fold_constants``). On CUDA such a layer
(``FP8_OPS`` with a constant 2-D GEMM or 4-D convolution weight) is marked FP8 in the precision
plan, its input's scale is recorded (``QuantRecord`` of ``x``, dtype ``FP8_E4M3``, ``source="qdq"``),
and the pair is folded into it: the FP8 kernel (``ember.backends.cuda.kernels.gemm_fp8``,
``conv_fp8``) quantizes ``x`` with that scale itself, and its weight per tensor (GEMMs: the
model's own weight values where they were quantized per tensor, as ModelOpt does for FP8) or per
output channel (convolutions). The pair stays where anything else reads it, and every
other Q/DQ pair runs as written. On the CPU nothing is folded: the Q/DQ kernels compute the model
as written, the layers between them in float.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import QuantizeAttrs
from ember.passes.edit import dead_code
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.precision import FP8_OPS
from ember.passes.quantization import qdq_chain
from ember.plan.config import Device, Precision
from ember.plan.records import PrecisionPlan, QuantDType, QuantRecord

FOLDED = "fp8 Q/DQ pair => FP8 layer"


def _scalar(graph: Graph, name: str) -> float | None:
    value = graph.constants.get(name) if name else None
    if value is None or value.size != 1:
        return None
    return float(np.asarray(value, dtype=np.float64).reshape(()))


def _zero(graph: Graph, name: str) -> bool:
    """An absent zero point, or a constant zero."""
    if not name:
        return True
    value = graph.constants.get(name)
    return value is not None and not np.asarray(value, dtype=np.float32).any()


def fp8_pair(graph: Graph, name: str, producers: dict[str, Node]) -> tuple[str, float] | None:
    """``(x, scale)`` when ``name`` is ``DQ(Q(x))`` in float8e4m3fn, per tensor, with the same
    constant scale on both and zero points 0 (saturating Q); else ``None``."""
    chain = qdq_chain(name, producers)
    if chain is None:
        return None
    q, dq = chain
    q8 = graph.types.get(q.outputs[0])
    if q8 is None or q8.dtype is not DType.FLOAT8E4M3FN:
        return None
    attrs = q.attrs if isinstance(q.attrs, QuantizeAttrs) else QuantizeAttrs()
    s_q, s_dq = _scalar(graph, q.input(1)), _scalar(graph, dq.input(1))
    if s_q is None or s_q != s_dq or not s_q > 0 or not attrs.saturate:
        return None
    if not (_zero(graph, q.input(2)) and _zero(graph, dq.input(2))):
        return None
    x = graph.types.get(q.inputs[0])
    if x is None or not x.dtype.is_float:
        return None
    return q.inputs[0], s_q


def _weight_ok(node: Node, graph: Graph) -> bool:
    """A constant float weight: 2-D for a GEMM, 4-D for a convolution (``kernels/conv_fp8.py``)."""
    w = graph.constants.get(node.input(1))
    ndim = 4 if node.op in (OpType.CONV, OpType.FUSED_CONV) else 2
    return w is not None and w.ndim == ndim and w.dtype.kind == "f"


@register_pass("fold_fp8_qdq", Phase.PRECISION)
def fold_fp8_qdq(graph: Graph, ctx: PassContext) -> Graph:
    """Folds float8 Q/DQ pairs in front of CUDA GEMMs into FP8 layers (module docstring)."""
    if ctx.device is not Device.CUDA:
        return graph
    producers = graph.producers()
    rewired: dict[str, str] = {}
    records = dict(ctx.records.quantization.tensors)
    for node in graph.nodes:
        if node.op not in FP8_OPS or not node.inputs or not _weight_ok(node, graph):
            continue
        pair = fp8_pair(graph, node.inputs[0], producers)
        if pair is None:
            continue
        x, scale = pair
        have = records.get(x)
        rec = QuantRecord(x, QuantDType.FP8_E4M3, (scale,), (0,), None, "qdq")
        if have is not None and have != rec:
            continue  # another pair or a calibration already says otherwise: keep this one as written
        records[x] = rec
        rewired[node.name] = x
    if not rewired:
        return graph
    nodes = [n.with_(inputs=(rewired[n.name], *n.inputs[1:])) if n.name in rewired else n for n in graph.nodes]
    graph = dead_code(graph.replace_nodes(nodes), ctx.protected(graph))
    precisions = {**ctx.records.precision.layers, **{name: Precision.FP8 for name in rewired}}
    ctx.records = ctx.records.with_(precision=PrecisionPlan(precisions),
                                    quantization=replace(ctx.records.quantization, tensors=records))
    ctx.count(FOLDED, len(rewired))
    return graph
