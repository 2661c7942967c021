"""INT8 layers: convolutions and GEMMs with constant weights become QConv / QGemm.

CPU builds only (the INT8 kernels are oneDNN's; on CUDA a Q/DQ model runs as written). Runs in
the precision phase, after ``assign_precisions``, from the quantization records
(``Records.quantization``), which come from calibration (``ember.builder.calibration``, scales of
the optimized graph's tensors) or from a Q/DQ model (``record_qdq``). Two ways in:

- **implicit** (calibrated): a Conv / FusedConv / Gemm / MatMul / FusedGemm that
  ``assign_precisions`` marked ``int8`` becomes an INT8 layer when its input has a record; its
  weight gets symmetric per-output-channel scales (``symmetric_scales``), its bias stays float.
- **explicit** (Q/DQ): a layer whose input is ``DequantizeLinear(QuantizeLinear(x))`` with the
  same constant scale and zero point, and whose weight was dequantized from int8 (its record,
  ``source="qdq"``, per output channel or per tensor, zero point 0), becomes an INT8 layer that
  reads ``x``: the pair is folded into the layer (it is dropped when nothing else reads it). A
  Q/DQ pair in front of anything else stays as written, computed as ONNX defines it.

The output of an INT8 layer stays 8-bit (``QConvAttrs.out``) when it has a record and every
reader is an INT8 layer (as its input or a QConv's residual) and it is no graph output; else it is
float32. How an 8-bit tensor is stored (``tensor_params``): the record's scale and zero point as
uint8 (oneDNN's INT8 convolution takes unsigned activations only: an int8 record becomes uint8
with its zero point moved by 128, the same values) or, read by GEMMs only, as int8. A calibrated
tensor that cannot be negative (after ReLU, ReLU6, max pooling of such, ...: ``nonnegative``)
uses the full unsigned range, scale ``threshold / 255``, zero point 0.

The records of every quantized activation and weight are rewritten to what the engine runs
(dtype, scale, zero point, axis), so ``ember inspect`` shows it. Layers marked int8 that cannot be
(no record, a non-constant weight, a form without an INT8 kernel) stay fp32, each counted under
its rule.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    Activation,
    ConvAttrs,
    FusedConvAttrs,
    FusedGemmAttrs,
    GemmAttrs,
    QConvAttrs,
    QGemmAttrs,
    QuantParams,
)
from ember.passes.edit import dead_code
from ember.passes.manager import PassContext, Phase, register_pass
from ember.passes.precision import INT8_OPS as QUANTIZABLE_OPS
from ember.plan.config import Device, Precision
from ember.plan.records import PrecisionPlan, QuantDType, QuantizationPlan, QuantRecord

#: Largest magnitude of a symmetric int8 weight.
QMAX = 127
#: Smallest scale (a channel of zeros): float32's epsilon.
MIN_SCALE = float(np.finfo(np.float32).eps)

MADE = "int8 layer => QConv/QGemm"
FOLDED = "Q/DQ pair folded into an int8 layer"
KEPT_8BIT = "int8 output kept 8-bit for int8 readers"
NO_RECORD = "int8 layer without an input scale => fp32"
UNSUPPORTED = "int8 layer of a form with no int8 kernel => fp32"
BAD_WEIGHT = "int8 layer whose weight scales do not fit => fp32"


def symmetric_scales(w: np.ndarray, axis: int | None) -> tuple[float, ...]:
    """Symmetric int8 scales of a weight, ``max|w| / 127`` (at least ``MIN_SCALE``), one per index
    along ``axis`` (``None``: one for the whole weight); ``ValueError`` on NaN/inf weights."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    if axis is None:
        amax = np.atleast_1d(a.max(initial=0.0))
    else:
        others = tuple(d for d in range(a.ndim) if d != axis % a.ndim)
        amax = np.atleast_1d(a.max(axis=others, initial=0.0) if others else a)
    if not np.all(np.isfinite(amax)):
        raise ValueError("the weight holds NaN or inf values")
    return tuple(float(np.float32(max(float(m) / QMAX, MIN_SCALE))) for m in amax)


@dataclass(frozen=True)
class _Form:
    """What an INT8 layer needs to know of the layer it replaces."""

    kind: str  # "conv" | "gemm"
    base: ConvAttrs | GemmAttrs
    activation: Activation
    act_params: tuple[float, ...]
    residual: bool
    out_axis: int  # the weight's output-channel axis


