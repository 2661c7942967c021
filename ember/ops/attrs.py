"""Frozen attribute dataclasses, one per op that has attributes.

Conventions (frontends canonicalize every opset variant to these):
- spatial tuples (kernel, strides, dilations) have one entry per spatial dim;
- ``pads`` is ``(begin_0, ..., begin_n, end_0, ..., end_n)`` as in ONNX;
- axes are stored as the file gave them (possibly negative); normalize with the rank;
- parameters that ONNX moved from attributes to inputs across opsets (Squeeze/Unsqueeze/Reduce
  axes, Split sizes, Clip bounds, Pad pads) are attributes here when they were constant at import;
  ``None`` means "read it from the extra input at run time" (or the op's default when that input
  is absent too);
- a field that names one of a fixed set of choices is an enum (a ``DType`` for element types, an
  ``AttrEnum`` below for modes): frontends turn a file's strings into these once. The enums are
  ``StrEnum``s, so code that compares ``attrs.mode == "linear"`` keeps working, and attrs made
  from strings (older engine files, tests, passes) are coerced to the enum on construction.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, TypeVar

from ember.ir.dtype import DType

_E = TypeVar("_E", bound=enum.Enum)


class AttrEnum(enum.StrEnum):
    """Base of the string-valued choice enums of op attributes.

    ``repr`` is the bare value (``'linear'``), so messages and graph dumps that print attrs read
    as they did when these fields were plain strings.
    """

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every allowed spelling, in declaration order (for error messages)."""
        return tuple(m.value for m in cls)


def coerce_enum(obj: object, field: str, kind: type[_E]) -> None:
    """Replaces ``obj.field`` (a frozen dataclass field) by ``kind(value)``.

    Attrs are frozen, so this runs from ``__post_init__``; a value that names no member raises
    ValueError listing the allowed ones (frontends check file values earlier, with the node).
    """
    value = getattr(obj, field)
    if isinstance(value, kind):
        return
    try:
        member = kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{type(obj).__name__}.{field}={value!r} is not one of {allowed}") from None
    object.__setattr__(obj, field, member)


class GeluApproximate(AttrEnum):
    NONE = "none"  # the exact, erf-based form
    TANH = "tanh"


class PadMode(AttrEnum):
    CONSTANT = "constant"
    REFLECT = "reflect"
    EDGE = "edge"
    WRAP = "wrap"  # opset 19


class ResizeMode(AttrEnum):
    NEAREST = "nearest"
    LINEAR = "linear"
    CUBIC = "cubic"


class CoordinateTransform(AttrEnum):
    """Resize's ``coordinate_transformation_mode``: how an output coordinate maps to the input."""

    HALF_PIXEL = "half_pixel"
    HALF_PIXEL_SYMMETRIC = "half_pixel_symmetric"
    PYTORCH_HALF_PIXEL = "pytorch_half_pixel"
    ALIGN_CORNERS = "align_corners"
    ASYMMETRIC = "asymmetric"
    TF_HALF_PIXEL_FOR_NN = "tf_half_pixel_for_nn"  # opsets 11-12 only
    TF_CROP_AND_RESIZE = "tf_crop_and_resize"


class NearestMode(AttrEnum):
    """Resize's ``nearest_mode``: how a fractional input coordinate picks a pixel."""

    ROUND_PREFER_FLOOR = "round_prefer_floor"
    ROUND_PREFER_CEIL = "round_prefer_ceil"
    FLOOR = "floor"
    CEIL = "ceil"


class KeepAspectRatioPolicy(AttrEnum):
    """Resize's ``keep_aspect_ratio_policy`` (opset 18): how ``sizes`` keep the aspect ratio."""

    STRETCH = "stretch"
    NOT_LARGER = "not_larger"
    NOT_SMALLER = "not_smaller"


class DepthToSpaceMode(AttrEnum):
    DCR = "DCR"  # depth-column-row (ONNX's default)
    CRD = "CRD"  # column-row-depth (PyTorch's PixelShuffle)


