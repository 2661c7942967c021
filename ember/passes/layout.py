"""Layout assignment: channels-last (NHWC) or channels-first (NCHW) memory per 4-D tensor.

Logical shapes stay NCHW in the IR (ONNX semantics); the layout is the *memory format* a
backend stores a 4-D activation in. The pass records a ``LayoutPlan``
(``ctx.records.layout``, ``ember.plan.records``): the preferred format, the 4-D activations to
keep channels-last, the conv weights to convert once at build time, and every place a
conversion happens.

With ``nhwc``: convolution-like layers produce channels-last; layout-agnostic layers
(elementwise, activations, channel Concat/Split, pooling) follow the format most of their 4-D
inputs have, so chains of them need no conversion; everything else (Reshape, Flatten, MatMul,
Softmax, ...) reads NCHW. A conversion is counted where a tensor's format differs from what a
reader wants, and for graph outputs (users get NCHW). With ``nchw`` nothing is converted.

The preference is ``BuildConfig.layout`` (``nchw``, ``nhwc``, or ``auto``: the device's
default, channels-last on both). CUDA: tensor cores want it.
CPU: oneDNN's convolution with prepacked weights computes channels-last whatever its input
(PyTorch's ``_convolution_pointwise``), so an NCHW plan pays a reorder per convolution; measured
on the 2-core test machine (2 threads, batch 1, best of 7): ResNet-50 40.5 ms NHWC vs 61.3 ms
NCHW, GoogLeNet 20.3 vs 37.7 ms, MobileNetV2 6.2 vs 12.3 ms.

Backends read the plan through ``ember.backends.layout`` (``planned_format``).
"""
from __future__ import annotations

from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.passes.manager import PassContext, Phase, register_pass
from ember.plan.config import BuildConfig, Device, Layout
from ember.plan.records import OUTPUT_READER, LayoutConversion, LayoutPlan

NCHW, NHWC = Layout.NCHW, Layout.NHWC
DEVICE_LAYOUT = {Device.CPU: NHWC, Device.CUDA: NHWC}

#: Layers that compute fastest on channels-last activations.
ANCHORS = frozenset({OpType.CONV, OpType.FUSED_CONV, OpType.CONV_TRANSPOSE, OpType.MAX_POOL,
                     OpType.AVERAGE_POOL, OpType.BATCH_NORM, OpType.RESIZE})
#: Layers that compute the same on either format and produce the format of their inputs.
AGNOSTIC = frozenset({
    OpType.RELU, OpType.LEAKY_RELU, OpType.PRELU, OpType.SIGMOID, OpType.TANH, OpType.HARD_SIGMOID,
    OpType.HARD_SWISH, OpType.CLIP, OpType.GELU, OpType.ERF, OpType.SQRT, OpType.EXP, OpType.LOG,
    OpType.NEG, OpType.ABS, OpType.RECIPROCAL, OpType.ADD, OpType.SUB, OpType.MUL, OpType.DIV,
    OpType.POW, OpType.MAX, OpType.MIN, OpType.CONCAT, OpType.SPLIT, OpType.GLOBAL_AVERAGE_POOL,
    OpType.LRN, OpType.PAD, OpType.IDENTITY, OpType.DROPOUT, OpType.FUSED_ELEMENTWISE,
})
#: Weight input slots of anchors (converted to channels-last once, at build time).
WEIGHT_SLOTS = {OpType.CONV: 1, OpType.FUSED_CONV: 1, OpType.CONV_TRANSPOSE: 1}


def preferred_layout(config: BuildConfig) -> Layout:
    """``NCHW`` or ``NHWC`` for this build."""
    if config.layout is Layout.AUTO:
        return DEVICE_LAYOUT.get(config.device, NCHW)
    return config.layout


def _is_4d_activation(g: Graph, name: str) -> bool:
    t = g.types.get(name)
    return bool(name) and name not in g.constants and t is not None and t.rank == 4 and t.dtype.is_float


def _node_format(node: Node, g: Graph, fmt: dict[str, Layout]) -> Layout:
    """The format ``node`` computes in (and writes its 4-D outputs in)."""
    if node.op in ANCHORS:
        return NHWC
    if node.op in AGNOSTIC:
        if node.op in (OpType.CONCAT, OpType.SPLIT) and not _channel_axis(node, g):
            return NCHW
        formats = [fmt.get(i, NCHW) for i in node.inputs if _is_4d_activation(g, i)]
        if formats and formats.count(NHWC) * 2 >= len(formats):
            return NHWC
    return NCHW


def _channel_axis(node: Node, g: Graph) -> bool:
    rank = g.type_of(node.outputs[0]).rank
    axis = node.attrs.axis if node.attrs is not None else 0
    return (axis + rank if axis < 0 else axis) == 1


def assign(graph: Graph) -> LayoutPlan:
    """The channels-last plan of ``graph`` (see the module docstring)."""
    fmt: dict[str, Layout] = {}
    conversions: list[LayoutConversion] = []
    weights: list[str] = []
    for node in graph.nodes:
        want = _node_format(node, graph, fmt)
        for i in node.inputs:
            if _is_4d_activation(graph, i) and fmt.get(i, NCHW) != want:
                conversions.append(LayoutConversion(i, want, node.name))
        slot = WEIGHT_SLOTS.get(node.op)
        if slot is not None and node.input(slot) in graph.constants:
            weights.append(node.input(slot))
        for o in node.outputs:
            if _is_4d_activation(graph, o):
                fmt[o] = want
    for o in graph.outputs:
        if fmt.get(o) == NHWC:
            conversions.append(LayoutConversion(o, NCHW, OUTPUT_READER))
    return LayoutPlan(NHWC, frozenset(k for k, v in fmt.items() if v == NHWC), frozenset(weights),
                      tuple(conversions))


@register_pass("assign_layout", Phase.LAYOUT)
def assign_layout(graph: Graph, ctx: PassContext) -> Graph:
    """Chooses NHWC/NCHW memory per 4-D tensor for the backend's preference."""
    plan = assign(graph) if preferred_layout(ctx.config) is NHWC else LayoutPlan(NCHW)
    if ctx.records.layout == plan:
        return graph
    if plan.nhwc:
        ctx.count("4-D activation => channels-last", len(plan.nhwc))
        ctx.count("layout conversion", len(plan.conversions))
    ctx.records = ctx.records.with_(layout=plan)
    return graph