def _float32(graph: Graph, name: str, rank_at_least: int = 0) -> bool:
    t = graph.types.get(name)
    return t is not None and t.dtype is DType.FLOAT32 and t.rank >= rank_at_least


def layer_form(node: Node, graph: Graph) -> _Form | str:
    """The INT8 form of ``node``, or the rule that says why it has none."""
    w = graph.constants.get(node.input(1))
    if node.op not in QUANTIZABLE_OPS or w is None or w.dtype != np.float32:
        return UNSUPPORTED
    bias = node.input(2)
    if bias and bias not in graph.constants:
        return UNSUPPORTED
    if node.op in (OpType.CONV, OpType.FUSED_CONV):
        a = node.attrs
        conv, act, params, res = ((a.conv, a.activation, tuple(a.act_params), a.has_residual)
                                  if isinstance(a, FusedConvAttrs) else (a, Activation.NONE, (), False))
        if w.ndim != 4 or not _float32(graph, node.inputs[0], 4):
            return UNSUPPORTED
        if res:
            r, out = graph.types.get(node.input(3)), graph.types.get(node.outputs[0])
            if r is None or out is None or r.dtype is not DType.FLOAT32 or r.shape != out.shape:
                return UNSUPPORTED
        return _Form("conv", conv, act, params, res, 0)
    a = node.attrs
    gemm, act, params = ((a.gemm, a.activation, tuple(a.act_params)) if isinstance(a, FusedGemmAttrs)
                         else (a if isinstance(a, GemmAttrs) else GemmAttrs(), Activation.NONE, ()))
    if w.ndim != 2 or gemm.trans_a or gemm.alpha != 1.0 or not _float32(graph, node.inputs[0], 2):
        return UNSUPPORTED
    n = w.shape[0] if gemm.trans_b else w.shape[1]
    if bias:
        c = graph.constants[bias]
        if c.dtype != np.float32 or c.size != n or (c.ndim > 1 and c.shape[-1] != n):
            return UNSUPPORTED
    if node.op is OpType.GEMM and graph.types[node.inputs[0]].rank != 2:
        return UNSUPPORTED
    return _Form("gemm", gemm, act, params, False, 0 if gemm.trans_b else 1)


def _qdq_pair(name: str, producers: Mapping[str, Node], records: QuantizationPlan) -> tuple[Node, Node] | None:
    """(Q, DQ) when ``name`` is ``DQ(Q(x))`` with the same constant quantization on both sides."""
    dq = producers.get(name)
    if dq is None or dq.op is not OpType.DEQUANTIZE_LINEAR:
        return None
    q = producers.get(dq.inputs[0])
    if q is None or q.op is not OpType.QUANTIZE_LINEAR:
        return None
    rq, rdq = records.get(q.inputs[0]), records.get(dq.outputs[0])
    if rq is None or rdq is None or rq.per_channel or (rq.dtype, rq.scale, rq.zero_point) != (
            rdq.dtype, rdq.scale, rdq.zero_point):
        return None
    return q, dq


def _weight_scales(node: Node, form: _Form, graph: Graph, records: QuantizationPlan,
                   explicit: bool) -> tuple[float, ...] | str:
    w = graph.constants[node.inputs[1]]
    channels = w.shape[form.out_axis]
    rec = records.get(node.inputs[1])
    if rec is not None and rec.source == "qdq":
        if rec.dtype is not QuantDType.INT8 or any(rec.zero_point):
            return BAD_WEIGHT
        if rec.axis is None:
            return rec.scale * channels
        if rec.axis != form.out_axis or len(rec.scale) != channels:
            return BAD_WEIGHT
        return rec.scale
    if explicit:
        return BAD_WEIGHT  # a Q/DQ input with a float weight: left as the model wrote it
    try:
        return symmetric_scales(w, form.out_axis)
    except ValueError:
        return BAD_WEIGHT


_PASS_THROUGH = frozenset({OpType.MAX_POOL, OpType.AVERAGE_POOL,
                           OpType.GLOBAL_AVERAGE_POOL, OpType.RESHAPE, OpType.FLATTEN,
                           OpType.SQUEEZE, OpType.UNSQUEEZE, OpType.TRANSPOSE, OpType.IDENTITY})
_NONNEG_OPS = frozenset({OpType.RELU, OpType.SIGMOID, OpType.SOFTMAX, OpType.ABS, OpType.EXP})


