"""Per-layer precision: the engine's precision, overridden by name or op type.

``BuildConfig(precision="fp16", layer_precisions={"Softmax": "fp32", "bert/layer.0/attn": "fp32"})``:
a key matches a layer by its name, by any source-model node it was fused from, or by op type
(the ONNX-style name such as ``"Softmax"``, or ``"FusedConv"``). A name beats an op type.

Independently of this, kernels of ops that lose accuracy in half precision (softmax,
normalization statistics, large reductions, LRN) keep their internal math in fp32 by default.
"""
from __future__ import annotations

from typing import Mapping

from ember.ir.graph import Node
from ember.ir.optype import OpType

#: Ops whose CUDA kernels compute their statistics/accumulations in fp32 whatever the precision.
FP32_INTERNAL = frozenset({
    OpType.SOFTMAX, OpType.LOG_SOFTMAX, OpType.LAYER_NORM, OpType.BATCH_NORM, OpType.LRN,
    OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.FUSED_ATTENTION, OpType.GLOBAL_AVERAGE_POOL,
})


def layer_precision(node: Node, default: str, overrides: Mapping[str, str]) -> str:
    """The precision ``node`` runs in: by name (or fused origin), else op type, else ``default``."""
    for key in (node.name, *node.origin):
        if key in overrides:
            return overrides[key]
    for key in (node.op.value, node.op.name):
        if key in overrides:
            return overrides[key]
    return default
