"""Handlers for the ops of ``ember.ops.extra``: what torch.onnx exporters and other tools emit
beyond the core families (math, logic, more reductions, CumSum, TopK, Tile, Trilu,
DepthToSpace, InstanceNormalization, GroupNormalization, Einsum, Gather/Scatter variants)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode, onnx_dtype
from ember.frontends.onnx.handlers.common import direct, reject
from ember.frontends.onnx.handlers.reduce import reduce_attr_form, reduce_input_form
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AlphaAttrs, ArgReduceAttrs, AxisAttrs, CumSumAttrs, DepthSpaceAttrs, EinsumAttrs, EyeLikeAttrs,
    GatherNDAttrs, GridSampleAttrs, GroupNormAttrs, InstanceNormAttrs, IsInfAttrs, ModAttrs, OneHotAttrs,
    ScatterAttrs, SeluAttrs, TileAttrs, TopKAttrs, TriluAttrs,
)

for _name, _op, _since in (
    ("Floor", OpType.FLOOR, 6), ("Ceil", OpType.CEIL, 6), ("Round", OpType.ROUND, 11),
    ("Sign", OpType.SIGN, 9), ("Sin", OpType.SIN, 7), ("Cos", OpType.COS, 7), ("Tan", OpType.TAN, 7),
    ("Asin", OpType.ASIN, 7), ("Acos", OpType.ACOS, 7), ("Atan", OpType.ATAN, 7),
    ("Sinh", OpType.SINH, 9), ("Cosh", OpType.COSH, 9), ("Asinh", OpType.ASINH, 9),
    ("Acosh", OpType.ACOSH, 9), ("Atanh", OpType.ATANH, 9), ("IsNaN", OpType.IS_NAN, 9),
    ("Softplus", OpType.SOFTPLUS, 1), ("Softsign", OpType.SOFTSIGN, 1), ("Mish", OpType.MISH, 18),
):
    onnx_op(_name, since=_since)(direct(_op, nin=1))

for _name, _op, _since in (("And", OpType.AND, 7), ("Or", OpType.OR, 7), ("Xor", OpType.XOR, 7),
                           ("GreaterOrEqual", OpType.GREATER_OR_EQUAL, 12),
                           ("LessOrEqual", OpType.LESS_OR_EQUAL, 12),
                           ("BitwiseAnd", OpType.BITWISE_AND, 18), ("BitwiseOr", OpType.BITWISE_OR, 18),
                           ("BitwiseXor", OpType.BITWISE_XOR, 18)):
    onnx_op(_name, since=_since)(direct(_op, nin=2))
onnx_op("BitwiseNot", since=18)(direct(OpType.BITWISE_NOT, nin=1))


def _alpha(op: OpType):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """One float ``alpha`` attribute (default 1.0)."""
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], AlphaAttrs(alpha=float(n.attr("alpha", 1.0))))

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("Elu", since=6)(_alpha(OpType.ELU))
onnx_op("Celu", since=12)(_alpha(OpType.CELU))
onnx_op("ThresholdedRelu", since=10)(_alpha(OpType.THRESHOLDED_RELU))


@onnx_op("Selu", since=6)
def import_selu(ctx: ImportContext, n: OnnxNode) -> None:
    d = SeluAttrs()
    ctx.emit(n, OpType.SELU, n.inputs[:1], n.outputs[:1],
             SeluAttrs(alpha=float(n.attr("alpha", d.alpha)), gamma=float(n.attr("gamma", d.gamma))))


@onnx_op("IsInf", since=10)
def import_is_inf(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.IS_INF, n.inputs[:1], n.outputs[:1],
             IsInfAttrs(detect_positive=bool(n.attr("detect_positive", 1)),
                        detect_negative=bool(n.attr("detect_negative", 1))))


@onnx_op("Mod", since=10)
def import_mod(ctx: ImportContext, n: OnnxNode) -> None:
    """fmod=0: the result takes the divisor's sign (integer inputs); fmod=1: C fmod."""
    ctx.emit(n, OpType.MOD, n.inputs[:2], n.outputs[:1], ModAttrs(fmod=bool(n.attr("fmod", 0))))


# ---- reductions ------------------------------------------------------------------------
for _name, _op in (("ReduceMin", OpType.REDUCE_MIN), ("ReduceProd", OpType.REDUCE_PROD),
                   ("ReduceL1", OpType.REDUCE_L1), ("ReduceL2", OpType.REDUCE_L2),
                   ("ReduceSumSquare", OpType.REDUCE_SUM_SQUARE),
                   ("ReduceLogSum", OpType.REDUCE_LOG_SUM),
                   ("ReduceLogSumExp", OpType.REDUCE_LOG_SUM_EXP)):
    onnx_op(_name, since=1)(reduce_attr_form(_op))
    onnx_op(_name, since=18)(reduce_input_form(_op))


