"""INT8 layers: convolutions and GEMMs with constant weights become QConv / QGemm.

CPU and CUDA builds (the kernels: oneDNN's on the CPU, Ember's Triton INT8 kernel on CUDA, which
takes 2-D ungrouped convolutions and GEMMs, and no 8-bit MaxPool / Concat pass-through yet). Runs in
the precision phase, after ``assign_precisions``, from the quantization records
(``Records.quantization``), which come from calibration (``ember.builder.calibration``, scales of
the optimized graph's tensors) or from a Q/DQ model (``record_qdq``). Two ways in:

- **implicit** (calibrated): a Conv / FusedConv / Gemm / MatMul / FusedGemm that
  ``assign_precisions`` marked ``int8`` becomes an INT8 layer when its input has a record; its
  weight gets symmetric per-output-channel scales (``symmetric_scales``; 7 bits on a CPU whose
  8-bit kernels would saturate on 8, ``weight_qmax``), its bias stays float.
- **explicit** (Q/DQ): a layer whose input is ``DequantizeLinear(QuantizeLinear(x))`` with the
  same constant scale and zero point, and whose weight was dequantized from int8 (its record,
  ``source="qdq"``, per output channel or per tensor, zero point 0), becomes an INT8 layer that
  reads ``x``: the pair is folded into the layer (it is dropped when nothing else reads it). A
  Q/DQ pair in front of anything else stays as written, computed as ONNX defines it.

The output of an INT8 layer stays 8-bit (``QConvAttrs.out``) when it has a record and every
reader is an INT8 layer (as its input or a QConv's residual) and it is no graph output; else it is
float32. How an 8-bit tensor is stored (``tensor_params``): the record's scale and zero point as
uint8: oneDNN's INT8 convolution takes unsigned activations only, and quantizing to uint8 takes
one op less than to int8 while oneDNN's INT8 GEMM runs both at the same speed, so an int8 record
becomes uint8 with its zero point moved by 128 (the same values). A calibrated
tensor bounded below (``lower_bound``: 0 after ReLU, ReLU6 or max pooling of such, -0.17 after
GELU) spreads the 256 uint8 steps over ``[bound, threshold]`` instead of ``[-threshold,
threshold]``, with the zero point where 0 falls. On CUDA the same values are stored int8 (``signed``: zero
point moved by -128), which Ember's Triton kernel feeds the tensor cores as loaded.

A GEMM whose float input was calibrated by min-max with per-channel maxima (calibration
measures them for GEMM inputs) is smoothed (``smoothing``, SmoothQuant): its input is quantized
as ``x / s`` and its weight as ``s W``, which moves a LayerNorm's outlier channels into the
weight's per-column scales; on all-MiniLM-L6-v2 the mean cosine of INT8 to fp32 embeddings went
from 0.9901 to 0.9956.

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
from ember.passes.quantization import qdq_chain
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
CUDA_GROUPED = "int8 grouped convolution (no CUDA int8 kernel) => fp16"
CUDA_FEW_CHANNELS = "int8 convolution of fewer than 4 input channels on CUDA (an image's) => fp16"
#: On CUDA a convolution reading fewer input channels than this stays half precision: the 8-bit
#: tensor-core kernels read 32 channels a tap (Triton) or fours (cuDNN), so an image's 3 channels
#: leave most of each tile empty; on the H100 every INT8 form of ResNet-50's stem (7x7, 3 channels)
#: was slower than even the dequantized float32 fallback, and that 6x slower than cuDNN fp16.
CUDA_MIN_INT8_CHANNELS = 4
SMOOTHED = "int8 GEMM input smoothed into its weight"
WEIGHTS_7BIT = "int8 weights in 7 bits (this CPU's 8-bit kernels saturate on 8)"
PASSED_THROUGH = "MaxPool/Concat passes 8-bit tensors on"


def weight_qmax(device: Device) -> int:
    """The largest int8 weight a calibrated build makes: ``QMAX``, except on a CPU whose oneDNN 8-bit
    kernels add pairs of u8 x s8 products in 16 bits and saturate (x86 without VNNI or AMX:
    ``features.int8_saturates``). There weights get 7 bits (``features.INT8_SAFE_WEIGHT``, as ONNX
    Runtime's quantizer's ``reduce_range``), so every INT8 layer runs on those kernels exactly:
    ResNet-50 at batch 1 on a 2-core AVX2 EPYC, 35.6 ms, against 73.9 ms in fp32 and 101.6 ms for
    full-range weights computed in float32 (the only exact way for them there)."""
    if device is not Device.CPU:
        return QMAX
    from ember.backends.cpu.features import INT8_SAFE_WEIGHT, int8_saturates

    return INT8_SAFE_WEIGHT if int8_saturates() else QMAX


def symmetric_scales(w: np.ndarray, axis: int | None, qmax: int = QMAX) -> tuple[float, ...]:
    """Symmetric int8 scales of a weight, ``max|w| / qmax`` (at least ``MIN_SCALE``), one per index
    along ``axis`` (``None``: one for the whole weight); ``ValueError`` on NaN/inf weights."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    if axis is None:
        amax = np.atleast_1d(a.max(initial=0.0))
    else:
        others = tuple(d for d in range(a.ndim) if d != axis % a.ndim)
        amax = np.atleast_1d(a.max(axis=others, initial=0.0) if others else a)
    if not np.all(np.isfinite(amax)):
        raise ValueError("the weight holds NaN or inf values")
    return tuple(float(np.float32(max(float(m) / qmax, MIN_SCALE))) for m in amax)


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


