"""The closed set of operator kinds Ember's IR knows.

ONNX op names are mapped onto these once, in the frontend. Fused kinds (``FUSED_*``) are made
only by the optimizer's passes and never appear in a freshly imported graph.
"""
from __future__ import annotations

import enum


class OpType(enum.Enum):
    # convolution family
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    BATCH_NORM = "BatchNormalization"
    # activations (unary)
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    PRELU = "PRelu"
    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    CLIP = "Clip"
    GELU = "Gelu"
    ERF = "Erf"
    SQRT = "Sqrt"
    EXP = "Exp"
    LOG = "Log"
    NEG = "Neg"
    ABS = "Abs"
    RECIPROCAL = "Reciprocal"
    NOT = "Not"
    # binary / variadic elementwise
    ADD = "Add"
    SUB = "Sub"
    MUL = "Mul"
    DIV = "Div"
    POW = "Pow"
    MAX = "Max"
    MIN = "Min"
    EQUAL = "Equal"
    LESS = "Less"
    GREATER = "Greater"
    WHERE = "Where"
    # pooling and normalisation
    MAX_POOL = "MaxPool"
    AVERAGE_POOL = "AveragePool"
    GLOBAL_AVERAGE_POOL = "GlobalAveragePool"
    LRN = "LRN"
    LAYER_NORM = "LayerNormalization"
    SOFTMAX = "Softmax"
    LOG_SOFTMAX = "LogSoftmax"
    # linear algebra
    GEMM = "Gemm"
    MATMUL = "MatMul"
    # reductions
    REDUCE_MEAN = "ReduceMean"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MAX = "ReduceMax"
    # shape and data movement
    CONCAT = "Concat"
    SPLIT = "Split"
    SLICE = "Slice"
    GATHER = "Gather"
    RESHAPE = "Reshape"
    FLATTEN = "Flatten"
    TRANSPOSE = "Transpose"
    SQUEEZE = "Squeeze"
    UNSQUEEZE = "Unsqueeze"
    EXPAND = "Expand"
    SHAPE = "Shape"
    CONSTANT_OF_SHAPE = "ConstantOfShape"
    CAST = "Cast"
    RANGE = "Range"
    PAD = "Pad"
    RESIZE = "Resize"
    IDENTITY = "Identity"
    DROPOUT = "Dropout"
    # fused layers made by the optimizer (see ember/passes/)
    FUSED_CONV = "FusedConv"            # conv + bias + optional residual add + activation
    FUSED_GEMM = "FusedGemm"            # matmul/gemm + bias + activation
    FUSED_ATTENTION = "FusedAttention"  # softmax(q k^T * scale + mask) v
    FUSED_ELEMENTWISE = "FusedElementwise"

    def __str__(self) -> str:
        return self.value
