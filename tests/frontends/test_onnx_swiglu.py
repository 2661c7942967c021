"""SwiGLU (opset 28) against ONNX's reference: imported as its function body's ops (Swish(A) * B)
and fused into one elementwise kernel by the optimizer."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import ShapeError
from ember.ir import OpType

ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}


def _model(shape_a=(2, 3, 8), shape_b=None, dtype=np.float32, **attrs):
    t = ONNX_TYPES[dtype]
    node = helper.make_node("SwiGLU", ["A", "B"], ["Y"], name="swiglu", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", t, list(shape_a)),
                                            helper.make_tensor_value_info("B", t, list(shape_b or shape_a))],
                              [helper.make_tensor_value_info("Y", t, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28)])


def _feeds(dtype=np.float32, shape=(2, 3, 8)):
    rng = np.random.default_rng(0)
    return {"A": (rng.standard_normal(shape) * 3).astype(dtype), "B": rng.standard_normal(shape).astype(dtype)}


@pytest.mark.parametrize("alpha", [None, 1.702, -0.5])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12), (np.float16, 2e-3)])
def test_swiglu_matches_the_onnx_reference(alpha, dtype, tol):
    attrs = {} if alpha is None else {"alpha": alpha}
    model, feeds = _model(dtype=dtype, **attrs), _feeds(dtype)
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)["Y"]
    ref = ReferenceEvaluator(model).run(None, feeds)[0]
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol)


def test_swiglu_imports_as_swish_times_b_and_fuses_into_one_layer():
    graph = ember.frontends.load(_model(alpha=2.0))
    assert [n.op for n in graph.nodes] == [OpType.MUL, OpType.SIGMOID, OpType.MUL, OpType.MUL]
    engine = ember.build(_model(alpha=2.0), ember.BuildConfig(device="cpu"))
    assert [n.op for n in engine.plan.graph.nodes] == [OpType.FUSED_ELEMENTWISE]


def test_symbolic_dims_are_accepted():
    model = _model(shape_a=("batch", 8), shape_b=("batch", 8))
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    feeds = _feeds(shape=(5, 8))
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)["Y"]
    np.testing.assert_allclose(out, ReferenceEvaluator(model).run(None, feeds)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape_b", [(2, 3, 1), (3, 8)])
def test_inputs_of_different_shapes_are_refused_naming_the_node(shape_b):
    with pytest.raises(ShapeError, match=r"'swiglu' \(SwiGLU, opset 28\).*one shape.*does not broadcast"):
        ember.frontends.load(_model(shape_b=shape_b))