def layer_form(node: Node, graph: Graph, device: Device = Device.CPU) -> _Form | str:
    """The INT8 form of ``node`` on ``device``, or the rule that says why it has none."""
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
        if device is Device.CUDA and conv.group != 1:
            return CUDA_GROUPED
        if device is Device.CUDA and w.shape[1] < CUDA_MIN_INT8_CHANNELS:
            return CUDA_FEW_CHANNELS
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
    chain = qdq_chain(name, producers)
    if chain is None:
        return None
    q, dq = chain
    rq, rdq = records.get(q.inputs[0]), records.get(dq.outputs[0])
    if rq is None or rdq is None or rq.per_channel or (rq.dtype, rq.scale, rq.zero_point) != (
            rdq.dtype, rdq.scale, rdq.zero_point):
        return None
    return q, dq


def _weight_scales(node: Node, form: _Form, graph: Graph, records: QuantizationPlan,
                   explicit: bool, qmax: int) -> tuple[float, ...] | str:
    w = graph.constants[node.inputs[1]]
    channels = w.shape[form.out_axis]
    rec = records.get(node.inputs[1])
    if rec is not None and rec.source == "qdq":
        if rec.dtype is not QuantDType.INT8 or any(rec.zero_point):
            return BAD_WEIGHT
        if rec.axis is None:
            return tuple(rec.scale) * int(channels)
        if rec.axis != form.out_axis or len(rec.scale) != channels:
            return BAD_WEIGHT
        return rec.scale
    if explicit:
        return BAD_WEIGHT  # a Q/DQ input with a float weight: left as the model wrote it
    try:
        return symmetric_scales(w, form.out_axis, qmax)
    except ValueError:
        return BAD_WEIGHT


_PASS_THROUGH = frozenset({OpType.MAX_POOL, OpType.AVERAGE_POOL,
                           OpType.GLOBAL_AVERAGE_POOL, OpType.RESHAPE, OpType.FLATTEN,
                           OpType.SQUEEZE, OpType.UNSQUEEZE, OpType.TRANSPOSE, OpType.IDENTITY})
#: The smallest value of each activation (None: unbounded below); GELU's is -0.16997 at x = -0.7518,
#: SiLU's -0.27846 at x = -1.2785, hard swish's -0.375 at x = -1.5.
_ACT_MIN = {Activation.RELU: 0.0, Activation.SIGMOID: 0.0, Activation.HARD_SIGMOID: 0.0,
            Activation.GELU_ERF: -0.16998, Activation.GELU_TANH: -0.16998, Activation.SILU: -0.27847,
            Activation.HARD_SWISH: -0.375}
