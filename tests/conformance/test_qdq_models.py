"""Quantized models end to end: a small CNN and a small MLP quantized by ONNX Runtime's own tools
build with Ember on the CPU and agree with ONNX Runtime's run of the same model.

- ``quantize_static``, QDQ format, per-channel weights, uint8 or int8 activations: within one
  quantization step of the output against ONNX Runtime's int8 kernels, and to float rounding
  against ONNX Runtime with its graph optimizations off (each Q/DQ node run as written, as Ember
  does);
- ``quantize_dynamic`` (DynamicQuantizeLinear, MatMulInteger / ConvInteger) and
  ``quantize_static``'s QOperator format (QLinearConv, QLinearMatMul): to float rounding."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnxruntime import quantization as oq

import ember
from ember.ir.optype import OpType
from tests.int8ref import ORT_INT8_WRONG, reference_run

F32 = np.float32


def _cnn(r: np.random.Generator) -> onnx.ModelProto:
    """conv-relu, conv + residual add, relu, global pool, flatten, gemm."""
    inits = {
        "w1": r.normal(0, 0.3, (8, 3, 3, 3)), "b1": r.normal(0, 0.1, 8),
        "w2": r.normal(0, 0.2, (8, 8, 3, 3)), "b2": r.normal(0, 0.1, 8),
        "wf": r.normal(0, 0.3, (5, 8)), "bf": r.normal(0, 0.1, 5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    return _model("cnn", nodes, inits, [2, 3, 8, 8], [2, 5])


def _mlp(r: np.random.Generator) -> onnx.ModelProto:
    inits = {"w1": r.normal(0, 0.3, (16, 32)), "b1": r.normal(0, 0.1, 32),
             "w2": r.normal(0, 0.3, (32, 4)), "b2": r.normal(0, 0.1, 4)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    return _model("mlp", nodes, inits, [4, 16], [4, 4])


def _model(name: str, nodes: list, inits: dict, x_shape: list[int], y_shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v, F32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


class _Reader(oq.CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter([{"x": b} for b in batches])

    def get_next(self):  # noqa: ANN201 (ORT's signature)
        return next(self._it, None)


def _quantize(model: onnx.ModelProto, tmp_path, batches: list[np.ndarray], activation: oq.QuantType) -> onnx.ModelProto:
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, str(src))
    oq.quantize_static(str(src), str(dst), _Reader(batches), quant_format=oq.QuantFormat.QDQ,
                       per_channel=True, activation_type=activation, weight_type=oq.QuantType.QInt8)
    return onnx.load(str(dst))


def _output_scale(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that writes the graph output."""
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(inits[node.input[1]].reshape(-1)[0])