def _arg_reduce(op: OpType):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """ArgMax/ArgMin; ``select_last_index`` exists from opset 12 (absent: first index)."""
        attrs = ArgReduceAttrs(axis=int(n.attr("axis", 0)), keepdims=bool(n.attr("keepdims", 1)),
                               select_last_index=bool(n.attr("select_last_index", 0)))
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("ArgMax", since=1)(_arg_reduce(OpType.ARG_MAX))
onnx_op("ArgMin", since=1)(_arg_reduce(OpType.ARG_MIN))


# ---- data movement ---------------------------------------------------------------------
def _scalar_input(ctx: ImportContext, n: OnnxNode, i: int, what: str) -> int | None:
    """The int value of a constant scalar input ``i``; None when it is known only at run time."""
    values = ctx.const_ints(n.input(i))
    if values is None:
        return None
    if len(values) != 1:
        raise reject(f"its {what} input {n.input(i)!r} has {len(values)} values; it must be a scalar")
    return values[0]


@onnx_op("CumSum", since=11)
def import_cumsum(ctx: ImportContext, n: OnnxNode) -> None:
    axis = _scalar_input(ctx, n, 1, "axis")
    attrs = CumSumAttrs(axis=axis, exclusive=bool(n.attr("exclusive", 0)), reverse=bool(n.attr("reverse", 0)))
    ctx.emit(n, OpType.CUM_SUM, n.inputs[:1] if axis is not None else n.inputs[:2], n.outputs[:1], attrs)


@onnx_op("TopK", since=1)
def import_topk_1(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 1-9: ``k`` is an attribute; always the largest, sorted."""
    k = n.attr("k")
    if k is None:
        raise reject("k is missing (it is required before opset 10)")
    ctx.emit(n, OpType.TOP_K, n.inputs[:1], n.outputs[:2], TopKAttrs(k=int(k), axis=int(n.attr("axis", -1))))


def _topk_input_form(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 10+: K is input 1 (constant: an attr); opset 11 adds ``largest`` and ``sorted``."""
    k = _scalar_input(ctx, n, 1, "K")
    attrs = TopKAttrs(k=k, axis=int(n.attr("axis", -1)), largest=bool(n.attr("largest", 1)),
                      sorted=bool(n.attr("sorted", 1)))
    ctx.emit(n, OpType.TOP_K, n.inputs[:1] if k is not None else n.inputs[:2], n.outputs[:2], attrs)


onnx_op("TopK", since=10)(_topk_input_form)
onnx_op("TopK", since=11)(_topk_input_form)


@onnx_op("Tile", since=6)
def import_tile(ctx: ImportContext, n: OnnxNode) -> None:
    repeats = ctx.const_ints(n.input(1))
    ctx.emit(n, OpType.TILE, n.inputs[:1] if repeats is not None else n.inputs[:2], n.outputs[:1],
             TileAttrs(repeats=repeats))


@onnx_op("Trilu", since=14)
def import_trilu(ctx: ImportContext, n: OnnxNode) -> None:
    upper = bool(n.attr("upper", 1))
    if not n.input(1):
        ctx.emit(n, OpType.TRILU, n.inputs[:1], n.outputs[:1], TriluAttrs(upper=upper, k=0))
        return
    k = _scalar_input(ctx, n, 1, "k")
    ctx.emit(n, OpType.TRILU, n.inputs[:1] if k is not None else n.inputs[:2], n.outputs[:1],
             TriluAttrs(upper=upper, k=k))


def _blocksize(n: OnnxNode) -> int:
    b = n.attr("blocksize")
    if b is None or int(b) < 1:
        raise reject(f"blocksize {b!r} is missing or not positive")
    return int(b)


@onnx_op("DepthToSpace", since=1)
def import_depth_to_space(ctx: ImportContext, n: OnnxNode) -> None:
    """``mode`` exists from opset 11 (DCR: depth-column-row, the default; CRD: PixelShuffle)."""
    mode = n.attr("mode", "DCR") if n.opset >= 11 else "DCR"
    if mode not in ("DCR", "CRD"):
        raise reject(f"mode {mode!r} is not one of 'DCR', 'CRD'")
    ctx.emit(n, OpType.DEPTH_TO_SPACE, n.inputs[:1], n.outputs[:1], DepthSpaceAttrs(_blocksize(n), mode))


@onnx_op("SpaceToDepth", since=1)
def import_space_to_depth(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.SPACE_TO_DEPTH, n.inputs[:1], n.outputs[:1], DepthSpaceAttrs(_blocksize(n)))


@onnx_op("GatherElements", since=11)
def import_gather_elements(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.GATHER_ELEMENTS, n.inputs[:2], n.outputs[:1], AxisAttrs(axis=int(n.attr("axis", 0))))


@onnx_op("GatherND", since=11)
def import_gather_nd(ctx: ImportContext, n: OnnxNode) -> None:
    """``batch_dims`` exists from opset 12 (absent: 0)."""
    ctx.emit(n, OpType.GATHER_ND, n.inputs[:2], n.outputs[:1],
             GatherNDAttrs(batch_dims=int(n.attr("batch_dims", 0))))


def _scatter(op: OpType):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """``reduction`` exists from opset 16 (ScatterND/ScatterElements; max/min from 18)."""
        reduction = n.attr("reduction", "none")
        if reduction not in ("none", "add", "mul", "max", "min"):
            raise reject(f"reduction {reduction!r} is not one of none, add, mul, max, min")
        ctx.emit(n, op, n.inputs[:3], n.outputs[:1],
                 ScatterAttrs(reduction=reduction, axis=int(n.attr("axis", 0))))

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("ScatterND", since=11)(_scatter(OpType.SCATTER_ND))
onnx_op("ScatterElements", since=11)(_scatter(OpType.SCATTER_ELEMENTS))
onnx_op("Scatter", since=9)(_scatter(OpType.SCATTER_ELEMENTS))  # deprecated at 11 for ScatterElements


_GRID_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
               "bicubic": "bicubic", "cubic": "bicubic"}