_OP_MIN = {OpType.RELU: 0.0, OpType.SIGMOID: 0.0, OpType.SOFTMAX: 0.0, OpType.ABS: 0.0, OpType.EXP: 0.0,
           OpType.GELU: -0.16998}


def lower_bound(name: str, graph: Graph, producers: Mapping[str, Node],
                memo: dict[str, float | None] | None = None) -> float | None:
    """The smallest value tensor ``name`` can hold, from how it is made (0 after ReLU or a clip
    at 0, GELU's -0.17, through pooling, reshaping and Concat), or None when it is not bounded."""
    memo = {} if memo is None else memo
    if name in memo:
        return memo[name]
    memo[name] = None  # a DAG has no cycles; this guards the recursion
    node = producers.get(name)
    result: float | None = None
    if node is not None:
        act = getattr(node.attrs, "activation", None)
        params = tuple(getattr(node.attrs, "act_params", ()) or ())
        if node.op in _OP_MIN:
            result = _OP_MIN[node.op]
        elif act is Activation.CLIP and params:
            result = float(params[0])
        elif act in _ACT_MIN:
            result = _ACT_MIN[act]
        elif node.op is OpType.CLIP:
            lo = graph.constants.get(node.input(1))
            result = float(lo.reshape(())) if lo is not None and lo.size == 1 else None
        elif node.op in _PASS_THROUGH:
            result = lower_bound(node.inputs[0], graph, producers, memo)
        elif node.op is OpType.CONCAT:
            bounds = [lower_bound(i, graph, producers, memo) for i in node.inputs if i]
            result = None if not bounds or any(b is None for b in bounds) else min(b for b in bounds if b is not None)
    memo[name] = result
    return result


def tensor_params(rec: QuantRecord, low: float | None) -> QuantParams:
    """How an activation with record ``rec`` is stored for the INT8 layers that read it (uint8
    for convolutions and GEMMs alike). ``low``: the smallest value a *calibrated* tensor can
    hold (its symmetric range ``[-T, T]`` then narrows to ``[max(low, -T), T]`` over the 256
    uint8 steps: after ReLU twice the resolution, after GELU nearly so), None where unknown."""
    scale, zp = rec.scale[0], rec.zero_point[0]
    if rec.dtype is QuantDType.UINT8:
        return QuantParams(scale, zp, DType.UINT8)
    if low is not None and zp == 0:
        top = scale * QMAX
        low = max(min(low, 0.0), -top)
        step = float(np.float32((top - low) / 255))
        return QuantParams(step, int(round(-low / step)), DType.UINT8)
    return QuantParams(scale, zp + 128, DType.UINT8)  # the int8 values, shifted: one op less to quantize


def smoothing(node: Node, graph: Graph, records: QuantizationPlan, qmax: int = QMAX
              ) -> tuple[QuantParams, tuple[float, ...], tuple[float, ...]] | None:
    """SmoothQuant (Xiao et al., 2023) for a GEMM whose float input was calibrated by min-max with
    per-channel maxima: ``x @ W == (x / s) @ (s W)`` with ``s_k = sqrt(max|x_k| / max|W_k|)``, which
    moves the outlier channels of the input (a LayerNorm's, in transformers) into the weight,
    where per-output-channel scales absorb them. Returns the input's params (symmetric int8 over
    ``max_k max|x_k| / s_k``, stored uint8 with zero point 128), the smoothed weight's per-column
    scales and ``s``; None where it does not apply (other calibrators, no per-channel maxima, a
    shape that does not match)."""
    x = node.inputs[0]
    rec, cmax = records.get(x), records.channel_max.get(x)
    w = graph.constants.get(node.inputs[1])
    if rec is None or cmax is None or w is None or rec.source != "calibration:minmax":
        return None
    gemm = node.attrs.gemm if isinstance(node.attrs, FusedGemmAttrs) else (
        node.attrs if isinstance(node.attrs, GemmAttrs) else GemmAttrs())
    w_kn = np.asarray(w, np.float64).T if gemm.trans_b else np.asarray(w, np.float64)
    ax = np.asarray(cmax, np.float64)
    if ax.shape != (w_kn.shape[0],) or not np.all(np.isfinite(ax)) or not np.all(np.isfinite(w_kn)):
        return None
    aw = np.abs(w_kn).max(axis=1)
    s = np.sqrt(np.maximum(ax, MIN_SCALE) / np.maximum(aw, MIN_SCALE))
    s = np.clip(s, 1e-4, 1e4).astype(np.float32).astype(np.float64)
    top = float((ax / s).max())
    xp = QuantParams(float(np.float32(max(top / QMAX, MIN_SCALE))), 128, DType.UINT8)
    return xp, symmetric_scales(w_kn * s[:, None], 1, qmax), tuple(float(v) for v in s)


