"""Normalizations: SkipLayerNormalization, SkipSimplifiedLayerNormalization,
SimplifiedLayerNormalization, LayerNormalization (ONNX Runtime's) and EmbedLayerNormalization."""
from __future__ import annotations

from ember.frontends.contrib_ms.common import (
    MS,
    cast,
    contrib,
    dim_scalar,
    float_attr,
    int_attr,
    int_const,
    need,
    norm_stats,
    out,
)
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    ConstantOfShapeAttrs,
    LayerNormAttrs,
    ReduceAttrs,
    RMSNormAttrs,
    ShapeAttrs,
    SliceAttrs,
)
from ember.ops.plugin import Lowering, PluginAttrs


def _output(lo: Lowering, i: int) -> str:
    return lo.outputs[i] if lo.is_used(i) else ""


def _skip_sum(lo: Lowering, bias_index: int) -> str:
    """input + skip (+ bias), written to output 3 (input_skip_bias_sum) when that is read. The
    bias is added to the input first, so a MatMul feeding the input fuses with it (FusedGemm)
    and the residual Add with the normalization (SkipLayerNormalization)."""
    x, skip, bias = need(lo, 0, "input"), need(lo, 1, "skip"), lo.input(bias_index)
    if bias:
        (x,) = lo.op(OpType.ADD, [x, bias], None, suffix="bias")
    last = _output(lo, 3)
    (s,) = lo.op(OpType.ADD, [x, skip], None, outputs=[last] if last else 1, suffix="skip")
    return s


def _check_stash(lo: Lowering, a: PluginAttrs) -> None:
    if int_attr(a, "stash_type", 1) != 1:
        raise lo.reject("stash_type other than 1 (float32) is not supported")


@contrib("SkipLayerNormalization")
def skip_layer_norm(lo: Lowering, a: PluginAttrs) -> None:
    """LayerNorm(input + skip + bias) * gamma + beta over the last axis (epsilon 1e-12)."""
    eps = float_attr(a, "epsilon", 1e-12)
    s = _skip_sum(lo, 4)
    inputs = [s, need(lo, 2, "gamma")] + ([lo.input(3)] if lo.input(3) else [])
    lo.op(OpType.LAYER_NORM, inputs, LayerNormAttrs(axis=-1, epsilon=eps), outputs=out(lo, 0), suffix="layernorm")
    if _output(lo, 1) or _output(lo, 2):
        norm_stats(lo, s, eps, -1, _output(lo, 1), _output(lo, 2))


@contrib("SkipSimplifiedLayerNormalization")
def skip_simplified_layer_norm(lo: Lowering, a: PluginAttrs) -> None:
    """RMSNorm(input + skip + bias) * gamma over the last axis (epsilon 1e-12)."""
    eps = float_attr(a, "epsilon", 1e-12)
    s = _skip_sum(lo, 3)
    lo.op(OpType.RMS_NORM, [s, need(lo, 2, "gamma")], RMSNormAttrs(axis=-1, epsilon=eps),
         outputs=out(lo, 0), suffix="rmsnorm")
    if _output(lo, 1):
        raise lo.reject("its mean output is read; SkipSimplifiedLayerNormalization has no mean")
    if _output(lo, 2):
        norm_stats(lo, s, eps, -1, "", _output(lo, 2), rms=True)


def _layer_norm(lo: Lowering, a: PluginAttrs) -> None:
    """LayerNormalization over axes [axis, rank) (epsilon 1e-5); Mean / InvStdDev when read."""
    _check_stash(lo, a)
    axis, eps = int_attr(a, "axis", -1), float_attr(a, "epsilon", 1e-5)
    x = need(lo, 0, "X")
    inputs = [x, need(lo, 1, "Scale")] + ([lo.input(2)] if lo.input(2) else [])
    lo.op(OpType.LAYER_NORM, inputs, LayerNormAttrs(axis=axis, epsilon=eps), outputs=out(lo, 0), suffix="layernorm")
    if _output(lo, 1) or _output(lo, 2):
        norm_stats(lo, x, eps, axis, _output(lo, 1), _output(lo, 2))