@onnx_op("GridSample", since=16)
def import_grid_sample(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 16: modes bilinear/nearest/bicubic on 4-D input; opset 20: linear/nearest/cubic, N-D."""
    mode = n.attr("mode", "linear" if n.opset >= 20 else "bilinear")
    padding = n.attr("padding_mode", "zeros")
    if mode not in _GRID_MODES:
        raise reject(f"mode {mode!r} is not one of {', '.join(_GRID_MODES)}")
    if padding not in ("zeros", "border", "reflection"):
        raise reject(f"padding_mode {padding!r} is not one of zeros, border, reflection")
    rank = ctx.type(n.input(0)).rank
    if _GRID_MODES[mode] == "bicubic" and rank != 4:
        raise reject(f"cubic mode on a {rank}-D input; Ember supports cubic GridSample on 4-D inputs only")
    ctx.emit(n, OpType.GRID_SAMPLE, n.inputs[:2], n.outputs[:1],
             GridSampleAttrs(_GRID_MODES[mode], padding, bool(n.attr("align_corners", 0))))


@onnx_op("OneHot", since=9)
def import_one_hot(ctx: ImportContext, n: OnnxNode) -> None:
    """A constant ``depth`` becomes the attr; otherwise it stays input 1."""
    depth = ctx.const(n.input(1))
    attrs = OneHotAttrs(axis=int(n.attr("axis", -1)),
                        depth=None if depth is None else int(depth.reshape(-1)[0]))
    inputs = (n.input(0), "" if depth is not None else n.input(1), n.input(2))
    ctx.emit(n, OpType.ONE_HOT, inputs, n.outputs[:1], attrs)


@onnx_op("EyeLike", since=9)
def import_eye_like(ctx: ImportContext, n: OnnxNode) -> None:
    code = n.attr("dtype")
    dtype = None if code is None else onnx_dtype(int(code), f"{n.label} dtype").value
    ctx.emit(n, OpType.EYE_LIKE, n.inputs[:1], n.outputs[:1], EyeLikeAttrs(dtype=dtype, k=int(n.attr("k", 0))))


# ---- normalization and einsum ----------------------------------------------------------
@onnx_op("InstanceNormalization", since=6)
def import_instance_norm(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.INSTANCE_NORM, n.inputs[:3], n.outputs[:1],
             InstanceNormAttrs(epsilon=float(n.attr("epsilon", 1e-5))))


def _group_norm(per_channel: bool):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Opset 18: scale/bias per group; opset 21: per channel (18 was deprecated for that)."""
        groups = n.attr("num_groups")
        if groups is None:
            raise reject("num_groups is missing (it is required)")
        if int(n.attr("stash_type", 1)) != 1:
            raise reject("stash_type other than 1 (float32) is not supported")
        ctx.emit(n, OpType.GROUP_NORM, n.inputs[:3], n.outputs[:1],
                 GroupNormAttrs(num_groups=int(groups), epsilon=float(n.attr("epsilon", 1e-5)),
                                per_channel_affine=per_channel))

    handler.__name__ = f"import_group_norm_{21 if per_channel else 18}"
    return handler


onnx_op("GroupNormalization", since=18)(_group_norm(per_channel=False))
onnx_op("GroupNormalization", since=21)(_group_norm(per_channel=True))


@onnx_op("Einsum", since=12)
def import_einsum(ctx: ImportContext, n: OnnxNode) -> None:
    equation = n.attr("equation")
    if not equation:
        raise reject("equation is missing (it is required)")
    ctx.emit(n, OpType.EINSUM, n.inputs, n.outputs[:1], EinsumAttrs(equation=str(equation)))
