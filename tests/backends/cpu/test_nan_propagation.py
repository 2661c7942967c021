"""NaN in means NaN out, as ONNX Runtime does, on every CPU tactic of a fused layer: oneDNN's relu
and hardtanh post-ops turn NaN into 0, so those activations run after the call (issue 17)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember

RNG = np.random.default_rng(0)


def _model(kind: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(0, 0.1, 8).astype(np.float32), "b")
    lo = numpy_helper.from_array(np.array(0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6, np.float32), "hi")
    wm = numpy_helper.from_array(RNG.normal(0, 0.3, (4, 6)).astype(np.float32), "wm")
    bm = numpy_helper.from_array(RNG.normal(0, 0.1, 6).astype(np.float32), "bm")
    inits, shape = [w, b, lo, hi, wm, bm], [1, 4, 6, 6]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])
    if kind == "conv_relu":
        nodes, out = [conv, helper.make_node("Relu", ["c"], ["y"])], [1, 8, 6, 6]
    elif kind == "conv_relu6":
        nodes, out = [conv, helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], [1, 8, 6, 6]
    elif kind == "conv_add_relu":  # a residual block: relu(conv(x) + x)
        inits[0] = numpy_helper.from_array(RNG.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w")
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
        shape, out = [1, 8, 6, 6], [1, 8, 6, 6]
    else:  # gemm_relu
        shape, out = [3, 4], [3, 6]
        nodes = [helper.make_node("MatMul", ["x", "wm"], ["m"]), helper.make_node("Add", ["m", "bm"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older ONNX Runtimes too (the GPU machine's)
    return model


@pytest.mark.parametrize("kind", ["conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"])
@pytest.mark.parametrize("fill", [np.nan, np.inf, "one_nan"])
def test_non_finite_inputs_stay_non_finite_like_onnxruntime(kind, fill):
    model = _model(kind)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    if fill == "one_nan":
        x.reshape(-1)[5] = np.nan
    else:
        x[:] = fill
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    assert any(layer.kind in ("FusedConv", "FusedGemm") for layer in engine.plan.layers)
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    nans = (int(np.isnan(got).sum()), int(np.isnan(want).sum()))
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{kind}: NaN count {nans[0]}, ONNX Runtime's {nans[1]}"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5)


def test_an_index_out_of_range_is_the_inputs_fault():
    """A Gather index past the table is an ``IndexRangeError``: an ``InputError`` (the values given
    are at fault; ``ember serve`` answers 400) and the node's ``GraphError``."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "t")
    graph = helper.make_graph([helper.make_node("Gather", ["t", "ids"], ["y"], name="lookup")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])], [table])
    engine = ember.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                         ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        assert ctx.infer({"ids": np.array([0, 1, 2, 3])})["y"].shape == (4, 2)
        with pytest.raises(ember.IndexRangeError, match="'lookup'.*index out of range") as info:
            ctx.infer({"ids": np.array([0, 1, 2, 99])})
    assert isinstance(info.value, ember.InputError) and isinstance(info.value, ember.GraphError)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_inputs_stay_non_finite_on_cuda(kind, precision):
    """The same on CUDA, every tactic the build picks (cuDNN, cuBLASLt, Triton epilogues); see
    bench/probes/cuda_nan.py for what each did before the Triton and fp16 cuBLASLt fixes."""
    model = _model(kind)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    x.reshape(-1)[5] = np.nan
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision=precision))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"x": x})["y"])
    assert np.array_equal(np.isnan(got), np.isnan(want)), [layer.tactic for layer in engine.plan.layers]