class ScatterReduction(AttrEnum):
    NONE = "none"
    ADD = "add"
    MUL = "mul"
    MAX = "max"
    MIN = "min"


class GridSampleMode(AttrEnum):
    """GridSample's interpolation (opset 20's ``linear``/``cubic`` are stored as these)."""

    BILINEAR = "bilinear"
    NEAREST = "nearest"
    BICUBIC = "bicubic"


class GridSamplePadding(AttrEnum):
    ZEROS = "zeros"
    BORDER = "border"
    REFLECTION = "reflection"


class RoiAlignMode(AttrEnum):
    """RoiAlign's pooling over a bin's sampling points."""

    AVG = "avg"
    MAX = "max"


class RoiCoordinateTransform(AttrEnum):
    """RoiAlign's ``coordinate_transformation_mode`` (opset 16; opset 10 behaves as
    ``output_half_pixel``): ``half_pixel`` shifts ROI corners by -0.5 pixel after scaling."""

    HALF_PIXEL = "half_pixel"
    OUTPUT_HALF_PIXEL = "output_half_pixel"


class RNNDirection(AttrEnum):
    FORWARD = "forward"
    REVERSE = "reverse"
    BIDIRECTIONAL = "bidirectional"


class RNNActivation(AttrEnum):
    """Activation functions of LSTM/GRU/RNN gates, in ONNX's spelling (files may use any case)."""

    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    RELU = "Relu"
    HARD_SIGMOID = "HardSigmoid"
    LEAKY_RELU = "LeakyRelu"
    THRESHOLDED_RELU = "ThresholdedRelu"
    SCALED_TANH = "ScaledTanh"
    AFFINE = "Affine"
    ELU = "Elu"
    SOFTSIGN = "Softsign"
    SOFTPLUS = "Softplus"


class AutoPad(enum.Enum):
    NOTSET = "NOTSET"
    SAME_UPPER = "SAME_UPPER"
    SAME_LOWER = "SAME_LOWER"
    VALID = "VALID"


class Activation(enum.Enum):
    """Activations a fused layer can apply in its epilogue."""

    NONE = "none"
    RELU = "relu"
    CLIP = "clip"            # params: (min, max); ReLU6 is CLIP(0, 6)
    LEAKY_RELU = "leaky_relu"  # params: (alpha,)
    SIGMOID = "sigmoid"
    SILU = "silu"
    HARD_SWISH = "hard_swish"
    HARD_SIGMOID = "hard_sigmoid"  # params: (alpha, beta)
    TANH = "tanh"
    GELU_ERF = "gelu_erf"
    GELU_TANH = "gelu_tanh"


def activation_params(act: Activation, params: Sequence[float]) -> tuple[float, ...]:
    """``act``'s parameters with ONNX's defaults filled in, as floats: CLIP ``(min, max)`` (±inf
    when absent), LEAKY_RELU ``(alpha,)`` (0.01), HARD_SIGMOID ``(alpha, beta)`` (0.2, 0.5);
    ``()`` for the others. Every backend reads its epilogue parameters through this."""
    p = [float(v) for v in params]
    if act is Activation.CLIP:
        return (p[0] if len(p) > 0 else -math.inf, p[1] if len(p) > 1 else math.inf)
    if act is Activation.LEAKY_RELU:
        return (p[0] if p else 0.01,)
    if act is Activation.HARD_SIGMOID:
        return (p[0] if len(p) > 0 else 0.2, p[1] if len(p) > 1 else 0.5)
    return ()


@dataclass(frozen=True)
class ConvAttrs:
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int = 1
    auto_pad: AutoPad = AutoPad.NOTSET


@dataclass(frozen=True)
class ConvTransposeAttrs:
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    output_padding: tuple[int, ...]
    group: int = 1
    auto_pad: AutoPad = AutoPad.NOTSET
    output_shape: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class BatchNormAttrs:
    epsilon: float = 1e-5


@dataclass(frozen=True)
class LeakyReluAttrs:
    alpha: float = 0.01


