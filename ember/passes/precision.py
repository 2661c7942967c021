"""Precision assignment: the compute precision of every floating-point layer.

The result is a ``PrecisionPlan`` (``ctx.records.precision``): node name -> ``Precision``, for
nodes with a floating-point output (integer and shape arithmetic has no precision). The
default is ``BuildConfig.precision``; ``BuildConfig.layer_precisions`` overrides it by key, where
a key is a node name, one of the source-node names a fused layer absorbed (``origin``), its
display name, or an op type (``"Softmax"``, ``"FusedConv"``). A fused layer also matches the op
types of what it absorbed (a FusedAttention for ``"Softmax"``). CPU builds run fp32, except the
convolutions and GEMMs that ``precision="int8"`` or an ``int8`` entry marks (``INT8_OPS``); the
``quantize_layers`` pass that follows makes them INT8 layers where it can, fp32 where not.

CPU half precision (``bf16``; ``fp16`` on CPUs with AMX-FP16): the convolutions, GEMMs, MatMuls
and attention layers (``CPU_HALF_COMPUTE_OPS``) take it, and so do the cheap layers of
``CPU_HALF_FOLLOW_OPS`` (data movement, elementwise arithmetic, pooling, normalizations and
softmax that accumulate in fp32) whose float inputs all come from half layers, so activations
stay 16-bit from one half layer to the next; every other layer computes fp32, and so do LayerNorm
and SkipLayerNorm unless named (``CPU_HALF_FP32_NORMS``): a transformer's residual stream stays
fp32, post-LN (the norms' outputs) and pre-LN (an Add reading the fp32 stream stays fp32).
``plan_half_dtypes`` (``ember.passes.cpu_half``) then stores the half layers' outputs in 16 bits
and plans the conversions where a tensor meets a reader of the other precision. A CPU without
native support (``ember.backends.cpu.features``) keeps fp32 with a ``CPUPrecisionWarning`` for
bf16; fp16 there is refused with a ``BuildError``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.config import BuildConfig, Device, Precision
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

#: Precisions a CPU build computes in: fp32; int8 for the layers of ``INT8_OPS``; bf16 and fp16
#: (where the CPU runs them natively) for the layers of ``CPU_HALF_OPS``.
CPU_PRECISIONS = (Precision.FP32, Precision.INT8, Precision.BF16, Precision.FP16)
#: CPU layers whose half-precision kernels do the heavy arithmetic on oneDNN's AMX / AVX512-BF16
#: paths (a 256-channel 3x3 convolution: 12 ms fp32 against 1.6 ms bf16, bench/probes/cpu_bf16.py).
CPU_HALF_COMPUTE_OPS = frozenset({OpType.CONV, OpType.FUSED_CONV, OpType.GEMM, OpType.MATMUL,
                                  OpType.FUSED_GEMM, OpType.FUSED_ATTENTION})
#: Elementwise ops that run in half precision, alone or as the steps of a FusedElementwise.
CPU_HALF_ELEMENTWISE = frozenset({
    OpType.RELU, OpType.LEAKY_RELU, OpType.PRELU, OpType.SIGMOID, OpType.TANH, OpType.HARD_SIGMOID,
    OpType.HARD_SWISH, OpType.CLIP, OpType.GELU, OpType.ERF, OpType.NEG, OpType.ABS, OpType.ADD,
    OpType.SUB, OpType.MUL, OpType.DIV, OpType.MAX, OpType.MIN, OpType.WHERE, OpType.IDENTITY,
    OpType.DROPOUT})
#: Cheap layers that run in half precision where a float input is already half, so no conversion
#: is needed around them: data movement (exact), elementwise arithmetic (one rounding, as storing
#: the result would), pooling, and normalizations, softmax and means, which accumulate in fp32
#: (PyTorch's kernels do for LayerNorm, Softmax, BatchNorm, the means and sums; LRN, instance and
#: group normalization are computed in fp32 by Ember's half-precision wrapper,
#: ``ember.backends.cpu.half``).
CPU_HALF_FOLLOW_OPS = CPU_HALF_ELEMENTWISE | frozenset({
    OpType.FUSED_ELEMENTWISE, OpType.MAX_POOL, OpType.AVERAGE_POOL, OpType.GLOBAL_AVERAGE_POOL,
    OpType.LRN, OpType.BATCH_NORM, OpType.INSTANCE_NORM,
    OpType.GROUP_NORM, OpType.SOFTMAX, OpType.LOG_SOFTMAX, OpType.REDUCE_MEAN, OpType.REDUCE_SUM,
    OpType.REDUCE_MAX, OpType.REDUCE_MIN, OpType.CONCAT, OpType.SPLIT, OpType.SLICE, OpType.GATHER,
    OpType.RESHAPE, OpType.FLATTEN, OpType.TRANSPOSE, OpType.SQUEEZE, OpType.UNSQUEEZE, OpType.EXPAND,
    OpType.PAD, OpType.TILE, OpType.DEPTH_TO_SPACE, OpType.SPACE_TO_DEPTH})
#: Normalizations a half-precision CPU build keeps in fp32 unless ``layer_precisions`` names them
#: (they have half kernels): in a transformer their outputs are the residual stream, which every
#: later layer adds to, and 16-bit storage of it rounds the whole stream at each of them. BERT-base
#: in bf16 (random weights, batch 1): max relative error against fp32 1.9e-2 with them in bf16,
#: 7.0e-3 in fp32, for one conversion before and after each (twenty-sixth session).
CPU_HALF_FP32_NORMS = frozenset({OpType.LAYER_NORM, OpType.SKIP_LAYER_NORM})
#: Every op a CPU build may run in half precision (a ``layer_precisions`` entry too).
CPU_HALF_OPS = CPU_HALF_COMPUTE_OPS | CPU_HALF_FOLLOW_OPS | CPU_HALF_FP32_NORMS
#: Ops that ``BuildConfig.precision="int8"`` (or an ``int8`` entry of ``layer_precisions``) makes
#: INT8 layers, where their form allows (``ember.passes.int8``); every other layer stays fp32.
INT8_OPS = frozenset({OpType.CONV, OpType.FUSED_CONV, OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM})
#: Ops that ``precision="fp8"`` (CUDA only) marks FP8: the GEMMs and the convolutions, whose FP8
#: kernels (``ember.backends.cuda.kernels.gemm_fp8``, ``conv_fp8``) take a constant weight; the
#: layers they do not apply to compute fp16 (their other tactics), as every other layer of an FP8 build.
FP8_OPS = frozenset({OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM, OpType.CONV, OpType.FUSED_CONV})
#: The ops each quantized precision applies to.
QUANTIZED_OPS = {Precision.INT8: INT8_OPS, Precision.FP8: FP8_OPS}


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


def half_capable(node: Node) -> bool:
    """Whether the CPU has a half-precision kernel for ``node`` (a FusedElementwise: every step)."""
    if node.op is OpType.FUSED_ELEMENTWISE:
        return node.attrs is not None and all(step.op in CPU_HALF_ELEMENTWISE for step in node.attrs.steps)
    return node.op in CPU_HALF_OPS


def usable_half_precisions(cfg: BuildConfig, model: str) -> frozenset[Precision]:
    """The half precisions a CPU build asks for (``precision`` or ``layer_precisions``) that this
    CPU runs natively. bf16 without native support warns (``CPUPrecisionWarning``: those layers
    stay fp32); fp16 without AMX-FP16 is a ``BuildError``."""
    from ember.backends.cpu.features import CPUPrecisionWarning, cpu_features

    asked = {cfg.precision, *cfg.layer_precisions.values()} & {Precision.BF16, Precision.FP16}
    if not asked:
        return frozenset()
    cpu = cpu_features()
    usable = set()
    for p in sorted(asked):
        if cpu.native(p):
            usable.add(p)
        elif p is Precision.FP16:
            alt = "bf16 (native here) or fp32" if cpu.native(Precision.BF16) else "fp32"
            raise BuildError(f"model {model!r}: precision fp16 on the CPU needs AMX-FP16 ({cpu.missing(p)}), "
                             f"which this CPU ({cpu.name}) lacks; without it oneDNN's fp16 is slower than "
                             f"fp32. Build with precision {alt}, or for --device cuda")
        else:
            warnings.warn(f"model {model!r}: precision {p.value} asked, but this CPU ({cpu.name}) has no native "
                          f"{p.value} ({cpu.missing(p)} missing), where oneDNN would emulate it slower than "
                          f"fp32; the engine keeps fp32. Build on a CPU with AVX512-BF16 or AMX for {p.value}",
                          CPUPrecisionWarning, stacklevel=2)
    return frozenset(usable)


def _cpu_default(node: Node, graph: Graph, default: Precision, producer: Mapping[str, str],
                 precisions: Mapping[str, Precision]) -> Precision:
    """A CPU layer's precision when nothing names it: a half ``default`` for the compute-heavy
    layers, and for the cheap ones whose float inputs all come from half layers; else fp32. A
    cheap layer that also reads an fp32 tensor stays fp32 (its half input converted up, not the
    fp32 one down): a pre-LN transformer's residual ``Add(stream, block output)`` keeps its fp32
    stream so, as ``CPU_HALF_FP32_NORMS`` keeps a post-LN one's."""
    if not default.is_half or not half_capable(node):
        return default if not default.is_half else Precision.FP32
    if node.op in CPU_HALF_COMPUTE_OPS:
        return default
    if node.op in CPU_HALF_FP32_NORMS:
        return Precision.FP32
    half: Precision | None = None
    for name in node.inputs:
        t = graph.types.get(name) if name and name not in graph.constants else None
        if t is None or not t.dtype.is_float:
            continue
        read = precisions.get(producer.get(name, ""), Precision.FP32)
        if not read.is_half:
            return Precision.FP32
        half = half or read
    return half or Precision.FP32