def nonnegative(name: str, graph: Graph, producers: Mapping[str, Node],
                memo: dict[str, bool] | None = None) -> bool:
    """Whether tensor ``name`` cannot hold a negative value, from how it is made (ReLU, ReLU6,
    a fused ReLU / clip at >= 0, pooling or reshaping of such, a Concat of such)."""
    memo = {} if memo is None else memo
    if name in memo:
        return memo[name]
    memo[name] = False  # cycles cannot happen in a DAG; this guards the recursion
    node = producers.get(name)
    result = False
    if node is not None:
        act = getattr(node.attrs, "activation", None)
        params = tuple(getattr(node.attrs, "act_params", ()) or ())
        if node.op in _NONNEG_OPS:
            result = True
        elif act is Activation.RELU or (act is Activation.CLIP and params and params[0] >= 0):
            result = True
        elif node.op is OpType.CLIP:
            lo = graph.constants.get(node.input(1))
            result = lo is not None and lo.size == 1 and float(lo.reshape(())) >= 0
        elif node.op in _PASS_THROUGH:
            result = nonnegative(node.inputs[0], graph, producers, memo)
        elif node.op is OpType.CONCAT:
            result = all(nonnegative(i, graph, producers, memo) for i in node.inputs if i)
    memo[name] = result
    return result


def tensor_params(rec: QuantRecord, readers: set[str], unsigned_range: bool) -> QuantParams:
    """How an activation with record ``rec`` is stored for INT8 layers of ``readers`` kinds
    (``"conv"``, ``"gemm"``); ``unsigned_range``: a calibrated tensor known non-negative."""
    scale, zp = rec.scale[0], rec.zero_point[0]
    if rec.dtype is QuantDType.UINT8:
        return QuantParams(scale, zp, DType.UINT8)
    if unsigned_range and zp == 0:
        return QuantParams(float(np.float32(scale * QMAX / 255)), 0, DType.UINT8)
    if "conv" in readers:
        return QuantParams(scale, zp + 128, DType.UINT8)
    return QuantParams(scale, zp, DType.INT8)


def _record(tensor: str, p: QuantParams, source: str) -> QuantRecord:
    return QuantRecord(tensor, QuantDType(p.dtype.value), (p.scale,), (p.zero_point,), None, source)


