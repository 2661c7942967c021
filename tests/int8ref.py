"""ONNX Runtime as the reference for 8-bit results, except where its kernels are wrong.

On an x86 CPU without VNNI or AMX (``ember.backends.cpu.features.int8_saturates``), ONNX Runtime's
MLAS multiplies u8 x s8 with ``vpmaddubsw``, which adds each pair of products in 16 bits and
saturates: on an AVX2 EPYC its MatMulInteger was off by up to 17525 of its int32 results. Ember
computes such layers in float32 there. On those CPUs the tests take their 8-bit references from
ONNX's own reference implementation (``onnx.reference``: integer arithmetic in numpy) for the
integer ops it has, run QDQ models in ONNX Runtime without its graph optimizations (the Q/DQ
pairs then run as float ops instead of being fused into 8-bit kernels), and skip, with this
reason, what only ONNX Runtime can run (its contrib ops)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx

from ember.backends.cpu.features import int8_saturates

#: Whether ONNX Runtime's 8-bit kernels saturate on this CPU.
ORT_INT8_WRONG = int8_saturates()
ORT_INT8_REASON = ("ONNX Runtime's 8-bit kernels saturate on this CPU (x86 without VNNI or AMX: vpmaddubsw adds "
                   "u8 x s8 pairs in 16 bits), so it is no reference for INT8 results here")
#: Ops whose ONNX Runtime kernels run 8-bit arithmetic (ai.onnx, and com.microsoft's).
INT8_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
                      "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeLSTM", "QAttention", "QLinearAdd",
                      "QLinearMul", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid",
                      "QLinearLeakyRelu", "QLinearAveragePool", "QLinearSoftmax"})


def integer_ops(model: onnx.ModelProto) -> set[str]:
    """The 8-bit ops of ``model``'s main graph."""
    return {n.op_type for n in model.graph.node} & INT8_OPS


def needs_other_reference(model: onnx.ModelProto) -> bool:
    """Whether ONNX Runtime's outputs for ``model`` may be wrong on this CPU."""
    return ORT_INT8_WRONG and bool(integer_ops(model))


def reference_run(model: onnx.ModelProto, feeds: Mapping[str, Any]) -> list[np.ndarray]:
    """``model``'s outputs from ``onnx.reference`` (exact integer arithmetic)."""
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 21)
    if opset < 19:  # onnx.reference implements QuantizeLinear / DequantizeLinear from opset 19 on
        model = version_converter.convert_version(model, 21)
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, dict(feeds))]


def ort_options() -> Any:
    """Session options for QDQ models: no graph optimizations where ONNX Runtime's fused 8-bit
    kernels saturate (``ORT_INT8_WRONG``), the defaults elsewhere."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if ORT_INT8_WRONG:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return opts