@dataclass(frozen=True)
class HardSigmoidAttrs:
    alpha: float = 0.2
    beta: float = 0.5


@dataclass(frozen=True)
class ClipAttrs:
    min: Optional[float] = None   # None: unbounded (or from input 1 when present)
    max: Optional[float] = None


@dataclass(frozen=True)
class GeluAttrs:
    approximate: GeluApproximate = GeluApproximate.NONE

    def __post_init__(self) -> None:
        coerce_enum(self, "approximate", GeluApproximate)


@dataclass(frozen=True)
class PoolAttrs:
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = False
    auto_pad: AutoPad = AutoPad.NOTSET
    storage_order: int = 0  # MaxPool's Indices output: 0 row-major, 1 column-major


@dataclass(frozen=True)
class NMSAttrs:
    """NonMaxSuppression: ``center_point_box`` True: boxes are ``[x_center, y_center, w, h]``,
    False: two corners ``[y1, x1, y2, x2]`` in either order."""

    center_point_box: bool = False


class LossReduction(AttrEnum):
    NONE = "none"
    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True)
class LossAttrs:
    """NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (losses as plain functions of their
    inputs): ``mean`` divides by the summed weights of the targets not ignored."""

    reduction: LossReduction = LossReduction.MEAN
    ignore_index: Optional[int] = None

    def __post_init__(self) -> None:
        coerce_enum(self, "reduction", LossReduction)


@dataclass(frozen=True)
class DeformConvAttrs:
    """DeformConv(X, W, offset, B?, mask?): a 2-D convolution sampling the input bilinearly at
    positions moved by ``offset`` (``offset_group`` groups of input channels share offsets)."""

    conv: ConvAttrs
    offset_group: int = 1


@dataclass(frozen=True)
class MaxUnpoolAttrs:
    """MaxUnpool(X, I, output_shape?): X's values scattered to the flat indices I."""

    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()


@dataclass(frozen=True)
class TensorScatterAttrs:
    """TensorScatter (opset 24): ``update`` written into ``past_cache`` along ``axis`` from each
    batch's ``write_indices`` (0 when absent); ``circular`` wraps positions past the end."""

    axis: int = -2
    circular: bool = False


@dataclass(frozen=True)
class Col2ImAttrs:
    """Col2Im(input[N, C * prod(block), L], image_shape, block_shape): per spatial axis (empty:
    1 / 0 everywhere) ``strides``, ``dilations`` and ``pads`` (begins then ends)."""

    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()


@dataclass(frozen=True)
class UniqueAttrs:
    """Unique: the distinct elements (``axis`` None: of the flattened input) or slices along
    ``axis``, sorted ascending or (``sorted`` False) in order of first occurrence."""

    axis: Optional[int] = None
    sorted: bool = True


@dataclass(frozen=True)
class ReverseSequenceAttrs:
    batch_axis: int = 1
    time_axis: int = 0


@dataclass(frozen=True)
class AffineGridAttrs:
    """AffineGrid(theta[N, 2, 3] or [N, 3, 4], size) -> sampling grid [N, (D,) H, W, 2 or 3]."""

    align_corners: bool = False


@dataclass(frozen=True)
class LpPoolAttrs:
    """LpPool: ``(sum of |x|^p over the window) ^ (1/p)``, the window as a pool's (pads count
    as zeros)."""

    pool: PoolAttrs
    p: float = 2.0


@dataclass(frozen=True)
class LRNAttrs:
    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    bias: float = 1.0


@dataclass(frozen=True)
class LayerNormAttrs:
    axis: int = -1
    epsilon: float = 1e-5


@dataclass(frozen=True)
class RMSNormAttrs:
    """RMSNormalization (opset 23): ``x / sqrt(mean(x^2 over [axis, rank)) + epsilon) * scale``,
    the statistics in float32 (stash_type 1, the only one Ember runs)."""

    axis: int = -1
    epsilon: float = 1e-5