@register_pass("assign_precisions", Phase.PRECISION)
def assign_precisions(graph: Graph, ctx: PassContext) -> Graph:
    """Records each floating-point layer's compute precision (``ctx.records.precision``)."""
    cfg = ctx.config
    cpu = cfg.device is Device.CPU
    _check_keys(graph, cfg.layer_precisions)
    producer = {o: n.name for n in graph.nodes for o in n.outputs if o} if cpu else {}
    if cpu:  # fp32; int8 where a layer can (``ember.passes.int8``); half where the CPU has it
        usable = usable_half_precisions(cfg, graph.name)
        default = cfg.precision if cfg.precision in usable else Precision.FP32
        table: Mapping[str, Precision] = {
            k: (p if p in usable or not p.is_half else Precision.FP32)
            for k, p in cfg.layer_precisions.items() if p in CPU_PRECISIONS}
    else:  # an INT8 or FP8 CUDA build runs its float layers in half precision (TensorRT's int8 + fp16)
        default = Precision.FP16 if cfg.precision.is_quantized else cfg.precision
        table = cfg.layer_precisions
    quantized_default = cfg.precision if cfg.precision.is_quantized else None
    precisions: dict[str, Precision] = {}
    for node in graph.nodes:
        if node.op in FP32_ONLY_OPS:
            precisions[node.name] = Precision.FP32
            continue
        outs = [graph.types.get(o) for o in node.outputs if o]
        if not any(t is not None and t.dtype.is_float for t in outs):
            continue
        chosen = _override(node, table)
        if chosen is not None and chosen.is_quantized and node.op not in QUANTIZED_OPS[chosen]:
            chosen = None  # only convolutions and GEMMs have INT8 and FP8 kernels: the default instead
        if chosen is None:
            if quantized_default is not None and node.op in QUANTIZED_OPS[quantized_default]:
                chosen = quantized_default
            else:
                chosen = _cpu_default(node, graph, default, producer, precisions) if cpu else default
        elif cpu and chosen.is_half and not half_capable(node):
            chosen = Precision.FP32  # no half-precision kernel on the CPU
        precisions[node.name] = chosen
    plan = PrecisionPlan(precisions)
    if ctx.records.precision == plan:
        return graph
    ctx.records = ctx.records.with_(precision=plan)
    ctx.count("layer => precision", len(precisions))
    return graph