@register_pass("quantize_layers", Phase.PRECISION)
def quantize_layers(graph: Graph, ctx: PassContext) -> Graph:
    """Replaces int8 layers by QConv / QGemm (see the module docstring)."""
    if ctx.device is not Device.CPU:  # INT8 kernels are the CPU's for now: Q/DQ stay as written
        return graph
    records = ctx.records.quantization
    marked = {name for name, p in ctx.records.precision.layers.items() if p is Precision.INT8}
    if not records or not (marked or any(n.op is OpType.DEQUANTIZE_LINEAR for n in graph.nodes)):
        return _demote(graph, ctx, marked, NO_RECORD)
    producers = graph.producers()
    chosen: dict[str, tuple[_Form, tuple[float, ...]]] = {}
    rewired: dict[str, str] = {}  # layer name -> its new input 0 (a folded Q/DQ pair's x)
    demoted: dict[str, str] = {}
    for node in graph.nodes:
        if node.op not in QUANTIZABLE_OPS:
            continue
        pair = _qdq_pair(node.inputs[0], producers, records)
        if node.name not in marked and pair is None:
            continue
        form = layer_form(node, graph)
        if isinstance(form, str):
            demoted[node.name] = form
            continue
        if pair is None and records.get(node.inputs[0]) is None:
            demoted[node.name] = NO_RECORD
            continue
        scales = _weight_scales(node, form, graph, records, explicit=pair is not None)
        if isinstance(scales, str):
            demoted[node.name] = scales
            continue
        chosen[node.name] = (form, scales)
        if pair is not None:
            rewired[node.name] = pair[0].inputs[0]
            ctx.count(FOLDED)
    for name in marked & set(demoted):
        ctx.count(demoted[name])
    if not chosen:
        return _demote(graph, ctx, marked, None)

    nodes = [n.with_(inputs=(rewired[n.name], *n.inputs[1:])) if n.name in rewired else n
             for n in graph.nodes]
    graph = dead_code(graph.replace_nodes(nodes), ctx.protected(graph) | set(graph.outputs))
    producers = graph.producers()
    consumers = graph.consumers()
    protected = ctx.protected(graph)
    kinds = {name: form.kind for name, (form, _) in chosen.items()}

    def readers(t: str) -> set[str] | None:
        """The kinds of INT8 layers reading ``t`` as data or residual; None if anything else does."""
        found: set[str] = set()
        for c in consumers.get(t, ()):
            kind = kinds.get(c.name)
            if kind is None or not (c.inputs[0] == t or (kind == "conv" and c.input(3) == t)) or (
                    t in c.inputs[1:3]):
                return None
            found.add(kind)
        return found

    memo: dict[str, bool] = {}

    def params_of(t: str, rec: QuantRecord, kinds_: set[str]) -> QuantParams:
        calibrated = rec.source.startswith("calibration")
        return tensor_params(rec, kinds_, calibrated and nonnegative(t, graph, producers, memo))

    new_records = dict(records.tensors)
    params: dict[str, QuantParams] = {}  # 8-bit tensors between INT8 layers
    for node in graph.nodes:
        if node.name not in chosen:
            continue
        t = node.outputs[0]
        rec = records.get(t)
        rd = readers(t)
        if rec is None or rec.per_channel or not rd or t in protected:
            continue
        form = chosen[node.name][0]
        r = node.input(3) if form.residual else ""
        if r and r not in params and (records.get(r) is None or records.tensors[r].per_channel):
            continue  # an 8-bit sum needs the residual's scale: this one accumulates in float32
        p = params_of(t, rec, rd)
        if r and p.dtype is not DType.UINT8:
            continue  # oneDNN sums into an accumulator of the output's type, and conv inputs are uint8
        params[t] = p
    new_nodes: list[Node] = []
    precisions = dict(ctx.records.precision.layers)
    for node in graph.nodes:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        form, w_scales = chosen[node.name]
        x = node.inputs[0]
        xp = params.get(x)
        if xp is None:
            rec = records.get(x)
            assert rec is not None
            rd = {kinds[c.name] for c in consumers.get(x, ()) if c.name in kinds and c.inputs[0] == x}
            xp = params_of(x, rec, rd or {form.kind})
        new_records[x] = _record(x, xp, (records.get(x) or _record(x, xp, "")).source)
        out = params.get(node.outputs[0])
        if out is not None:
            new_records[node.outputs[0]] = _record(node.outputs[0], out, records.tensors[node.outputs[0]].source)
            ctx.count(KEPT_8BIT)
        w = node.inputs[1]
        new_records[w] = QuantRecord(w, QuantDType.INT8, w_scales, (0,) * len(w_scales), form.out_axis,
                                     (records.get(w).source if records.get(w) else "minmax"))
        attrs: Any
        if form.kind == "conv":
            assert isinstance(form.base, ConvAttrs)
            res = None
            if form.residual:  # the residual as it arrives 8-bit, or as an 8-bit sum needs it
                r = node.input(3)
                res = params.get(r)
                if res is None and out is not None:
                    res = params_of(r, records.tensors[r], {"conv"})
                    new_records[r] = _record(r, res, records.tensors[r].source)
            attrs = QConvAttrs(form.base, xp, w_scales, form.activation, form.act_params, form.residual, out, res)
            op = OpType.QCONV
        else:
            assert isinstance(form.base, GemmAttrs)
            attrs = QGemmAttrs(form.base, xp, w_scales, form.activation, form.act_params, out)
            op = OpType.QGEMM
        new_nodes.append(Node(node.name, op, node.inputs, node.outputs, attrs, node.origin, node.rule or "int8"))
        precisions[node.name] = Precision.INT8
        ctx.count(MADE)
    for name in demoted:
        if name in precisions:
            precisions[name] = Precision.FP32
    types = dict(graph.types)
    for t, p in params.items():
        types[t] = TensorType(p.dtype, graph.types[t].shape)
    ctx.records = ctx.records.with_(precision=PrecisionPlan(precisions),
                                    quantization=QuantizationPlan(new_records))
    return graph.copy(nodes=new_nodes, types=types)


def _demote(graph: Graph, ctx: PassContext, marked: set[str], rule: str | None) -> Graph:
    """Marks the ``marked`` layers that were not made INT8 fp32 again."""
    if not marked:
        return graph
    if rule is not None:
        ctx.count(rule, len(marked))
    precisions = {k: (Precision.FP32 if k in marked else v) for k, v in ctx.records.precision.layers.items()}
    ctx.records = ctx.records.with_(precision=PrecisionPlan(precisions))
    return graph
