"""LayerNormalization, Softmax, LogSoftmax, Gemm, MatMul and reductions against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import GemmAttrs, LayerNormAttrs, ReduceAttrs, SoftmaxAttrs

F32 = np.float32


@pytest.mark.parametrize("axis,scale_shape", [(-1, (8,)), (1, (5, 8)), (-2, (5, 8)), (2, (8,))])
def test_layer_norm(check, rng, axis, scale_shape):
    x = rng.standard_normal((2, 3, 5, 8)).astype(F32)
    norm_shape = x.shape[axis:]
    full_scale = rng.standard_normal(scale_shape).astype(F32)
    if len(scale_shape) < len(norm_shape):
        full_scale = np.broadcast_to(full_scale, norm_shape).copy()
    inputs = {"x": x, "s": full_scale, "b": rng.standard_normal(full_scale.shape).astype(F32)}
    check("LayerNormalization", inputs, OpType.LAYER_NORM, LayerNormAttrs(axis, 1e-5),
          {"axis": axis, "epsilon": 1e-5}, opset=17, rtol=1e-4, atol=1e-5)


def test_layer_norm_broadcast_scale_and_stats(check, rng):
    x = rng.standard_normal((2, 3, 6)).astype(F32)
    check("LayerNormalization", {"x": x, "s": rng.standard_normal((1, 6)).astype(F32)},
          OpType.LAYER_NORM, LayerNormAttrs(1, 1e-3), {"axis": 1, "epsilon": 1e-3}, opset=17,
          rtol=1e-4, atol=1e-5)
    check("LayerNormalization", {"x": x, "s": rng.standard_normal(6).astype(F32)}, OpType.LAYER_NORM,
          LayerNormAttrs(-1, 1e-5), {"axis": -1}, n_out=3, opset=17, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onnx_op,op", [("Softmax", OpType.SOFTMAX), ("LogSoftmax", OpType.LOG_SOFTMAX)])
@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax(check, rng, onnx_op, op, axis):
    x = rng.standard_normal((2, 3, 4)).astype(F32) * 3
    check(onnx_op, {"x": x}, op, SoftmaxAttrs(axis), {"axis": axis}, opset=13, rtol=1e-5, atol=1e-6)
    check(onnx_op, {"x": x}, op, SoftmaxAttrs(axis, legacy_flatten=True), {"axis": axis}, opset=11,
          rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 1), (3, 5), ()])
def test_gemm(check, rng, ta, tb, c_shape):
    a = rng.standard_normal((4, 3) if ta else (3, 4)).astype(F32)
    b = rng.standard_normal((5, 4) if tb else (4, 5)).astype(F32)
    inputs = {"a": a, "b": b}
    if c_shape is not None:
        inputs["c"] = rng.standard_normal(c_shape).astype(F32)
    attrs = GemmAttrs(alpha=0.5, beta=2.0, trans_a=ta, trans_b=tb)
    check("Gemm", inputs, OpType.GEMM, attrs,
          {"alpha": 0.5, "beta": 2.0, "transA": int(ta), "transB": int(tb)}, const=(1, 2),
          rtol=1e-5, atol=1e-5)


def test_gemm_defaults_and_int(check, rng):
    check("Gemm", {"a": rng.standard_normal((2, 8)).astype(F32), "b": rng.standard_normal((8, 3)).astype(F32),
                   "c": rng.standard_normal(3).astype(F32)}, OpType.GEMM, GemmAttrs(), const=(1, 2),
          rtol=1e-5, atol=1e-5)
    check("Gemm", {"a": rng.integers(-3, 3, (2, 4)).astype(np.int64),
                   "b": rng.integers(-3, 3, (4, 3)).astype(np.int64)}, OpType.GEMM, GemmAttrs(), opset=13,
          oracle="reference")


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((6, 4), (2, 4, 3))])
def test_matmul(check, rng, sa, sb):
    check("MatMul", {"a": rng.standard_normal(sa).astype(F32), "b": rng.standard_normal(sb).astype(F32)},
          OpType.MATMUL, const=(1,), rtol=1e-5, atol=1e-5)


def test_matmul_int(check, rng):
    check("MatMul", {"a": rng.integers(-4, 4, (2, 3, 4)).astype(np.int64),
                     "b": rng.integers(-4, 4, (4, 2)).astype(np.int64)}, OpType.MATMUL)


REDUCE = [("ReduceMean", OpType.REDUCE_MEAN), ("ReduceSum", OpType.REDUCE_SUM), ("ReduceMax", OpType.REDUCE_MAX)]


@pytest.mark.parametrize("onnx_op,op", REDUCE)
@pytest.mark.parametrize("axes", [None, (1,), (-1, 0), (0, 2)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_reduce_axes_input(check, rng, onnx_op, op, axes, keepdims):
    x = rng.standard_normal((2, 3, 4)).astype(F32)
    inputs = {"x": x, "axes": None if axes is None else np.array(axes, np.int64)}
    check(onnx_op, inputs, op, ReduceAttrs(None, keepdims), {"keepdims": int(keepdims)}, opset=18,
          rtol=1e-5, atol=1e-6)
    # the same with axes folded into the attribute at import
    check(onnx_op, inputs, op, ReduceAttrs(axes, keepdims), {"keepdims": int(keepdims)}, opset=18,
          rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("onnx_op,op", REDUCE)
def test_reduce_opset13_attribute_and_noop(check, rng, onnx_op, op):
    x = rng.standard_normal((2, 3, 4)).astype(F32)
    if op is not OpType.REDUCE_SUM:
        check(onnx_op, {"x": x}, op, ReduceAttrs((1, -1), False), {"axes": [1, -1], "keepdims": 0},
              opset=13, rtol=1e-5, atol=1e-6)
    check(onnx_op, {"x": x, "axes": np.array([], np.int64)}, op, ReduceAttrs(None, True, True),
          {"noop_with_empty_axes": 1}, opset=18)


@pytest.mark.parametrize("onnx_op,op", [("ReduceSum", OpType.REDUCE_SUM), ("ReduceMax", OpType.REDUCE_MAX)])
def test_reduce_int(check, rng, onnx_op, op):
    x = rng.integers(-20, 20, (3, 4)).astype(np.int64)
    check(onnx_op, {"x": x, "axes": np.array([1], np.int64)}, op, ReduceAttrs(None, True), opset=18)