@dataclass(frozen=True)
class AttentionAttrs:
    """ONNX Attention (opsets 23-25), every attribute as the file gave it (None: absent).

    Inputs ``(Q, K, V, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?)``, 3-D
    ``[B, S, H * D]`` (then ``q_num_heads``/``kv_num_heads`` are required) or 4-D ``[B, H, S, D]``;
    outputs ``(Y, present_key?, present_value?, qk_matmul_output?)``. ``softmax_precision``: the
    type the softmax runs in (None: the inputs'). ``left/right_window_size`` (opset 25): -1 is
    unbounded.
    """

    is_causal: bool = False
    q_num_heads: Optional[int] = None
    kv_num_heads: Optional[int] = None
    qk_matmul_output_mode: int = 0
    scale: Optional[float] = None
    softcap: float = 0.0
    softmax_precision: Optional[DType] = None
    left_window_size: int = -1
    right_window_size: int = -1

    def __post_init__(self) -> None:
        if self.softmax_precision is not None:
            coerce_enum(self, "softmax_precision", DType)
        if self.qk_matmul_output_mode not in (0, 1, 2, 3):
            raise ValueError(f"AttentionAttrs.qk_matmul_output_mode={self.qk_matmul_output_mode} "
                             f"must be 0, 1, 2 or 3")


class LinearAttentionRule(AttrEnum):
    """LinearAttention's ``update_rule``: decay gating and/or delta correction of the state."""

    LINEAR = "linear"
    GATED = "gated"
    DELTA = "delta"
    GATED_DELTA = "gated_delta"


@dataclass(frozen=True)
class LinearAttentionAttrs:
    """LinearAttention (opset 27): inputs ``(query, key, value, past_state?, decay?, beta?)``,
    3-D packed ``[B, T, H * D]``; outputs ``(output, present_state)``. ``scale`` 0: 1/sqrt(d_k).
    ``chunk_size`` is a tuning hint that does not change the result."""

    q_num_heads: int
    kv_num_heads: int
    update_rule: LinearAttentionRule = LinearAttentionRule.GATED_DELTA
    scale: float = 0.0
    chunk_size: int = 64

    def __post_init__(self) -> None:
        coerce_enum(self, "update_rule", LinearAttentionRule)
        if self.q_num_heads <= 0 or self.kv_num_heads <= 0 or self.q_num_heads % self.kv_num_heads:
            raise ValueError(f"LinearAttentionAttrs: q_num_heads ({self.q_num_heads}) must be a "
                             f"positive multiple of kv_num_heads ({self.kv_num_heads})")

    @property
    def gated(self) -> bool:
        return self.update_rule in (LinearAttentionRule.GATED, LinearAttentionRule.GATED_DELTA)

    @property
    def delta(self) -> bool:
        return self.update_rule in (LinearAttentionRule.DELTA, LinearAttentionRule.GATED_DELTA)


@dataclass(frozen=True)
class RotaryEmbeddingAttrs:
    """RotaryEmbedding (opset 23): inputs ``(input, cos_cache, sin_cache, position_ids?)``, input
    4-D ``[B, H, S, D]`` or 3-D ``[B, S, H * D]`` (then ``num_heads`` is needed); the first
    ``rotary_embedding_dim`` (0: all) of each head's dims rotate, as halves or interleaved pairs."""

    interleaved: bool = False
    rotary_embedding_dim: int = 0
    num_heads: int = 0


@dataclass(frozen=True)
class CausalConvAttrs:
    """CausalConvWithState (opset 27): inputs ``(input[B, C, L], weight[C, 1, k], bias?,
    past_state[B, C, k - 1]?)``; ``silu``: the fused SiLU/Swish activation."""

    silu: bool = False


class BitShiftDirection(AttrEnum):
    LEFT = "LEFT"
    RIGHT = "RIGHT"


@dataclass(frozen=True)
class BitShiftAttrs:
    direction: BitShiftDirection = BitShiftDirection.LEFT

    def __post_init__(self) -> None:
        coerce_enum(self, "direction", BitShiftDirection)


