"""Shape and data-movement kernels against ONNX Runtime: int64 shape math, negative axes."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    CastAttrs,
    ConstantOfShapeAttrs,
    PadAttrs,
    ReshapeAttrs,
    ShapeAttrs,
    SliceAttrs,
    SplitAttrs,
    TransposeAttrs,
)

F32 = np.float32
I64 = np.int64


@pytest.mark.parametrize("target", [(0, -1), (-1, 4), (2, 0, 2, 2), (24,), (1, 2, 3, 4)])
def test_reshape(check, rng, target):
    check("Reshape", {"x": rng.standard_normal((2, 3, 4)).astype(F32), "s": np.array(target, I64)},
          OpType.RESHAPE, ReshapeAttrs(), const=(1,))


def test_reshape_allowzero(check):
    check("Reshape", {"x": np.zeros((0, 3), F32), "s": np.array([3, 0], I64)}, OpType.RESHAPE,
          ReshapeAttrs(allowzero=True), {"allowzero": 1}, opset=14)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten(check, rng, axis):
    check("Flatten", {"x": rng.standard_normal((2, 3, 4)).astype(F32)}, OpType.FLATTEN,
          AxisAttrs(axis), {"axis": axis})


@pytest.mark.parametrize("perm", [None, (0, 2, 1), (2, 0, 1)])
def test_transpose(check, rng, perm):
    attrs = {} if perm is None else {"perm": list(perm)}
    check("Transpose", {"x": rng.standard_normal((2, 3, 4)).astype(F32)}, OpType.TRANSPOSE,
          TransposeAttrs(perm), attrs)


def test_squeeze_unsqueeze(check, rng):
    x = rng.standard_normal((1, 3, 1, 4)).astype(F32)
    check("Squeeze", {"x": x, "a": np.array([0, -2], I64)}, OpType.SQUEEZE, AxesAttrs(None), opset=13,
          const=(1,))
    check("Squeeze", {"x": x}, OpType.SQUEEZE, AxesAttrs(None), opset=13)
    check("Squeeze", {"x": x}, OpType.SQUEEZE, AxesAttrs((2,)), {"axes": [2]}, opset=11)
    check("Unsqueeze", {"x": x, "a": np.array([0, -1], I64)}, OpType.UNSQUEEZE, AxesAttrs(None), opset=13)
    check("Unsqueeze", {"x": x}, OpType.UNSQUEEZE, AxesAttrs((1, 4)), {"axes": [1, 4]}, opset=11)
    check("Unsqueeze", {"x": np.array(5, I64), "a": np.array([0], I64)}, OpType.UNSQUEEZE, AxesAttrs(None),
          opset=13)


@pytest.mark.parametrize("shape", [(3, 1, 4), (2, 1, 1, 1), (1,), (4, 3, 1)])
def test_expand_bidirectional(check, rng, shape):
    check("Expand", {"x": rng.standard_normal((3, 1)).astype(F32), "s": np.array(shape, I64)},
          OpType.EXPAND)


@pytest.mark.parametrize("start,end", [(0, None), (1, None), (-2, None), (0, -1), (1, 2), (-10, 10), (3, 1)])
def test_shape(check, rng, start, end):
    attrs = {"start": start} if end is None else {"start": start, "end": end}
    check("Shape", {"x": rng.standard_normal((2, 3, 4)).astype(F32)}, OpType.SHAPE,
          ShapeAttrs(start, end), attrs, opset=15)


def test_constant_of_shape(check):
    import onnx.helper as h

    for value, dtype in [(0.0, "float32"), (7, "int64"), (True, "bool"), (2.5, "float32")]:
        arr = np.array([value], dtype=dtype)
        value_t = h.make_tensor("v", h.np_dtype_to_tensor_dtype(arr.dtype), [1], arr)
        check("ConstantOfShape", {"s": np.array([2, 3], I64)}, OpType.CONSTANT_OF_SHAPE,
              ConstantOfShapeAttrs(value, dtype), {"value": value_t})
    check("ConstantOfShape", {"s": np.array([], I64)}, OpType.CONSTANT_OF_SHAPE, ConstantOfShapeAttrs())


@pytest.mark.parametrize("src,to", [(F32, "int64"), (F32, "int32"), (F32, "bool"), (I64, "float32"),
                                    (np.bool_, "int64"), (I64, "int32"), (F32, "float16"),
                                    (np.int32, "int8"), (F32, "uint8")])
def test_cast(check, rng, src, to):
    import onnx.helper as h

    x = (rng.standard_normal((3, 4)) * 5).astype(src) if src is not np.bool_ else rng.random((3, 4)) > .5
    if to == "uint8":
        x = np.abs(x)
    check("Cast", {"x": x}, OpType.CAST, CastAttrs(to), {"to": h.np_dtype_to_tensor_dtype(np.dtype(to))})


@pytest.mark.parametrize("start,limit,delta,dtype", [(0, 10, 3, I64), (10, 2, -2, I64), (5, 5, 1, I64),
                                                     (0.5, 3.2, 0.7, F32), (1.0, -2.0, -0.5, F32),
                                                     (0, 7, 2, np.int32)])
def test_range(check, start, limit, delta, dtype):
    check("Range", {"s": np.array(start, dtype), "l": np.array(limit, dtype), "d": np.array(delta, dtype)},
          OpType.RANGE)


def test_identity_dropout(check, rng):
    x = rng.standard_normal((2, 3)).astype(F32)
    check("Identity", {"x": x}, OpType.IDENTITY)
    check("Dropout", {"x": x}, OpType.DROPOUT, opset=13)
    check("Dropout", {"x": x}, OpType.DROPOUT, n_out=2, opset=13)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(check, rng, axis):
    xs = {}
    for i, extra in enumerate([1, 2, 3]):
        shape = [2, 3, 4]
        shape[axis] = extra
        xs[f"x{i}"] = rng.standard_normal(shape).astype(F32)
    check("Concat", xs, OpType.CONCAT, AxisAttrs(axis), {"axis": axis})
    check("Concat", {"a": np.array([1, 2], I64), "b": np.array([3], I64)}, OpType.CONCAT, AxisAttrs(0),
          {"axis": 0})


def test_split(check, rng):
    x = rng.standard_normal((2, 7, 4)).astype(F32)
    check("Split", {"x": x, "s": np.array([2, 5], I64)}, OpType.SPLIT, SplitAttrs(1, None), {"axis": 1},
          n_out=2, opset=13)
    check("Split", {"x": x}, OpType.SPLIT, SplitAttrs(-2, (3, 4)), {"axis": -2, "split": [3, 4]}, n_out=2,
          opset=11)
    check("Split", {"x": x}, OpType.SPLIT, SplitAttrs(1, None, 3), {"axis": 1, "num_outputs": 3}, n_out=3,
          opset=18)
    check("Split", {"x": x}, OpType.SPLIT, SplitAttrs(-1, None), {"axis": -1}, n_out=2, opset=13)


SLICES = [
    dict(starts=(1,), ends=(3,), axes=(1,), steps=None),
    dict(starts=(0, -3), ends=(2**63 - 1, -1), axes=(0, -1), steps=None),
    dict(starts=(-1,), ends=(-2**63,), axes=(2,), steps=(-1,)),
    dict(starts=(5, 10), ends=(0, -100), axes=(1, 2), steps=(-2, -3)),
    dict(starts=(0, 1), ends=(10, 6), axes=(2, 1), steps=(2, 2)),
    dict(starts=(0,), ends=(0,), axes=(0,), steps=None),
    dict(starts=(1, 0, 0), ends=(2, 4, 8), axes=None, steps=None),
]


@pytest.mark.parametrize("sl", SLICES)
def test_slice(check, rng, sl):
    x = rng.standard_normal((3, 6, 8)).astype(F32)
    inputs = {"x": x, "st": np.array(sl["starts"], I64), "en": np.array(sl["ends"], I64),
              "ax": None if sl["axes"] is None else np.array(sl["axes"], I64),
              "sp": None if sl["steps"] is None else np.array(sl["steps"], I64)}
    check("Slice", inputs, OpType.SLICE, SliceAttrs(), opset=13)
    check("Slice", inputs, OpType.SLICE, SliceAttrs(), opset=13, const=(1, 2, 3, 4))
    check("Slice", inputs, OpType.SLICE, SliceAttrs(**sl), opset=13)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("idx", [np.array(1, I64), np.array([-1, 0, 2], I64), np.array([[0, -2], [1, 1]], np.int32)])
def test_gather(check, rng, axis, idx):
    check("Gather", {"x": rng.standard_normal((3, 4, 5)).astype(F32), "i": idx}, OpType.GATHER,
          AxisAttrs(axis), {"axis": axis})


def test_gather_shape_math(check):
    check("Gather", {"x": np.array([1, 3, 224, 224], I64), "i": np.array(0, I64)}, OpType.GATHER,
          AxisAttrs(0))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [(1, 0, 2, 2, 1, 1), (0, 2, 1, 0, 3, 0), (-1, 1, 0, 1, -2, 2)])
def test_pad(check, rng, mode, pads):
    x = rng.standard_normal((3, 5, 6)).astype(F32)
    inputs = {"x": x, "p": np.array(pads, I64), "v": np.array(1.5, F32)}
    if mode != "constant":
        inputs.pop("v")
    check("Pad", inputs, OpType.PAD, PadAttrs(mode, None), {"mode": mode}, opset=19)
    check("Pad", inputs, OpType.PAD, PadAttrs(mode, pads, 1.5 if mode == "constant" else 0.0),
          {"mode": mode}, opset=19)


def test_pad_axes_and_int(check, rng):
    x = rng.integers(-5, 5, (3, 4, 5)).astype(I64)
    check("Pad", {"x": x, "p": np.array([1, 2, 0, 1], I64), "v": np.array(9, I64), "a": np.array([-1, 0], I64)},
          OpType.PAD, PadAttrs("constant", None), opset=18)
    check("Pad", {"x": x, "p": np.array([2, 3], I64), "v": None, "a": np.array([1], I64)},
          OpType.PAD, PadAttrs("reflect", None), {"mode": "reflect"}, opset=18)
    check("Pad", {"x": x.astype(F32)}, OpType.PAD, PadAttrs("constant", (0, 1, 1, 0, 0, 2)),
          {"pads": [0, 1, 1, 0, 0, 2]}, opset=10)


def test_pad_reflect_beyond_axis(check, rng):
    # numpy-style repeated reflection when a pad exceeds the axis length (ONNX Runtime refuses)
    x = rng.standard_normal((3, 4)).astype(F32)
    check("Pad", {"x": x, "p": np.array([5, 0, 4, 7], I64)}, OpType.PAD, PadAttrs("reflect", None),
          {"mode": "reflect"}, opset=18, oracle="reference")


def test_broadcast_shape_agrees_with_torch():
    """The kernels' fast broadcasting (``common.broadcast_shape``) gives torch.broadcast_shapes'
    shape, or raises where torch does, on random shapes with 0s, 1s and -1s (an Expand to -1 is
    an error, not PyTorch's "keep this dim")."""
    import random

    import torch

    from ember.backends.cpu.kernels.common import broadcast_shape

    rng = random.Random(0)
    for _ in range(2000):
        shapes = [tuple(rng.choice([-1, 0, 1, 1, 2, 3, 3]) for _ in range(rng.randint(0, 4)))
                  for _ in range(rng.randint(1, 3))]
        try:
            want = tuple(torch.broadcast_shapes(*shapes))
        except (RuntimeError, ValueError):
            with pytest.raises((RuntimeError, ValueError), match="cannot be broadcast"):
                broadcast_shape(*shapes)
            continue
        assert broadcast_shape(*shapes) == want, shapes
    assert broadcast_shape(torch.Size([2, 1, 4]), (3, 1)) == (2, 3, 4)
