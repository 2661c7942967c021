"""Unary and binary elementwise kernels against ONNX Runtime (broadcasting, ints, bounds)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import ClipAttrs, GeluAttrs, HardSigmoidAttrs, LeakyReluAttrs

F32 = np.float32

UNARY = [
    ("Relu", OpType.RELU), ("Sigmoid", OpType.SIGMOID), ("Tanh", OpType.TANH),
    ("HardSwish", OpType.HARD_SWISH), ("Erf", OpType.ERF), ("Exp", OpType.EXP),
    ("Neg", OpType.NEG), ("Abs", OpType.ABS), ("Reciprocal", OpType.RECIPROCAL),
]


@pytest.mark.parametrize("onnx_op,op", UNARY)
def test_unary_float(check, rng, onnx_op, op):
    check(onnx_op, {"x": rng.standard_normal((2, 3, 4)).astype(F32)}, op)


@pytest.mark.parametrize("onnx_op,op", [("Sqrt", OpType.SQRT), ("Log", OpType.LOG)])
def test_unary_positive(check, rng, onnx_op, op):
    check(onnx_op, {"x": rng.uniform(0.1, 5, (3, 5)).astype(F32)}, op)


@pytest.mark.parametrize("onnx_op,op", [("Relu", OpType.RELU), ("Neg", OpType.NEG), ("Abs", OpType.ABS)])
def test_unary_int(check, rng, onnx_op, op):
    check(onnx_op, {"x": rng.integers(-9, 9, (4, 5)).astype(np.int32)}, op)


def test_not(check, rng):
    check("Not", {"x": rng.random((3, 4)) > 0.5}, OpType.NOT)


def test_leaky_relu_and_hard_sigmoid(check, rng):
    x = rng.standard_normal((2, 6)).astype(F32) * 4
    check("LeakyRelu", {"x": x}, OpType.LEAKY_RELU, LeakyReluAttrs(0.2), {"alpha": 0.2})
    check("HardSigmoid", {"x": x}, OpType.HARD_SIGMOID, HardSigmoidAttrs(0.3, 0.4),
          {"alpha": 0.3, "beta": 0.4})
    check("HardSigmoid", {"x": x}, OpType.HARD_SIGMOID, HardSigmoidAttrs(1 / 6, 0.5),
          {"alpha": 1 / 6, "beta": 0.5})


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (4,), (2, 3, 5, 4)])
def test_prelu_broadcast(check, rng, slope_shape):
    x = rng.standard_normal((2, 3, 5, 4)).astype(F32)
    check("PRelu", {"x": x, "s": rng.random(slope_shape).astype(F32)}, OpType.PRELU, const=(1,))


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu(check, rng, approx):
    check("Gelu", {"x": rng.standard_normal((3, 7)).astype(F32) * 3}, OpType.GELU,
          GeluAttrs(approx), {"approximate": approx}, opset=20)


def test_clip_variants(check, rng):
    x = rng.standard_normal((3, 8)).astype(F32) * 3
    lo, hi = np.array(-1.0, F32), np.array(0.5, F32)
    check("Clip", {"x": x, "lo": lo, "hi": hi}, OpType.CLIP, ClipAttrs(None, None), opset=13)
    check("Clip", {"x": x, "lo": None, "hi": hi}, OpType.CLIP, ClipAttrs(None, None), opset=13)
    check("Clip", {"x": x, "lo": lo}, OpType.CLIP, ClipAttrs(None, None), opset=13)
    check("Clip", {"x": x}, OpType.CLIP, ClipAttrs(None, None), opset=13)
    check("Clip", {"x": x}, OpType.CLIP, ClipAttrs(0.0, 6.0), {"min": 0.0, "max": 6.0}, opset=6)
    check("Clip", {"x": x, "lo": lo, "hi": hi}, OpType.CLIP, ClipAttrs(-1.0, 0.5), opset=13)
    xi = rng.integers(-10, 10, (4, 4)).astype(np.int64)
    check("Clip", {"x": xi, "lo": np.array(-3, np.int64), "hi": np.array(4, np.int64)},
          OpType.CLIP, ClipAttrs(None, None), opset=13)
    check("Clip", {"x": xi, "lo": np.array(-3, np.int64)}, OpType.CLIP, ClipAttrs(-3, None), opset=13)


BINARY = [("Add", OpType.ADD), ("Sub", OpType.SUB), ("Mul", OpType.MUL), ("Div", OpType.DIV)]
SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5, 1, 1), (1, 1, 6))]


@pytest.mark.parametrize("onnx_op,op", BINARY)
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_binary_broadcast(check, rng, onnx_op, op, sa, sb):
    a = rng.standard_normal(sa).astype(F32)
    b = rng.uniform(0.5, 2, sb).astype(F32)
    check(onnx_op, {"a": a, "b": b}, op)


@pytest.mark.parametrize("onnx_op,op", BINARY)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_binary_int(check, rng, onnx_op, op, dtype):
    a = rng.integers(-50, 50, (3, 4)).astype(dtype)
    b = rng.integers(1, 7, (4,)).astype(dtype) * rng.choice([-1, 1], (4,)).astype(dtype)
    check(onnx_op, {"a": a, "b": b}, op)


def test_int_div_truncates_toward_zero(check):
    a = np.array([7, -7, 7, -7, 0], np.int64)
    b = np.array([2, 2, -2, -2, 3], np.int64)
    res = check("Div", {"a": a, "b": b}, OpType.DIV)
    np.testing.assert_array_equal(res["evaluate"][0], [3, -3, -3, 3, 0])


def test_pow_dtypes(check, rng):
    base = rng.uniform(0.5, 2, (3, 4)).astype(F32)
    check("Pow", {"a": base, "b": np.array(2.0, F32)}, OpType.POW)
    check("Pow", {"a": base, "b": np.array([1, 2, 3, 0], np.int64)}, OpType.POW)
    ib = rng.integers(0, 5, (3, 4)).astype(np.int64)
    check("Pow", {"a": ib, "b": np.array(3, np.int64)}, OpType.POW)
    check("Pow", {"a": ib, "b": np.array(2.0, F32)}, OpType.POW)


@pytest.mark.parametrize("onnx_op,op", [("Max", OpType.MAX), ("Min", OpType.MIN)])
def test_variadic(check, rng, onnx_op, op):
    xs = {"a": rng.standard_normal((2, 1, 4)).astype(F32), "b": rng.standard_normal((3, 1)).astype(F32),
          "c": rng.standard_normal((4,)).astype(F32)}
    check(onnx_op, xs, op)
    check(onnx_op, {"a": xs["a"]}, op)
    check(onnx_op, {"a": np.array([3, -2], np.int64), "b": np.array([1, 5], np.int64)}, op)


@pytest.mark.parametrize("onnx_op,op", [("Equal", OpType.EQUAL), ("Less", OpType.LESS),
                                        ("Greater", OpType.GREATER)])
def test_comparisons(check, rng, onnx_op, op):
    a = rng.integers(0, 3, (2, 3, 4)).astype(np.int64)
    check(onnx_op, {"a": a, "b": rng.integers(0, 3, (3, 1)).astype(np.int64)}, op)
    check(onnx_op, {"a": a.astype(F32), "b": np.array(1.0, F32)}, op)


def test_equal_bool(check, rng):
    check("Equal", {"a": rng.random((4,)) > 0.5, "b": rng.random((3, 4)) > 0.5}, OpType.EQUAL)


def test_where_broadcast(check, rng):
    cond = rng.random((2, 1, 4)) > 0.5
    check("Where", {"c": cond, "x": rng.standard_normal((3, 4)).astype(F32),
                    "y": np.array(-1.0, F32)}, OpType.WHERE)
    check("Where", {"c": cond, "x": np.array([1, 2, 3, 4], np.int64),
                    "y": np.zeros((3, 1), np.int64)}, OpType.WHERE)