@dataclass(frozen=True)
class SoftmaxAttrs:
    axis: int = -1
    legacy_flatten: bool = False  # opset < 13: coerce to 2-D at ``axis`` first


@dataclass(frozen=True)
class GemmAttrs:
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False
    trans_b: bool = False


@dataclass(frozen=True)
class ReduceAttrs:
    axes: Optional[tuple[int, ...]] = None  # None: all axes, or from input 1 when present
    keepdims: bool = True
    noop_with_empty_axes: bool = False


@dataclass(frozen=True)
class AxisAttrs:
    """For Concat, Gather, Flatten, Softmax-like ops that take one axis."""

    axis: int = 0


@dataclass(frozen=True)
class SplitAttrs:
    axis: int = 0
    split: Optional[tuple[int, ...]] = None  # None: equal parts (num_outputs) or from input 1
    num_outputs: Optional[int] = None


@dataclass(frozen=True)
class SliceAttrs:
    """Slice parameters when they were constant at import; else read from inputs 1..4."""

    starts: Optional[tuple[int, ...]] = None
    ends: Optional[tuple[int, ...]] = None
    axes: Optional[tuple[int, ...]] = None
    steps: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class ReshapeAttrs:
    allowzero: bool = False


@dataclass(frozen=True)
class TransposeAttrs:
    perm: Optional[tuple[int, ...]] = None  # None: reverse the dims


@dataclass(frozen=True)
class AxesAttrs:
    """Squeeze / Unsqueeze axes (None: from input 1, or all size-1 dims for Squeeze)."""

    axes: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class ShapeAttrs:
    start: int = 0
    end: Optional[int] = None


@dataclass(frozen=True)
class ConstantOfShapeAttrs:
    value: float | int | bool = 0.0
    dtype: DType = DType.FLOAT32

    def __post_init__(self) -> None:
        coerce_enum(self, "dtype", DType)


@dataclass(frozen=True)
class CastAttrs:
    """``saturate`` (ONNX 19+): a conversion to an 8-bit float clamps values beyond its range
    (infinities included) to its largest finite value; without it they become NaN (or infinity
    for float8e5m2). Other target types ignore it."""

    to: DType
    saturate: bool = True

    def __post_init__(self) -> None:
        coerce_enum(self, "to", DType)


@dataclass(frozen=True)
class PadAttrs:
    mode: PadMode = PadMode.CONSTANT
    pads: Optional[tuple[int, ...]] = None  # None: from input 1
    value: float = 0.0
    axes: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", PadMode)


@dataclass(frozen=True)
class ResizeAttrs:
    mode: ResizeMode = ResizeMode.NEAREST
    coordinate_transformation_mode: CoordinateTransform = CoordinateTransform.HALF_PIXEL
    nearest_mode: NearestMode = NearestMode.ROUND_PREFER_FLOOR
    scales: Optional[tuple[float, ...]] = None  # when constant at import (one per input dim)
    sizes: Optional[tuple[int, ...]] = None
    # opset 11+ attributes (defaults: ONNX's)
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    extrapolation_value: float = 0.0  # tf_crop_and_resize outside the input
    antialias: bool = False  # opset 18: linear/cubic filters stretched when downscaling
    keep_aspect_ratio_policy: KeepAspectRatioPolicy = KeepAspectRatioPolicy.STRETCH
    #: opset 18: the (normalized) axes run-time scales/sizes/roi are given for; None: all.
    #: ``scales``/``sizes``/``roi`` above are always one per input dim.
    axes: Optional[tuple[int, ...]] = None
    roi: Optional[tuple[float, ...]] = None  # tf_crop_and_resize, when constant: starts + ends

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", ResizeMode)
        coerce_enum(self, "coordinate_transformation_mode", CoordinateTransform)
        coerce_enum(self, "nearest_mode", NearestMode)
        coerce_enum(self, "keep_aspect_ratio_policy", KeepAspectRatioPolicy)


