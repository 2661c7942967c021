"""Ember's plugin pack for ONNX Runtime's ``com.microsoft`` contrib ops: the ops ONNX Runtime's
transformer optimizer (``onnxruntime.transformers.optimizer``) and quantizer write into saved
models, with the semantics of ONNX Runtime's ContribOperators.md (checked against ONNX Runtime's
own output in ``tests/plugins``).

Every op here is *lowered* into Ember's built-in IR ops, so the optimizer's fusions (attention,
GEMM + bias + activation, LayerNorm of a residual sum, conv + activation) and Ember's fast
kernels apply, and an engine built from such a model needs no plugin at load time:

================================  ===============================================================
op                                lowered to
================================  ===============================================================
Gelu, BiasGelu                    [Add] + Gelu (erf)
FastGelu                          [Add] + Gelu (tanh approximation)
QuickGelu                         x * Sigmoid(alpha * x)
BiasAdd                           Add + Add
SkipLayerNormalization            Add(s) + LayerNormalization (fused again: SkipLayerNormalization)
SkipSimplifiedLayerNormalization  Add(s) + RMSNormalization
SimplifiedLayerNormalization      RMSNormalization (default domain, ONNX Runtime's op)
LayerNormalization                LayerNormalization (ONNX Runtime's, before opset 17)
EmbedLayerNormalization           Gathers + Adds + LayerNormalization; mask index by ReduceSum
Attention, MultiHeadAttention     MatMul/Split/Reshape/Transpose + softmax(q k^T * s + mask) v,
                                  which ``fuse_attention`` turns into one FusedAttention
FusedMatMul                       Transpose + MatMul [* alpha]
FusedConv                         Conv [+ Z] + activation (fused again: FusedConv)
MatMulIntegerToFloat              MatMulInteger + Cast + Mul(scales) [+ bias]
DynamicQuantizeMatMul             DynamicQuantizeLinear + the above
QGemm                             [Transpose] + MatMulInteger [+ C] + Cast + Mul [+ QuantizeLinear]
DynamicQuantizeLSTM               DequantizeLinear(W, R) + Transpose + LSTM
================================  ===============================================================

Forms ONNX Runtime accepts but this pack does not (rotary attention, shared past/present
buffers, Megatron 4-D masks, ...) are refused by name with the reason.
"""
from ember.frontends.contrib_ms import activation, attention, linalg, norm, recurrent  # noqa: F401

__all__ = ["activation", "attention", "linalg", "norm", "recurrent"]
