"""Shape and dtype inference of every op family, including broadcasting, negative axes and
symbolic dims."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import ShapeError
from ember.ir import DType, Node, OpType, TensorType
from ember.ops import attrs as A
from ember.ops.common import broadcast_shapes, div_dim, factorize, mul_dims
from ember.ops.registry import infer_node, registered_ops

F = DType.FLOAT32


def t(*shape, dtype=F):
    return TensorType(dtype, tuple(shape))


def infer(op, attrs, *types, consts=None, n_out=1):
    node = Node("n", op, tuple(f"i{k}" if ty is not None else "" for k, ty in enumerate(types)),
                tuple(f"y{k}" for k in range(n_out)), attrs)
    consts = list(consts or [None] * len(types))
    consts += [None] * (len(types) - len(consts))
    return infer_node(node, list(types), consts)


def shape(op, attrs, *types, **kw):
    return infer(op, attrs, *types, **kw)[0].shape


def test_every_optype_has_inference():
    assert set(registered_ops()) == set(OpType)


# ---- symbolic dim arithmetic -------------------------------------------------------------
def test_symbolic_products():
    assert mul_dims(["batch", 128, "seq"]) == "batch*seq*128"
    assert factorize("batch*seq*128") == (128, ("batch", "seq"))
    assert div_dim("batch*seq*128", 128) == "batch*seq"
    assert div_dim("batch*seq*128", "seq*64") == "batch*2"
    assert div_dim("batch*6", 4) is None and div_dim(12, "batch") is None
    assert mul_dims([2, 3]) == 6


@pytest.mark.parametrize("a, b, want", [
    ((2, 3, 4), (4,), (2, 3, 4)), ((2, 1, 4), (3, 1), (2, 3, 4)), ((), (5,), (5,)),
    (("b", 1, 4), (3, 1), ("b", 3, 4)), (("b", 4), (1, 4), ("b", 4)), (("b", 4), ("s", 4), ("b", 4)),
    ((1, "s"), (8, 1), (8, "s")), (("s",), (5,), (5,)),
])
def test_broadcasting(a, b, want):
    assert broadcast_shapes(a, b) == want
    assert shape(OpType.ADD, None, t(*a), t(*b)) == want


def test_broadcast_mismatch_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"cannot be broadcast"):
        infer(OpType.MUL, None, t(2, 3), t(4, 3))


def test_elementwise_dtypes():
    assert infer(OpType.LESS, None, t(2, 3), t(3))[0].dtype is DType.BOOL
    assert infer(OpType.WHERE, None, t(3, dtype=DType.BOOL), t(2, 1), t(3))[0] == t(2, 3)
    assert infer(OpType.POW, None, t(2, 3), t(dtype=DType.INT64))[0] == t(2, 3)
    with pytest.raises(ShapeError, match="one dtype"):
        infer(OpType.ADD, None, t(2), t(2, dtype=DType.INT64))
    assert infer(OpType.CAST, A.CastAttrs(to="float16"), t("b", 3))[0] == t("b", 3, dtype=DType.FLOAT16)
    with pytest.raises(ShapeError, match="bool"):
        infer(OpType.NOT, None, t(2))


# ---- conv / pool --------------------------------------------------------------------------
def conv(k=(3, 3), s=(1, 1), p=(0, 0, 0, 0), d=(1, 1), g=1, ap=A.AutoPad.NOTSET):
    return A.ConvAttrs(kernel_shape=k, strides=s, pads=p, dilations=d, group=g, auto_pad=ap)


@pytest.mark.parametrize("attrs, x, want", [
    (conv(p=(1, 1, 1, 1)), t(1, 4, 9, 9), (1, 8, 9, 9)),
    (conv(s=(2, 2)), t(1, 4, 9, 9), (1, 8, 4, 4)),
    (conv(d=(2, 2)), t(1, 4, 9, 9), (1, 8, 5, 5)),
    (conv(s=(2, 2), ap=A.AutoPad.SAME_UPPER), t(1, 4, 9, 9), (1, 8, 5, 5)),
    (conv(ap=A.AutoPad.VALID, p=(5, 5, 5, 5)), t(1, 4, 9, 9), (1, 8, 7, 7)),
    (conv(p=(1, 1, 1, 1)), t("n", 4, "h", "w"), ("n", 8, "h", "w")),
    (conv(), t("n", 4, "h", 9), ("n", 8, "(h-2)", 7)),
])
def test_conv_shapes(attrs, x, want):
    assert shape(OpType.CONV, attrs, x, t(8, 4, 3, 3)) == want


def test_conv_channel_mismatch_names_the_counts():
    with pytest.raises(ShapeError, match="3 channels.*expects 4"):
        infer(OpType.CONV, conv(), t(1, 3, 9, 9), t(8, 4, 3, 3))


def test_conv_transpose_shapes():
    ct = A.ConvTransposeAttrs(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1),
                              output_padding=(1, 1), group=2)
    assert shape(OpType.CONV_TRANSPOSE, ct, t(1, 4, 5, 5), t(4, 3, 3, 3)) == (1, 6, 10, 10)
    same = A.ConvTransposeAttrs((3, 3), (2, 2), (0,) * 4, (1, 1), (0, 0), auto_pad=A.AutoPad.SAME_UPPER)
    assert shape(OpType.CONV_TRANSPOSE, same, t("n", 4, "h", 5), t(4, 3, 3, 3)) == ("n", 3, "h*2", 10)
    fixed = A.ConvTransposeAttrs((3, 3), (2, 2), (0,) * 4, (1, 1), (0, 0), output_shape=(11, 12))
    assert shape(OpType.CONV_TRANSPOSE, fixed, t(1, 4, 5, 5), t(4, 3, 3, 3)) == (1, 3, 11, 12)


def test_conv_transpose_pads_resolution():
    from ember.ops.conv import conv_transpose_pads, resolve_pads
    fixed = A.ConvTransposeAttrs((3, 3), (2, 2), (0,) * 4, (1, 1), (0, 0), output_shape=(10, 9))
    pads, _ = conv_transpose_pads(fixed, (5, 5))
    assert pads == (0, 1, 1, 1)  # total 1 and 2; the odd pixel at the end (NOTSET)
    assert resolve_pads(A.AutoPad.SAME_LOWER, (9,), (4,), (2,), (1,), ()) == (2, 1)


def pool(k=(2, 2), s=(2, 2), p=(0, 0, 0, 0), d=(1, 1), ceil=False):
    return A.PoolAttrs(kernel_shape=k, strides=s, pads=p, dilations=d, ceil_mode=ceil)


@pytest.mark.parametrize("attrs, x, want", [
    (pool(), t(1, 3, 9, 9), (1, 3, 4, 4)),
    (pool(ceil=True), t(1, 3, 9, 9), (1, 3, 5, 5)),
    (pool(k=(3, 3), s=(2, 2), p=(1, 1, 1, 1), ceil=True), t(1, 3, 8, 8), (1, 3, 5, 5)),
    (pool(k=(2, 2), s=(2, 2), p=(1, 1, 1, 1), ceil=True), t(1, 3, 5, 5), (1, 3, 3, 3)),
    (pool(k=(3, 3), s=(2, 2), ceil=True), t(1, 3, 6, 6), (1, 3, 3, 3)),
    (pool(k=(2, 2), s=(1, 1), d=(2, 2)), t(1, 3, 9, 9), (1, 3, 7, 7)),
    (pool(k=(2,), s=(2,), p=(0, 0), d=(1,)), t("n", 3, "l"), ("n", 3, "((l-2)//2+1)")),
])
def test_pool_shapes(attrs, x, want):
    assert shape(OpType.MAX_POOL, attrs, x) == want
    assert shape(OpType.AVERAGE_POOL, attrs, x) == want


def test_global_pool_and_batch_norm():
    assert shape(OpType.GLOBAL_AVERAGE_POOL, None, t("n", 8, 7, 7)) == ("n", 8, 1, 1)
    c = t(8)
    assert shape(OpType.BATCH_NORM, A.BatchNormAttrs(), t("n", 8, 4, 4), c, c, c, c) == ("n", 8, 4, 4)
    with pytest.raises(ShapeError, match="3 entries for 8 channels"):
        infer(OpType.BATCH_NORM, A.BatchNormAttrs(), t(1, 8, 4), t(3), c, c, c)


# ---- linalg -------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, want", [
    ((3, 4), (4, 5), (3, 5)), ((2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)), ((4,), (2, 4, 3), (2, 3)),
    ((2, 3, 4), (4,), (2, 3)), ((4,), (4,), ()), (("b", "s", 64), (64, 32), ("b", "s", 32)),
    (("b", 12, "s", 32), ("b", 12, 32, "s"), ("b", 12, "s", "s")),
])
def test_matmul(a, b, want):
    assert shape(OpType.MATMUL, None, t(*a), t(*b)) == want


def test_gemm():
    g = A.GemmAttrs(trans_a=True, trans_b=True)
    assert shape(OpType.GEMM, g, t(4, 3), t(5, 4), t(5)) == (3, 5)
    assert shape(OpType.GEMM, A.GemmAttrs(), t("b", 4), t(4, 5)) == ("b", 5)
    with pytest.raises(ShapeError, match="inner dims 4 and 3"):
        infer(OpType.GEMM, A.GemmAttrs(), t(2, 4), t(3, 5))
    with pytest.raises(ShapeError, match="broadcast"):
        infer(OpType.GEMM, A.GemmAttrs(), t(2, 4), t(4, 5), t(3, 5))


# ---- norm / reduce ------------------------------------------------------------------------
def test_norm_ops_keep_shape_and_check_axes():
    x = t("b", "s", 384)
    assert shape(OpType.LAYER_NORM, A.LayerNormAttrs(), x, t(384), t(384)) == x.shape
    assert shape(OpType.SOFTMAX, A.SoftmaxAttrs(axis=-1), x) == x.shape
    with pytest.raises(ShapeError, match="axis 3 is out of range.*rank 3"):
        infer(OpType.LOG_SOFTMAX, A.SoftmaxAttrs(axis=3), x)
    assert shape(OpType.LRN, A.LRNAttrs(size=5), t(1, 8, 4, 4)) == (1, 8, 4, 4)


@pytest.mark.parametrize("attrs, want", [
    (A.ReduceAttrs(axes=(1,)), ("b", 1, 4)), (A.ReduceAttrs(axes=(-1, 0), keepdims=False), (3,)),
    (A.ReduceAttrs(), (1, 1, 1)), (A.ReduceAttrs(keepdims=False), ()),
    (A.ReduceAttrs(noop_with_empty_axes=True), ("b", 3, 4)),
])
def test_reduce(attrs, want):
    for op in (OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.REDUCE_MAX):
        assert shape(op, attrs, t("b", 3, 4)) == want


def test_reduce_axes_input_constant_and_runtime():
    axes = t(1, dtype=DType.INT64)
    assert shape(OpType.REDUCE_SUM, A.ReduceAttrs(), t(2, 3, 4), axes, consts=[None, np.array([-2])]) == (2, 1, 4)
    assert shape(OpType.REDUCE_SUM, A.ReduceAttrs(keepdims=False), t(2, 3, 4), axes) == ("y0_d0", "y0_d1")


# ---- shape ops ----------------------------------------------------------------------------
I64 = DType.INT64


def test_concat_split():
    assert shape(OpType.CONCAT, A.AxisAttrs(-1), t("b", 2, 3), t("b", 2, 5), t(1, 2, "k")) == (1, 2, "(8+k)")
    with pytest.raises(ShapeError, match="differ on axis 1"):
        infer(OpType.CONCAT, A.AxisAttrs(0), t(1, 2), t(1, 3))
    outs = infer(OpType.SPLIT, A.SplitAttrs(axis=-1, num_outputs=3), t(2, 10), n_out=3)
    assert [o.shape for o in outs] == [(2, 4), (2, 4), (2, 2)]
    outs = infer(OpType.SPLIT, A.SplitAttrs(axis=1, split=(1, 3)), t("b", 4), n_out=2)
    assert [o.shape for o in outs] == [("b", 1), ("b", 3)]
    outs = infer(OpType.SPLIT, A.SplitAttrs(axis=0), t("b*2", 4), n_out=2)
    assert [o.shape for o in outs] == [("b", 4), ("b", 4)]
    with pytest.raises(ShapeError, match="do not add up"):
        infer(OpType.SPLIT, A.SplitAttrs(axis=1, split=(1, 2)), t(2, 4), n_out=2)


def test_slice():
    big = 2 ** 63 - 1
    s = A.SliceAttrs(starts=(1, -3), ends=(big, -1), axes=(0, -1), steps=(1, 1))
    assert shape(OpType.SLICE, s, t(5, 6, 7)) == (4, 6, 2)
    assert shape(OpType.SLICE, s, t("b", 6, "s")) == ("(b-1)", 6, 2)
    rev = A.SliceAttrs(starts=(-1,), ends=(-big,), axes=(1,), steps=(-2,))
    assert shape(OpType.SLICE, rev, t(2, 7)) == (2, 4)
    i1 = t(1, dtype=I64)
    assert shape(OpType.SLICE, A.SliceAttrs(), t(5, 6), i1, i1, i1,
                 consts=[None, None, None, np.array([1])]) == (5, "y0_d1")


def test_gather():
    idx = t(2, 3, dtype=I64)
    assert shape(OpType.GATHER, A.AxisAttrs(1), t("b", 10, 4), idx) == ("b", 2, 3, 4)
    assert shape(OpType.GATHER, A.AxisAttrs(0), t(4, dtype=I64), t(dtype=I64)) == ()
    with pytest.raises(ShapeError, match="out of range"):
        infer(OpType.GATHER, A.AxisAttrs(0), t(4), t(1, dtype=I64), consts=[None, np.array([4])])


@pytest.mark.parametrize("x, target, allowzero, want", [
    ((2, 3, 4), (0, -1), False, (2, 12)),
    (("b", "s", 384), (0, 0, 12, 32), False, ("b", "s", 12, 32)),
    (("b", "s", 384), (-1, 384), False, ("b*s", 384)),
    (("b*s", 384), ("b", -1, 384), False, ("b", "s", 384)),
    (("b", 3, 4), (-1, 2), False, ("b*6", 2)),
    ((0, 3), (0, 3), True, (0, 3)),
    (("b", 16), (-1, 4, 8), False, ("y0_d0", 4, 8)),  # b*16 / 32 is not a product: fresh symbol
])
def test_reshape(x, target, allowzero, want):
    value = np.array(target, dtype=object if any(isinstance(d, str) for d in target) else np.int64)
    shape_t = t(len(target), dtype=I64)
    assert shape(OpType.RESHAPE, A.ReshapeAttrs(allowzero), t(*x), shape_t, consts=[None, value]) == want


def test_reshape_errors_and_runtime_shape():
    with pytest.raises(ShapeError, match="not divisible"):
        infer(OpType.RESHAPE, A.ReshapeAttrs(), t(2, 5), t(2, dtype=I64), consts=[None, np.array([3, -1])])
    with pytest.raises(ShapeError, match=r"\(10 elements\)"):
        infer(OpType.RESHAPE, A.ReshapeAttrs(), t(2, 5), t(2, dtype=I64), consts=[None, np.array([3, 3])])
    assert shape(OpType.RESHAPE, A.ReshapeAttrs(), t(2, 5), t(3, dtype=I64)) == ("y0_d0", "y0_d1", "y0_d2")


def test_flatten_transpose_squeeze_unsqueeze():
    assert shape(OpType.FLATTEN, A.AxisAttrs(1), t("b", 3, 4)) == ("b", 12)
    assert shape(OpType.FLATTEN, A.AxisAttrs(0), t(2, 3)) == (1, 6)
    assert shape(OpType.FLATTEN, A.AxisAttrs(-1), t("b", 3, 4)) == ("b*3", 4)
    assert shape(OpType.TRANSPOSE, A.TransposeAttrs((0, 2, 1)), t("b", 3, 4)) == ("b", 4, 3)
    assert shape(OpType.TRANSPOSE, A.TransposeAttrs(), t(2, 3, 4)) == (4, 3, 2)
    with pytest.raises(ShapeError, match="permutation|repeat"):
        infer(OpType.TRANSPOSE, A.TransposeAttrs((0, 0, 1)), t(2, 3, 4))
    assert shape(OpType.SQUEEZE, A.AxesAttrs((-1,)), t("b", 3, 1)) == ("b", 3)
    assert shape(OpType.SQUEEZE, A.AxesAttrs(), t(1, "b", 1)) == ("b",)
    with pytest.raises(ShapeError, match="has size 3, not 1"):
        infer(OpType.SQUEEZE, A.AxesAttrs((1,)), t(2, 3))
    assert shape(OpType.UNSQUEEZE, A.AxesAttrs((0, -1)), t("b", 3)) == (1, "b", 3, 1)
    assert shape(OpType.UNSQUEEZE, A.AxesAttrs(), t(3), t(2, dtype=I64), consts=[None, np.array([1, 0])]) == (1, 1, 3)


def test_generators():
    assert shape(OpType.EXPAND, None, t("b", 1, 4), t(3, dtype=I64), consts=[None, np.array([1, 5, 1])]) == ("b", 5, 4)
    # a run-time shape can only repeat an input dim that is not 1 (its entry is 1 or that dim)
    assert shape(OpType.EXPAND, None, t(3, 1), t(3, dtype=I64)) == ("y0_d0", 3, "y0_d2")
    assert infer(OpType.SHAPE, A.ShapeAttrs(), t("b", 3, 4))[0] == t(3, dtype=I64)
    assert shape(OpType.SHAPE, A.ShapeAttrs(start=-2), t("b", 3, 4)) == (2,)
    assert shape(OpType.SHAPE, A.ShapeAttrs(start=1, end=-1), t("b", 3, 4)) == (1,)
    cos = A.ConstantOfShapeAttrs(value=1, dtype="int64")
    assert infer(OpType.CONSTANT_OF_SHAPE, cos, t(2, dtype=I64), consts=[np.array([2, 3])])[0] == t(2, 3, dtype=I64)
    scalar = t(dtype=I64)
    vals = [np.array(1), np.array(10), np.array(3)]
    assert shape(OpType.RANGE, None, scalar, scalar, scalar, consts=vals) == (3,)
    assert shape(OpType.RANGE, None, scalar, scalar, scalar) == ("y0_d0",)


def test_pad_and_resize():
    pads = A.PadAttrs(pads=(0, 1, 2, 0, 3, -1))
    assert shape(OpType.PAD, pads, t("b", 4, 5)) == ("b", 8, 6)
    assert shape(OpType.PAD, A.PadAttrs(pads=(1, 2), axes=(-1,)), t("b", 4, 5)) == ("b", 4, 8)
    with pytest.raises(ShapeError, match="entries"):
        infer(OpType.PAD, A.PadAttrs(pads=(1, 2)), t(2, 2))
    r = A.ResizeAttrs(scales=(1.0, 1.0, 2.0, 1.5))
    assert shape(OpType.RESIZE, r, t("n", 3, "h", 10)) == ("n", 3, "h*2", 15)
    assert shape(OpType.RESIZE, A.ResizeAttrs(sizes=(1, 3, 7, 7)), t(1, 3, 4, 4)) == (1, 3, 7, 7)
    assert shape(OpType.RESIZE, A.ResizeAttrs(scales=(1.0, 1.0, 0.6, 0.6)), t(1, 3, 5, 6)) == (1, 3, 3, 3)


# ---- fused --------------------------------------------------------------------------------
def test_fused_ops():
    fc = A.FusedConvAttrs(conv=conv(p=(1, 1, 1, 1)), activation=A.Activation.RELU, has_residual=True)
    out = t("n", 8, 9, 9)
    assert infer(OpType.FUSED_CONV, fc, t("n", 4, 9, 9), t(8, 4, 3, 3), t(8), out)[0] == out
    with pytest.raises(ShapeError, match="has_residual"):
        infer(OpType.FUSED_CONV, fc, t("n", 4, 9, 9), t(8, 4, 3, 3), t(8))
    fg = A.FusedGemmAttrs(gemm=A.GemmAttrs(trans_b=True), activation=A.Activation.GELU_ERF)
    assert shape(OpType.FUSED_GEMM, fg, t("b", "s", 64), t(32, 64), t(32)) == ("b", "s", 32)
    assert shape(OpType.FUSED_GEMM, fg, t(2, 64), t(32, 64), t(32)) == (2, 32)
    fa = A.FusedAttentionAttrs(scale=0.125)
    q = t("b", 12, "s", 64)
    assert shape(OpType.FUSED_ATTENTION, fa, q, q, q, t("b", 1, 1, "s")) == q.shape
    kt = A.FusedAttentionAttrs(scale=0.125, k_transposed=True)
    assert shape(OpType.FUSED_ATTENTION, kt, q, t("b", 12, 64, "s"), t("b", 12, "s", 32)) == ("b", 12, "s", 32)


def test_fused_elementwise_program():
    steps = (A.FusedStep(OpType.ADD, (0, 1)), A.FusedStep(OpType.CLIP, (2,), A.ClipAttrs(0.0, 6.0)),
             A.FusedStep(OpType.LESS, (3, 1)))
    out = infer(OpType.FUSED_ELEMENTWISE, A.FusedElementwiseAttrs(steps), t("b", 4), t(4))[0]
    assert out == t("b", 4, dtype=DType.BOOL)
    with pytest.raises(ShapeError, match="operand"):
        infer(OpType.FUSED_ELEMENTWISE, A.FusedElementwiseAttrs((A.FusedStep(OpType.RELU, (5,)),)), t(2))