@dataclass(frozen=True)
class FusedConvAttrs:
    """conv(x, w) + b [+ residual] -> activation; inputs: (x, w, b?, residual?)."""

    conv: ConvAttrs
    activation: Activation = Activation.NONE
    act_params: tuple[float, ...] = ()
    has_residual: bool = False


@dataclass(frozen=True)
class FusedGemmAttrs:
    """act(alpha * op(a) @ op(b) + beta * c); inputs: (a, b, c?)."""

    gemm: GemmAttrs = GemmAttrs()
    activation: Activation = Activation.NONE
    act_params: tuple[float, ...] = ()


@dataclass(frozen=True)
class QuantParams:
    """How an 8-bit activation is stored: ``real = (q - zero_point) * scale``, ``dtype`` uint8 or
    int8 (per tensor)."""

    scale: float
    zero_point: int = 0
    dtype: DType = DType.UINT8

    def __post_init__(self) -> None:
        coerce_enum(self, "dtype", DType)
        if self.dtype not in (DType.UINT8, DType.INT8):
            raise ValueError(f"QuantParams.dtype must be uint8 or int8, not {self.dtype}")
        if not self.scale > 0:
            raise ValueError(f"QuantParams.scale must be positive, not {self.scale}")


@dataclass(frozen=True)
class QConvAttrs:
    """An INT8 FusedConv; inputs (x, w, b?, residual?) as FusedConv's, ``w`` and ``b`` float.

    ``x``: the quantization of input 0 (a float input is quantized by the kernel, an 8-bit one
    must be stored so); ``w_scales``: the weight's symmetric int8 scale per output channel (the
    float weight is quantized with them when the layer is compiled); ``out``: the quantized
    output, or None for a float32 output; ``residual``: how the residual is stored in 8 bits: as
    it arrives (from an INT8 layer), or as the kernel quantizes a float32 residual for the 8-bit
    sum of a quantized output (None: a float32 residual and a float32 output)."""

    conv: ConvAttrs
    x: QuantParams
    w_scales: tuple[float, ...]
    activation: Activation = Activation.NONE
    act_params: tuple[float, ...] = ()
    has_residual: bool = False
    out: Optional[QuantParams] = None
    residual: Optional[QuantParams] = None


@dataclass(frozen=True)
class QGemmAttrs:
    """An INT8 FusedGemm ``act(op(a) @ op(b) + c)``; inputs (a, b, c?), ``b`` a float constant
    matrix quantized per output column with ``w_scales``, ``c`` a float bias of that length.
    ``x``/``out`` as ``QConvAttrs``'. ``smooth``: empty, or one divisor per input channel (K): a
    float input is quantized as ``x / smooth`` and the weight as ``smooth * b`` (the same product:
    SmoothQuant's migration of activation outliers into the weight, ``ember.passes.int8``); ``x``
    then describes ``x / smooth``."""

    gemm: GemmAttrs
    x: QuantParams
    w_scales: tuple[float, ...]
    activation: Activation = Activation.NONE
    act_params: tuple[float, ...] = ()
    out: Optional[QuantParams] = None
    smooth: tuple[float, ...] = ()


@dataclass(frozen=True)
class FusedAttentionAttrs:
    """softmax(q @ k^T * scale + mask) @ v; inputs: (q, k, v, mask?)."""

    scale: float
    k_transposed: bool = False  # True when the K input is already [.., d, s]


@dataclass(frozen=True)
class FusedStep:
    """One op of a ``FusedElementwiseAttrs`` program.

    ``operands`` index into ``node.inputs`` followed by the results of earlier steps (so with
    3 node inputs, operand 3 is step 0's result); ``attrs`` are that op's own attrs (or None).
    """

    op: OpType
    operands: tuple[int, ...]
    attrs: object = None


@dataclass(frozen=True)
class FusedElementwiseAttrs:
    """A chain of elementwise ops run as one kernel; the last step's result is the output."""

    steps: tuple[FusedStep, ...]