def _ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("activation", [oq.QuantType.QUInt8, oq.QuantType.QInt8], ids=["quint8", "qint8"])
def test_quantize_static_qdq_model_matches_onnxruntime(arch: str, activation: oq.QuantType, tmp_path) -> None:
    r = np.random.default_rng(7)
    model = _cnn(r) if arch == "cnn" else _mlp(r)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    batches = [r.normal(0, 1, shape).astype(F32) for _ in range(8)]
    qdq = _quantize(model, tmp_path, batches, activation)
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
               for n in qdq.graph.node), "per-channel weights expected"
    step = _output_scale(qdq)
    engine = ember.build(qdq, ember.BuildConfig(device="cpu"))
    kept = [n.op for n in engine.plan.graph.nodes]
    # the Q/DQ pairs in front of convolutions and GEMMs fold into INT8 layers (the others stay, as
    # written); the weights' DQs fold into constants the INT8 layers quantize again, exactly
    layers = sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in model.graph.node)
    assert kept.count(OpType.QCONV) + kept.count(OpType.QGEMM) == layers
    assert kept.count(OpType.QUANTIZE_LINEAR) < sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert all(n.inputs[0] not in engine.plan.graph.constants for n in engine.plan.graph.nodes
               if n.op is OpType.DEQUANTIZE_LINEAR)
    engine.save(str(tmp_path / "qdq.ember"))
    engine = ember.load(str(tmp_path / "qdq.ember"))  # the saved engine runs the same
    for x in (batches[0], r.normal(0, 1.5, shape).astype(F32)):
        with engine.create_context() as ctx:
            got = np.asarray(ctx.infer({"x": x})["y"])
        as_written = _ort(qdq, x, optimize=False)  # ONNX's arithmetic, Q/DQ in float
        assert np.max(np.abs(got - as_written)) <= step * 1.001, (np.max(np.abs(got - as_written)), step)
        assert np.mean(np.abs(got - as_written) > step / 2) < 0.02  # almost all exactly the same step
        if not ORT_INT8_WRONG:  # ORT's own int8 kernels (they saturate on x86 CPUs without VNNI)
            fused = _ort(qdq, x, optimize=True)
            assert np.max(np.abs(got - fused)) <= step * 1.001, (np.max(np.abs(got - fused)), step)
        # ... and it did run quantized: the float model's answer is further away
        assert np.max(np.abs(got - _ort(model, x, optimize=True))) > 1e-4


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_quantize_dynamic_model_matches_onnxruntime(arch: str, tmp_path) -> None:
    """``quantize_dynamic`` writes DynamicQuantizeLinear + MatMulInteger / ConvInteger + Cast +
    Mul: Ember runs them exactly, as ONNX Runtime runs them without its graph fusions (with them,
    ONNX Runtime sums the float epilogue in another order: float rounding only)."""
    r = np.random.default_rng(11)
    model = _cnn(r) if arch == "cnn" else _mlp(r)
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(model, str(src))
    oq.quantize_dynamic(str(src), str(dst), weight_type=oq.QuantType.QInt8 if arch == "mlp" else oq.QuantType.QUInt8)
    qmodel = onnx.load(str(dst))
    ops = {n.op_type for n in qmodel.graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "ConvInteger"}, ops
    engine = ember.build(qmodel, ember.BuildConfig(device="cpu"))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    for _ in range(2):
        x = r.normal(0, 1, shape).astype(F32)
        with engine.create_context() as ctx:
            got = np.asarray(ctx.infer({"x": x})["y"])
        np.testing.assert_allclose(got, _ort(qmodel, x, optimize=False), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, _ort(qmodel, x, optimize=True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_quantize_static_qoperator_model_matches_onnxruntime(arch: str, tmp_path) -> None:
    """The QOperator format for Conv and MatMul: QuantizeLinear -> QLinearConv / QLinearMatMul ->
    DequantizeLinear (the other ops stay float: their QOperator forms are com.microsoft ops)."""
    r = np.random.default_rng(5)
    model = _cnn(r) if arch == "cnn" else _mlp(r)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    batches = [r.normal(0, 1, shape).astype(F32) for _ in range(8)]
    src, dst = tmp_path / "float.onnx", tmp_path / "qop.onnx"
    onnx.save(model, str(src))
    oq.quantize_static(str(src), str(dst), _Reader(batches), quant_format=oq.QuantFormat.QOperator,
                       op_types_to_quantize=["Conv", "MatMul"], per_channel=True,
                       activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8)
    qmodel = onnx.load(str(dst))
    ops = {n.op_type for n in qmodel.graph.node}
    assert ops & {"QLinearConv", "QLinearMatMul"}, ops
    engine = ember.build(qmodel, ember.BuildConfig(device="cpu"))
    for x in (batches[0], r.normal(0, 1.5, shape).astype(F32)):
        with engine.create_context() as ctx:
            got = np.asarray(ctx.infer({"x": x})["y"])
        if ORT_INT8_WRONG:  # ONNX's reference arithmetic instead of ORT's saturating 8-bit kernels
            np.testing.assert_allclose(got, reference_run(qmodel, {"x": x})[0], rtol=1e-5, atol=1e-5)
            continue
        np.testing.assert_allclose(got, _ort(qmodel, x, optimize=False), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, _ort(qmodel, x, optimize=True), rtol=1e-5, atol=1e-5)