def _record(tensor: str, p: QuantParams, source: str) -> QuantRecord:
    return QuantRecord(tensor, QuantDType(p.dtype.value), (p.scale,), (p.zero_point,), None, source)


def signed(p: QuantParams) -> QuantParams:
    """The same values stored int8: zero point moved by -128 (CUDA's INT8 kernels feed the tensor
    cores signed bytes straight from memory; oneDNN's convolutions take unsigned ones)."""
    if p.dtype is DType.INT8:
        return p
    return QuantParams(p.scale, p.zero_point - 128, DType.INT8)


@register_pass("quantize_layers", Phase.PRECISION)
def quantize_layers(graph: Graph, ctx: PassContext) -> Graph:
    """Replaces int8 layers by QConv / QGemm (see the module docstring)."""
    everything = ctx.records.quantization  # FP8 records (``fold_fp8_qdq``) are kept, not read
    records = QuantizationPlan({k: r for k, r in everything.tensors.items() if r.dtype is not QuantDType.FP8_E4M3},
                               everything.channel_max)
    marked = {name for name, p in ctx.records.precision.layers.items() if p is Precision.INT8}
    if not records or not (marked or any(n.op is OpType.DEQUANTIZE_LINEAR for n in graph.nodes)):
        return _demote(graph, ctx, marked, NO_RECORD)
    producers = graph.producers()
    qmax = weight_qmax(ctx.device)
    chosen: dict[str, tuple[_Form, tuple[float, ...]]] = {}
    rewired: dict[str, str] = {}  # layer name -> its new input 0 (a folded Q/DQ pair's x)
    demoted: dict[str, str] = {}
    asked: set[str] = set()  # the layers that asked for INT8
    for node in graph.nodes:
        if node.op not in QUANTIZABLE_OPS:
            continue
        pair = _qdq_pair(node.inputs[0], producers, records)
        if node.name not in marked and pair is None:
            continue
        asked.add(node.name)
        form = layer_form(node, graph, ctx.device)
        if isinstance(form, str):
            demoted[node.name] = form
            continue
        if pair is None and records.get(node.inputs[0]) is None:
            demoted[node.name] = NO_RECORD
            continue
        scales = _weight_scales(node, form, graph, records, explicit=pair is not None, qmax=qmax)
        if isinstance(scales, str):
            demoted[node.name] = scales
            continue
        chosen[node.name] = (form, scales)
        w_rec = records.get(node.inputs[1])
        if qmax < QMAX and (w_rec is None or w_rec.source != "qdq"):
            ctx.count(WEIGHTS_7BIT)
        if pair is not None:
            rewired[node.name] = pair[0].inputs[0]
            ctx.count(FOLDED)
    for name in asked & set(demoted):  # marked int8, or a Q/DQ layer that runs as written in float
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

    # CUDA: no 8-bit MaxPool or Concat kernels yet, so 8 bits pass through neither
    through = _pass_through_candidates(graph, consumers, kinds, protected) if ctx.device is Device.CPU else set()

    def readers(t: str) -> set[str] | None:
        """The kinds of INT8 layers reading ``t`` as data or residual (``"through"`` for a MaxPool or
        Concat that may pass 8 bits on); None if anything else reads it."""
        found: set[str] = set()
        for c in consumers.get(t, ()):
            if c.name in through:
                found.add("through")
                continue
            kind = kinds.get(c.name)
            if kind is None or not (c.inputs[0] == t or (kind == "conv" and c.input(3) == t)) or (
                    t in c.inputs[1:3]):
                return None
            found.add(kind)
        return found

    memo: dict[str, float | None] = {}

    def params_of(t: str, rec: QuantRecord) -> QuantParams:
        calibrated = rec.source.startswith("calibration")
        return tensor_params(rec, lower_bound(t, graph, producers, memo) if calibrated else None)

    def source(t: str, fallback: str = "") -> str:
        """Where the scales of ``t`` came from (its record's source), for the rewritten record."""
        rec = records.get(t) or records.get(fallback)
        return rec.source if rec is not None else "through"

    # A Concat's inputs share its params (one scale for the whole tensor): decided first, from its
    # output's record, and only where every input can be written 8-bit by an INT8 layer for it.
    shared: dict[str, QuantParams] = {}
    for node in graph.nodes:
        if node.op is not OpType.CONCAT or node.name not in through:
            continue
        out_rec, rd = records.get(node.outputs[0]), readers(node.outputs[0])
        ins = [i for i in node.inputs if i]
        ok = out_rec is not None and not out_rec.per_channel and bool(rd) and len(set(ins)) == len(ins)
        ok = ok and all(_writes_8bit(producers.get(i), chosen, records) and readers(i) == {"through"}
                        and i not in protected for i in ins)
        if not ok or out_rec is None or rd is None:
            through.discard(node.name)
            continue
        p = params_of(node.outputs[0], out_rec)
        shared.update({i: p for i in ins})

    new_records = dict(everything.tensors)
    # how the 8-bit tensors are stored: uint8 for oneDNN on the CPU, int8 for CUDA's kernels
    store = signed if ctx.device is Device.CUDA else (lambda p: p)
    params: dict[str, QuantParams] = {}  # 8-bit tensors between INT8 layers (as computed: uint8)
    for node in graph.nodes:
        t = node.outputs[0] if node.outputs else ""
        if node.name in through:  # 8 bits in, the same 8 bits out, or float as before
            ins = [i for i in node.inputs if i]
            got = [params.get(i) for i in ins]
            if got and all(g is not None and g == got[0] for g in got) and readers(t):
                params[t] = got[0]  # type: ignore[assignment]
                new_records[t] = _record(t, store(params[t]), source(t, ins[0]))
                ctx.count(PASSED_THROUGH)
            continue
        if node.name not in chosen:
            continue
        rec = records.get(t)
        rd = readers(t)
        if t in shared:
            params[t] = shared[t]
            continue
        if rec is None or rec.per_channel or not rd or t in protected:
            continue
        form = chosen[node.name][0]
        r = node.input(3) if form.residual else ""
        if r and r not in params and (records.get(r) is None or records.tensors[r].per_channel):
            continue  # an 8-bit sum needs the residual's scale: this one accumulates in float32
        p = params_of(t, rec)
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
            xp = params_of(x, rec)
        new_records[x] = _record(x, store(xp), source(x))
        out = params.get(node.outputs[0])
        if out is not None:
            new_records[node.outputs[0]] = _record(node.outputs[0], store(out), source(node.outputs[0]))
            ctx.count(KEPT_8BIT)
        w = node.inputs[1]
        w_rec = records.get(w)
        new_records[w] = QuantRecord(w, QuantDType.INT8, w_scales, (0,) * len(w_scales), form.out_axis,
                                     w_rec.source if w_rec is not None else "minmax")
        attrs: Any
        if form.kind == "conv":
            assert isinstance(form.base, ConvAttrs)
            res = None
            if form.residual:  # the residual as it arrives 8-bit, or as an 8-bit sum needs it
                r = node.input(3)
                res = params.get(r)
                if res is None and out is not None:
                    res = params_of(r, records.tensors[r])
                    new_records[r] = _record(r, store(res), source(r))
            attrs = QConvAttrs(form.base, store(xp), w_scales, form.activation, form.act_params, form.residual,
                               None if out is None else store(out), None if res is None else store(res))
            op = OpType.QCONV
        else:
            assert isinstance(form.base, GemmAttrs)
            smooth: tuple[float, ...] = ()
            sm = None if x in params else smoothing(node, graph, records, qmax)
            if sm is not None:
                xp, w_scales, smooth = sm
                new_records[w] = QuantRecord(w, QuantDType.INT8, w_scales, (0,) * len(w_scales), form.out_axis,
                                             "minmax:smoothed")
                ctx.count(SMOOTHED)
            attrs = QGemmAttrs(form.base, store(xp), w_scales, form.activation, form.act_params,
                               None if out is None else store(out), smooth)
            op = OpType.QGEMM
        new_nodes.append(Node(node.name, op, node.inputs, node.outputs, attrs, node.origin, node.rule or "int8"))
        precisions[node.name] = Precision.INT8
        ctx.count(MADE)
    for name in demoted:
        if name in precisions:
            precisions[name] = float_fallback(ctx)
    types = dict(graph.types)
    for t, p in params.items():
        types[t] = TensorType(store(p).dtype, graph.types[t].shape)
    ctx.records = ctx.records.with_(precision=PrecisionPlan(precisions),
                                    quantization=QuantizationPlan(new_records, records.channel_max))
    return graph.copy(nodes=new_nodes, types=types)