# ---- the ops exporters emit beyond the core: math, logic, indexing, more norms ----------
@dataclass(frozen=True)
class AlphaAttrs:
    """Elu, Celu, ThresholdedRelu: one ``alpha`` (1.0 by default for all three)."""

    alpha: float = 1.0


@dataclass(frozen=True)
class SeluAttrs:
    alpha: float = 1.67326319217681884765625
    gamma: float = 1.05070102214813232421875


@dataclass(frozen=True)
class IsInfAttrs:
    detect_positive: bool = True
    detect_negative: bool = True


@dataclass(frozen=True)
class ModAttrs:
    fmod: bool = False  # False: the result has the divisor's sign (Python %); True: C fmod


@dataclass(frozen=True)
class ArgReduceAttrs:
    """ArgMax / ArgMin."""

    axis: int = 0
    keepdims: bool = True
    select_last_index: bool = False


@dataclass(frozen=True)
class CumSumAttrs:
    axis: Optional[int] = None  # None: from input 1 at run time
    exclusive: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class TopKAttrs:
    k: Optional[int] = None  # None: from input 1 at run time
    axis: int = -1
    largest: bool = True
    sorted: bool = True


@dataclass(frozen=True)
class TileAttrs:
    repeats: Optional[tuple[int, ...]] = None  # None: from input 1 at run time


@dataclass(frozen=True)
class TriluAttrs:
    upper: bool = True
    k: Optional[int] = 0  # None: from input 1 at run time


@dataclass(frozen=True)
class DepthSpaceAttrs:
    """DepthToSpace and SpaceToDepth (mode DCR or CRD; SpaceToDepth has a mode from opset 28)."""

    blocksize: int
    mode: DepthToSpaceMode = DepthToSpaceMode.DCR

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", DepthToSpaceMode)


@dataclass(frozen=True)
class InstanceNormAttrs:
    epsilon: float = 1e-5


@dataclass(frozen=True)
class GroupNormAttrs:
    num_groups: int
    epsilon: float = 1e-5
    per_channel_affine: bool = True  # opset 21: scale/bias [C]; opset 18: [num_groups]


@dataclass(frozen=True)
class EinsumAttrs:
    equation: str


@dataclass(frozen=True)
class GatherNDAttrs:
    batch_dims: int = 0


@dataclass(frozen=True)
class ScatterAttrs:
    """ScatterND / ScatterElements; ``axis`` is used by ScatterElements only."""

    reduction: ScatterReduction = ScatterReduction.NONE
    axis: int = 0

    def __post_init__(self) -> None:
        coerce_enum(self, "reduction", ScatterReduction)


@dataclass(frozen=True)
class GridSampleAttrs:
    mode: GridSampleMode = GridSampleMode.BILINEAR
    padding_mode: GridSamplePadding = GridSamplePadding.ZEROS
    align_corners: bool = False

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", GridSampleMode)
        coerce_enum(self, "padding_mode", GridSamplePadding)


@dataclass(frozen=True)
class RoiAlignAttrs:
    """RoiAlign(X[N, C, H, W], rois[R, 4] as (x1, y1, x2, y2), batch_indices[R]) ->
    [R, C, output_height, output_width]; ``sampling_ratio`` 0: ceil(roi size / output size)
    points per bin along each axis, chosen per ROI."""

    mode: RoiAlignMode = RoiAlignMode.AVG
    coordinate_transformation_mode: RoiCoordinateTransform = RoiCoordinateTransform.HALF_PIXEL
    output_height: int = 1
    output_width: int = 1
    sampling_ratio: int = 0
    spatial_scale: float = 1.0

    def __post_init__(self) -> None:
        coerce_enum(self, "mode", RoiAlignMode)
        coerce_enum(self, "coordinate_transformation_mode", RoiCoordinateTransform)
        if self.output_height < 1 or self.output_width < 1:
            raise ValueError(f"RoiAlign output size {self.output_height}x{self.output_width} must be positive")
        if self.sampling_ratio < 0:
            raise ValueError(f"RoiAlign sampling_ratio {self.sampling_ratio} must be 0 (adaptive) or positive")


