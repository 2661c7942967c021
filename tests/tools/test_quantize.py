"""``ember quantize``: Ember's calibration written as a QDQ ONNX model that ONNX's checker accepts,
ONNX Runtime runs close to the fp32 model, and Ember builds to ONNX Runtime's answer."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import ember
from ember.cli import main
from ember.errors import BuildError, InputError
from ember.tools.quantize import qdq_counts, quantize_model
from tests.int8ref import ort_options

F32 = np.float32


def _model(name: str, nodes: list, inits: dict, x_shape: list, y_shape: list, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v, F32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def cnn(opset: int = 13) -> onnx.ModelProto:
    """conv-relu, conv-relu, global pool, flatten, gemm (transB)."""
    r = np.random.default_rng(0)
    inits = {"w1": r.normal(0, 0.3, (8, 3, 3, 3)), "b1": r.normal(0, 0.1, 8),
             "w2": r.normal(0, 0.2, (8, 8, 3, 3)), "b2": r.normal(0, 0.1, 8),
             "wf": r.normal(0, 0.3, (5, 8)), "bf": r.normal(0, 0.1, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return _model("cnn", nodes, inits, [2, 3, 8, 8], [2, 5], opset)


def mlp() -> onnx.ModelProto:
    r = np.random.default_rng(1)
    inits = {"w1": r.normal(0, 0.3, (16, 32)), "b1": r.normal(0, 0.1, 32),
             "w2": r.normal(0, 0.3, (32, 4)), "b2": r.normal(0, 0.1, 4)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    return _model("mlp", nodes, inits, [4, 16], [4, 4])


def _data(shape: tuple, batches: int, seed: int = 2) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    return [{"x": r.standard_normal(shape).astype(F32)} for _ in range(batches)]


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output; QDQ pairs run as float ops where its fused 8-bit kernels saturate
    (``tests/int8ref.py``)."""
    sess = ort.InferenceSession(model.SerializeToString(), ort_options(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("make, shape, axes", [(cnn, (2, 3, 8, 8), {"w1": 0, "w2": 0, "wf": 0}),
                                               (mlp, (4, 16), {"w1": 1, "w2": 1})])
def test_qdq_model_checks_runs_in_ort_and_in_ember(tmp_path, make, shape, axes):
    model = make()
    qdq = quantize_model(model, _data(shape, 8), calibrator="minmax")
    onnx.checker.check_model(qdq, full_check=True)
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == len(axes) and qdq_counts(qdq)["weights"] == len(axes)
    dq = {n.input[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    for w, axis in axes.items():  # per-output-channel int8 weights
        node = dq[f"{w}_quantized"]
        assert helper.get_attribute_value(node.attribute[0]) == axis
        q = next(t for t in qdq.graph.initializer if t.name == f"{w}_quantized")
        assert q.data_type == onnx.TensorProto.INT8
    biases = [t for t in qdq.graph.initializer
              if t.data_type == onnx.TensorProto.INT32 and t.name.endswith("_quantized")]
    assert len(biases) == (3 if make is cnn else 0)  # the MLP's biases are Adds: float
    x = _data(shape, 1, seed=7)[0]["x"]
    ref, got = _ort(model, x), _ort(qdq, x)
    step = np.abs(ref).max() / 127
    assert np.abs(got - ref).max() <= 4 * step
    path = tmp_path / "qdq.onnx"
    onnx.save(qdq, str(path))
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        ours = np.asarray(ctx.infer({"x": x})["y"])
    assert np.abs(ours - got).max() <= step


def test_per_tensor_weights_and_entropy():
    qdq = quantize_model(cnn(), _data((2, 3, 8, 8), 4), per_channel=False)
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear":
            assert not n.attribute
    assert {t.name: numpy_helper.to_array(t).ndim for t in qdq.graph.initializer}["w1_scale"] == 0


def test_cache_is_reused_without_data(tmp_path):
    cache = tmp_path / "model.calib"
    first = quantize_model(mlp(), _data((4, 16), 4), calibrator="percentile", cache=cache)
    text = cache.read_text().splitlines()
    assert text[0].endswith("PercentileCalibration(99.99)") and {ln.split(":")[0] for ln in text[1:]} == {"x", "r1"}
    again = quantize_model(mlp(), None, calibrator="percentile", cache=cache)
    scales = {t.name: numpy_helper.to_array(t) for t in again.graph.initializer if t.name.endswith("_scale")}
    before = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer if t.name.endswith("_scale")}
    assert scales.keys() == before.keys() and all(np.array_equal(scales[k], before[k]) for k in scales)


def test_opset_below_13_is_raised():
    qdq = quantize_model(cnn(opset=11), _data((2, 3, 8, 8), 2), calibrator="minmax")
    assert max(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")) >= 13
    onnx.checker.check_model(qdq)


def test_cli_end_to_end(tmp_path, capsys):
    src, out, npz = tmp_path / "cnn.onnx", tmp_path / "cnn_qdq.onnx", tmp_path / "calib.npz"
    onnx.save(cnn(), str(src))
    np.savez(npz, x=np.random.default_rng(3).standard_normal((6, 3, 8, 8)).astype(F32))
    cache = tmp_path / "cnn.calib"
    assert main(["quantize", str(src), "--calib-data", str(npz), "-o", str(out), "--calibrator", "mse",
                 "--calib-cache", str(cache)]) == 0
    assert "3 activations and 3 weights" in capsys.readouterr().out
    assert cache.exists()
    onnx.checker.check_model(onnx.load(str(out)))
    assert main(["quantize", str(src), "-o", str(out), "--calibrator", "mse", "--calib-cache", str(cache)]) == 0


def test_errors(tmp_path, capsys):
    with pytest.raises(InputError, match="'x'"):  # a wrong shape, named by calibration_batches
        quantize_model(mlp(), [{"x": np.zeros((4, 15), F32)}])
    with pytest.raises(InputError, match="empty"):
        quantize_model(mlp(), [])
    with pytest.raises(BuildError, match="needs data"):
        quantize_model(mlp(), None)
    plain = _model("plain", [helper.make_node("Relu", ["x"], ["y"])], {}, [2, 3], [2, 3])
    with pytest.raises(BuildError, match="nothing to quantize"):
        quantize_model(plain, _data((2, 3), 1))
    qdq = quantize_model(mlp(), _data((4, 16), 2), calibrator="minmax")
    with pytest.raises(BuildError, match="already quantized"):
        quantize_model(qdq, _data((4, 16), 1))
    npz = tmp_path / "bad.npz"
    np.savez(npz, y=np.zeros((4, 16), F32))
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(src))
    assert main(["quantize", str(src), "--calib-data", str(npz), "-o", str(tmp_path / "o.onnx")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


def test_opset_that_cannot_be_raised_is_refused(monkeypatch):
    from onnx import version_converter

    def fail(model, version):
        raise RuntimeError("no adapter for op Foo")

    monkeypatch.setattr(version_converter, "convert_version", fail)
    with pytest.raises(BuildError, match="opset 11 .* needs opset 13.*no adapter for op Foo"):
        quantize_model(cnn(opset=11), _data((2, 3, 8, 8), 1))


def test_activation_read_twice_gets_one_pair_and_float_readers_stay_float():
    r = np.random.default_rng(4)
    inits = {"wa": r.normal(0, 0.3, (8, 4)), "wb": r.normal(0, 0.3, (8, 4))}
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["x", "wb"], ["b"]),
             helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Add", ["a", "b"], ["y"])]
    model = _model("twice", nodes, inits, [2, 8], [2, 4])
    model.graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2, 8]))
    qdq = quantize_model(model, _data((2, 8), 2), calibrator="minmax")
    assert [n.op_type for n in qdq.graph.node].count("QuantizeLinear") == 1
    assert next(n for n in qdq.graph.node if n.op_type == "Sigmoid").input[0] == "x"
    assert not {"wa", "wb"} & {t.name for t in qdq.graph.initializer}


@pytest.mark.parametrize("make, shape", [(cnn, (2, 3, 8, 8)), (mlp, (4, 16))])
def test_built_qdq_model_records_the_written_scales(make, shape):
    """Building the written QDQ model gives one record per 8-bit Q/DQ (``record_qdq``): the
    activations' Q inputs and DQ outputs, the weights' DQ outputs, with the initializers' values;
    the int32 biases are not recorded; every record names a tensor of the engine's graph."""
    qdq = quantize_model(make(), _data(shape, 4), calibrator="minmax")
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    engine = ember.build(qdq, ember.BuildConfig(device="cpu"))
    quant = engine.plan.records.quantization
    want = {}
    for n in qdq.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and inits[n.input[2]].dtype == np.int8:
            want[n.input[0] if n.op_type == "QuantizeLinear" else n.output[0]] = (inits[n.input[1]], inits[n.input[2]])
    # the DQ outputs that fed INT8 layers are folded into them (their Q input keeps the record)
    graph = engine.plan.graph
    kept = {t for t in want if t in graph.types}
    assert set(quant.tensors) == kept and kept >= {t for t in want if "DequantizeLinear" not in t}
    for tensor in kept:
        scale, zp = want[tensor]
        rec = quant.get(tensor)
        assert rec.scale == tuple(scale.reshape(-1).tolist()) and rec.per_channel == (scale.size > 1)
        # the same real values: an int8 activation read by an INT8 conv is stored uint8, zero point + 128
        shift = 128 if rec.dtype.value == "uint8" else 0
        assert tuple(z - shift for z in rec.zero_point) == tuple(zp.reshape(-1).tolist()), tensor
        assert rec.source == "qdq"
    assert any(n.op.value in ("QConv", "QGemm") for n in graph.nodes)


def _cnn_bn() -> onnx.ModelProto:
    """conv-BN-relu, conv-BN (a negative gamma, a zero gamma) + residual, pool, gemm: BatchNorm
    after each convolution, as an unfolded export writes it."""
    r = np.random.default_rng(4)

    def bn(c: int, name: str) -> dict:
        gamma = r.normal(1.0, 0.3, c)
        gamma[0], gamma[1] = -0.7, 0.0
        return {f"{name}_g": gamma, f"{name}_b": r.normal(0, 0.1, c), f"{name}_m": r.normal(0, 0.1, c),
                f"{name}_v": r.uniform(0.5, 1.5, c)}

    inits = {"w1": r.normal(0, 0.3, (8, 3, 3, 3)), "w2": r.normal(0, 0.2, (8, 8, 3, 3)),
             "wf": r.normal(0, 0.3, (5, 8)), "bf": r.normal(0, 0.1, 5), **bn(8, "n1"), **bn(8, "n2")}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "n1_g", "n1_b", "n1_m", "n1_v"], ["b1"]),
             helper.make_node("Relu", ["b1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "n2_g", "n2_b", "n2_m", "n2_v"], ["b2"]),
             helper.make_node("Add", ["b2", "r1"], ["s2"]),
             helper.make_node("Relu", ["s2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return _model("cnn_bn", nodes, inits, [2, 3, 12, 12], [2, 5])


def test_a_qdq_model_with_batchnorm_after_its_convolutions_runs_them_in_int8():
    """BatchNorm folded into a convolution whose weight is DequantizeLinear(int8) keeps the weight
    int8 (its per-channel scales times |gamma / sigma|): the QDQ model Ember writes for a model
    with BatchNorm, built again, runs every convolution in INT8 (it ran them in fp32), and
    computes what ONNX Runtime computes on that QDQ model."""
    model = _cnn_bn()
    qdq = quantize_model(model, _data((2, 3, 12, 12), 4), calibrator="minmax")
    engine = ember.build(qdq.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    kinds = [lay.kind for lay in engine.plan.layers]
    assert kinds.count("QConv") == 2 and "Conv" not in kinds and "FusedConv" not in kinds, kinds
    x = _data((2, 3, 12, 12), 1, seed=9)[0]["x"]
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    want = _ort(qdq, x)
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 2e-2
