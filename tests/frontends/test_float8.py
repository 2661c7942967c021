"""8-bit float tensors (ONNX 19+: float8e4m3fn, float8e4m3fnuz, float8e5m2, float8e5m2fnuz): Cast
to and from them with and without ``saturate``, QuantizeLinear / DequantizeLinear in them
(per-tensor, per-axis, blocked), an FP8 Q/DQ model as NVIDIA ModelOpt writes them, 8-bit float
engine inputs, outputs and weights, and the engine file keeping 8-bit float weights. The reference
is ONNX's own evaluator (``onnx.reference``), which converts with ml_dtypes."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.ir.dtype import DType
from ember.runtime.engine_file import decode_weights, encode_weights

F8 = {"FLOAT8E4M3FN": DType.FLOAT8E4M3FN, "FLOAT8E4M3FNUZ": DType.FLOAT8E4M3FNUZ,
      "FLOAT8E5M2": DType.FLOAT8E5M2, "FLOAT8E5M2FNUZ": DType.FLOAT8E5M2FNUZ}
#: ties, overflow, the tie past float8e4m3fn's largest value (464), tiny, infinities, NaN
VALUES = np.array([0.0, -0.0, 0.1, 1.0625, 1.1875, 3.14159, -7.5, 240.0, 250.0, 448.0, 460.0, 464.0, 470.0,
                   1000.0, 57344.0, 61440.0, 1e6, -1e6, 1e-9, np.inf, -np.inf, np.nan], dtype=np.float32)


def _model(nodes, inputs, outputs, inits=(), opset: int = 21) -> bytes:
    g = helper.make_graph(nodes, "f8", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _run(model: bytes, feeds: dict) -> list[np.ndarray]:
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)
    return [np.asarray(out[o.name]) for o in engine.plan.outputs]


def _same(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    a, b = ours.astype(np.float32), ref.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.where(np.isnan(a), 0, a), np.where(np.isnan(b), 0, b))


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("name", list(F8))
def test_cast_to_float8_rounds_and_saturates_as_onnx_says(name, saturate):
    to = getattr(TensorProto, name)
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=to, saturate=saturate)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(VALUES)])],
                   [helper.make_tensor_value_info("y", to, [len(VALUES)])])
    ref = ReferenceEvaluator(model).run(None, {"x": VALUES})[0]
    _same(_run(model, {"x": VALUES})[0], ref)


@pytest.mark.parametrize("name", list(F8))
@pytest.mark.parametrize("target", ["FLOAT", "FLOAT16", "INT32", "FLOAT8E4M3FN"])
def test_cast_from_float8_widens_exactly(name, target):
    src, to = getattr(TensorProto, name), getattr(TensorProto, target)
    x = VALUES[np.isfinite(VALUES) & (np.abs(VALUES) <= 200)].astype(F8[name].to_numpy())
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=to)],
                   [helper.make_tensor_value_info("x", src, [len(x)])],
                   [helper.make_tensor_value_info("y", to, [len(x)])])
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    _same(_run(model, {"x": x})[0], ref)


@pytest.mark.parametrize("name", ["FLOAT8E4M3FN", "FLOAT8E5M2"])
@pytest.mark.parametrize("form", ["tensor", "axis", "block"])
def test_quantize_and_dequantize_in_float8(name, form):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 6)) * 50).astype(np.float32)
    x[0, 0], x[1, 1] = np.nan, 1e6
    code = getattr(TensorProto, name)
    if form == "tensor":
        scale, attrs = np.array(0.5, np.float32), {}
    elif form == "axis":
        scale, attrs = np.array([0.25, 0.5, 1.0, 2.0], np.float32), {"axis": 0}
    else:
        scale, attrs = np.array([[0.5, 1.0], [2.0, 0.25], [1.0, 1.0], [0.125, 4.0]], np.float32), \
            {"axis": 1, "block_size": 3}
    zp = numpy_helper.from_array(np.zeros(scale.shape, np.float32).astype(F8[name].to_numpy()), "zp")
    model = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs),
                    helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                   [helper.make_tensor_value_info("q", code, [4, 6]),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
                   [numpy_helper.from_array(scale, "s"), zp])
    ref_q, ref_y = ReferenceEvaluator(model).run(None, {"x": x})
    q, y = _run(model, {"x": x})
    _same(q, ref_q)
    _same(y.astype(np.float32), ref_y)


def _modelopt_like() -> bytes:
    """x -> Q/DQ (float8e4m3fn, per-tensor) -> MatMul with a float8 weight dequantized per
    output channel -> + bias -> Relu, as ModelOpt's FP8 exports look."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    w_scale = (np.abs(w).max(axis=0) / 448).astype(np.float32)
    w8 = (w / w_scale).astype(DType.FLOAT8E4M3FN.to_numpy())
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.float32).astype(DType.FLOAT8E4M3FN.to_numpy()), "x_zp"),
             numpy_helper.from_array(w8, "w8"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w8", "w_scale"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)


def test_a_modelopt_style_fp8_qdq_model_runs_as_written_and_survives_the_engine_file(tmp_path):
    model = _modelopt_like()
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"x": x})["y"])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the input's float8 rounding is really applied: without it the result differs
    wd, mm, pre = ReferenceEvaluator(model).run(["wd", "mm", "pre"], {"x": x})
    unrounded = np.maximum(x @ wd + (pre - mm), 0)
    assert np.abs(unrounded - ref).max() > 1e-3
    assert np.abs(unrounded - got).max() > 1e-3
    path = tmp_path / "f8.ember"
    engine.save(path)
    again = ember.load(path)
    with again.create_context() as ctx:
        np.testing.assert_array_equal(np.asarray(ctx.infer({"x": x})["y"]), got)