def _pass_through_candidates(graph: Graph, consumers: Mapping[str, list[Node]], kinds: Mapping[str, str],
                             protected: set[str]) -> set[str]:
    """MaxPool (one output, 2-D) and Concat nodes whose output is read only by INT8 layers (as
    data or residual) or by other such nodes: they may run on 8-bit tensors, since taking a
    maximum or placing slices side by side commutes with a shared monotone quantization."""
    found: set[str] = set()
    for node in reversed(graph.nodes):
        out = node.outputs[0] if node.outputs else ""
        if not out or out in protected:
            continue
        if node.op is OpType.MAX_POOL:
            if len([o for o in node.outputs if o]) != 1 or graph.types[node.inputs[0]].rank != 4:
                continue
        elif node.op is not OpType.CONCAT:
            continue
        users = consumers.get(out, ())
        if users and all(u.name in found or (u.name in kinds and (u.inputs[0] == out or u.input(3) == out)
                                             and out not in u.inputs[1:3]) for u in users):
            found.add(node.name)
    return found


def _writes_8bit(node: Node | None, chosen: Mapping[str, tuple[_Form, tuple[float, ...]]],
                 records: QuantizationPlan) -> bool:
    """Whether ``node`` (the producer of a Concat input) can write its output 8-bit with the
    Concat's params: an INT8 layer whose residual, if any, has a scale."""
    if node is None or node.name not in chosen:  # a pass-through's params are its input's, not the Concat's
        return False
    form = chosen[node.name][0]
    r = node.input(3) if form.residual else ""
    return not r or (records.get(r) is not None and not records.tensors[r].per_channel)


def float_fallback(ctx: PassContext) -> Precision:
    """The precision of a layer marked int8 that stays float: the build's precision where it is
    a float one, else the device's float default for INT8 builds (fp32 on the CPU, fp16 on CUDA,
    as ``assign_precisions`` gives the other layers)."""
    p = ctx.config.precision
    if p is not Precision.INT8:
        return p
    return Precision.FP32 if ctx.device is Device.CPU else Precision.FP16


def _demote(graph: Graph, ctx: PassContext, marked: set[str], rule: str | None) -> Graph:
    """Marks the ``marked`` layers that were not made INT8 float again (``float_fallback``)."""
    if not marked:
        return graph
    if rule is not None:
        ctx.count(rule, len(marked))
    fallback = float_fallback(ctx)
    precisions = {k: (fallback if k in marked else v) for k, v in ctx.records.precision.layers.items()}
    ctx.records = ctx.records.with_(precision=PrecisionPlan(precisions))
    return graph