def _simplified_layer_norm(lo: Lowering, a: PluginAttrs) -> None:
    """x / sqrt(mean(x^2) + epsilon) * scale over axes [axis, rank); inv_std_var when read."""
    _check_stash(lo, a)
    axis, eps = int_attr(a, "axis", -1), float_attr(a, "epsilon", 1e-5)
    x = need(lo, 0, "X")
    lo.op(OpType.RMS_NORM, [x, need(lo, 1, "scale")], RMSNormAttrs(axis=axis, epsilon=eps),
         outputs=out(lo, 0), suffix="rmsnorm")
    if _output(lo, 1):
        norm_stats(lo, x, eps, axis, "", _output(lo, 1), rms=True)


for _domain in ("", MS):
    contrib("LayerNormalization", domain=_domain)(_layer_norm)
    contrib("SimplifiedLayerNormalization", domain=_domain)(_simplified_layer_norm)


@contrib("EmbedLayerNormalization")
def embed_layer_norm(lo: Lowering, a: PluginAttrs) -> None:
    """LayerNorm(word[input_ids] + position[position_ids or 0..S) + segment[segment_ids]);
    mask_index = the count of ones in each row of mask (zeros without a mask)."""
    eps = float_attr(a, "epsilon", 1e-12)
    ids, segments = need(lo, 0, "input_ids"), lo.input(1)
    word, position, segment = need(lo, 2, "word_embedding"), need(lo, 3, "position_embedding"), lo.input(4)
    gamma, beta, mask, position_ids = need(lo, 5, "gamma"), need(lo, 6, "beta"), lo.input(7), lo.input(8)
    if bool(segments) != bool(segment):
        raise lo.reject("segment_ids and segment_embedding must be given together")
    gather = AxisAttrs(axis=0)
    (total,) = lo.op(OpType.GATHER, [word, ids], gather, suffix="word")
    if position_ids:
        (pos,) = lo.op(OpType.GATHER, [position, position_ids], gather, suffix="position")
    else:
        seq = lo.type(ids).shape[1]
        if isinstance(seq, int):
            (pos,) = lo.op(OpType.SLICE, [position], SliceAttrs(starts=(0,), ends=(seq,), axes=(0,)),
                          suffix="position")
        else:
            (length,) = lo.op(OpType.SHAPE, [ids], ShapeAttrs(start=1, end=2), suffix="seq_len")
            (pos,) = lo.op(OpType.SLICE, [position, int_const(lo, [0], "starts"), length,
                                         int_const(lo, [0], "axes")], SliceAttrs(), suffix="position")
    last_sum = _output(lo, 2)
    (total,) = lo.op(OpType.ADD, [total, pos], None,
                    outputs=[last_sum] if last_sum and not segments else 1, suffix="add_position")
    if segments:
        (seg,) = lo.op(OpType.GATHER, [segment, segments], gather, suffix="segment")
        (total,) = lo.op(OpType.ADD, [total, seg], None, outputs=[last_sum] if last_sum else 1,
                        suffix="add_segment")
    lo.op(OpType.LAYER_NORM, [total, gamma, beta], LayerNormAttrs(axis=-1, epsilon=eps),
         outputs=out(lo, 0), suffix="layernorm")
    if not _output(lo, 1):
        return
    if mask:
        one = lo.scalar(1, lo.type(mask).dtype, "one")
        (ones,) = lo.op(OpType.EQUAL, [mask, one], None, suffix="mask_ones")
        ones = cast(lo, ones, DType.INT32, "mask_int")
        lo.op(OpType.REDUCE_SUM, [ones], ReduceAttrs(axes=(1,), keepdims=False), outputs=[_output(lo, 1)],
             suffix="mask_index")
    else:
        batch = dim_scalar(lo, ids, 0, "batch")
        (shape,) = lo.op(OpType.UNSQUEEZE, [batch], AxesAttrs(axes=(0,)), suffix="batch_shape")
        lo.op(OpType.CONSTANT_OF_SHAPE, [shape], ConstantOfShapeAttrs(value=0, dtype=DType.INT32),
             outputs=[_output(lo, 1)], suffix="mask_index")