def test_float8_weights_that_are_not_folded_are_kept_in_the_engine_file(tmp_path):
    """A float8 weight dequantized with a scale given at run time cannot be folded: it stays a
    float8 constant, and the engine file stores and restores it."""
    w8 = np.array([[1.0, -2.0], [0.5, 448.0]], np.float32).astype(DType.FLOAT8E4M3FN.to_numpy())
    model = _model([helper.make_node("DequantizeLinear", ["w8", "s"], ["y"])],
                   [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                   [numpy_helper.from_array(w8, "w8")])
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    assert engine.plan.graph.constants["w8"].dtype.name == "float8_e4m3fn"
    engine.save(tmp_path / "w.ember")
    again = ember.load(tmp_path / "w.ember")
    assert again.plan.graph.constants["w8"].dtype.name == "float8_e4m3fn"
    with again.create_context() as ctx:
        y = np.asarray(ctx.infer({"s": np.array(0.5, np.float32)})["y"])
    np.testing.assert_array_equal(y, w8.astype(np.float32) * 0.5)


def test_float8_engine_inputs_and_outputs_are_ml_dtypes_arrays():
    f8 = DType.FLOAT8E5M2.to_numpy()
    model = _model([helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.FLOAT),
                    helper.make_node("Neg", ["wide"], ["neg"]),
                    helper.make_node("Cast", ["neg"], ["y"], to=TensorProto.FLOAT8E5M2)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT8E5M2, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2, [3])])
    x = np.array([1.5, -3.0, 57344.0], np.float32).astype(f8)
    y = _run(model, {"x": x})[0]
    assert y.dtype == f8
    np.testing.assert_array_equal(y.astype(np.float32), -x.astype(np.float32))


def test_weights_round_trip_with_their_float8_types():
    consts = {name: np.array([0.5, -1.25, 3.0], np.float32).astype(d.to_numpy()) for name, d in
              (("a", DType.FLOAT8E4M3FN), ("b", DType.FLOAT8E4M3FNUZ), ("c", DType.FLOAT8E5M2),
               ("d", DType.FLOAT8E5M2FNUZ))}
    consts["e"] = np.arange(3, dtype=np.int64)
    back = decode_weights(encode_weights(consts))
    for name, arr in consts.items():
        assert back[name].dtype == arr.dtype
        np.testing.assert_array_equal(back[name].view(np.uint8) if arr.itemsize == 1 else back[name],
                                      arr.view(np.uint8) if arr.itemsize == 1 else arr)


def test_narrower_types_are_still_refused_with_the_node_and_what_to_do():
    model = _model([helper.make_node("DequantizeLinear", ["w4", "s"], ["y"])],
                   [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                   [helper.make_tensor("w4", TensorProto.INT4, [4], [1, 2, -3, 4])])
    with pytest.raises(ember.errors.UnsupportedOpError, match=r"INT4 quantization.*float8"):
        ember.build(model, ember.BuildConfig(device="cpu"))