@dataclass(frozen=True)
class OneHotAttrs:
    axis: int = -1
    depth: Optional[int] = None  # None: from input 1 at run time


@dataclass(frozen=True)
class EyeLikeAttrs:
    dtype: Optional[DType] = None  # None: the input's
    k: int = 0

    def __post_init__(self) -> None:
        if self.dtype is not None:
            coerce_enum(self, "dtype", DType)


@dataclass(frozen=True)
class RNNAttrs:
    """LSTM / GRU / RNN (ONNX forms). ``activations`` has one name per function and direction
    (LSTM f, g, h; GRU f, g; RNN f), with the alphas/betas of those that take them."""

    hidden_size: int
    direction: RNNDirection = RNNDirection.FORWARD
    activations: tuple[RNNActivation, ...] = ()
    activation_alpha: tuple[float, ...] = ()
    activation_beta: tuple[float, ...] = ()
    clip: Optional[float] = None
    layout: int = 0  # 0: [seq, batch, ...]; 1: [batch, seq, ...]
    input_forget: bool = False  # LSTM only
    linear_before_reset: bool = False  # GRU only

    def __post_init__(self) -> None:
        coerce_enum(self, "direction", RNNDirection)
        try:
            acts = tuple(RNNActivation(a) for a in self.activations)
        except ValueError:
            allowed = ", ".join(RNNActivation.values())
            raise ValueError(f"RNNAttrs.activations={self.activations!r}: each must be one of "
                             f"{allowed}") from None
        object.__setattr__(self, "activations", acts)



# ---- quantization ------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizeAttrs:
    """QuantizeLinear / DequantizeLinear (every opset's attributes, canonical).

    The scale's shape says the granularity: a scalar (or one value) is per-tensor, a 1-D scale
    is per-axis along ``axis``, and ``block_size > 0`` is blocked quantization (the scale has
    the input's rank, ``ceil(D[axis] / block_size)`` entries along ``axis``). ``output_dtype``:
    QuantizeLinear's quantized type when no zero point gives it (None: uint8), or
    DequantizeLinear's float output type (None: the scale's). ``saturate`` applies to float8
    outputs only, which Ember refuses at import; it is kept as the file said.
    """

    axis: int = 1
    block_size: int = 0
    saturate: bool = True
    output_dtype: Optional[DType] = None

    def __post_init__(self) -> None:
        if self.output_dtype is not None:
            coerce_enum(self, "output_dtype", DType)
        if self.block_size < 0:
            raise ValueError(f"QuantizeAttrs.block_size={self.block_size} must be >= 0")

# ---- signal processing -------------------------------------------------------------------
@dataclass(frozen=True)
class WindowAttrs:
    """HannWindow / HammingWindow / BlackmanWindow: ``periodic`` windows divide by the size
    (``N``), symmetric ones by ``N - 1``; ``dtype`` is ONNX's ``output_datatype``."""

    periodic: bool = True
    dtype: DType = DType.FLOAT32

    def __post_init__(self) -> None:
        coerce_enum(self, "dtype", DType)


@dataclass(frozen=True)
class DFTAttrs:
    """DFT of the signal ``[..., n, ..., 1 or 2]`` (real, or complex as (re, im) pairs) along
    ``axis``, counted on the input's rank with the last (component) dim included. ``axis`` None:
    read from input 2 at run time (opset 20's axis input, not a constant at import).
    ``inverse`` with ``onesided`` is the inverse real DFT (one-sided spectrum in, real signal out)."""

    axis: Optional[int] = 1
    inverse: bool = False
    onesided: bool = False


@dataclass(frozen=True)
class STFTAttrs:
    onesided: bool = True


@dataclass(frozen=True)
class MelWeightMatrixAttrs:
    dtype: DType = DType.FLOAT32  # ONNX's output_datatype

    def __post_init__(self) -> None:
        coerce_enum(self, "dtype", DType)


if TYPE_CHECKING:  # annotation only
    from ember.ir.optype import OpType
