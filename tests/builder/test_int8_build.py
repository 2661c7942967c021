"""INT8 CPU builds end to end: calibration data or cache in, an engine of INT8 layers out that keeps
the fp32 engine's results, survives the engine file, meets an accuracy target and refuses bad input."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import ember
from ember.backends.cpu.kernels.qlayers import int8_available
from ember.builder.calibration import CalibrationWarning
from ember.errors import BuildError, InputError

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch has no oneDNN INT8 kernels")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = torch.nn.Conv2d(16, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        z = torch.relu(self.c3(torch.relu(self.c2(y))) + y)
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


@pytest.fixture(scope="module")
def model() -> bytes:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 12, 12),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


def _batches(n: int = 4, seed: int = 0, batch: int = 4) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    return [{"x": r.normal(0, 1, (batch, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def _run(engine: ember.Engine, feeds) -> np.ndarray:
    with engine.create_context() as ctx:
        return ctx.infer(feeds)["y"]


def _int8(model, data=None, **config) -> ember.Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return ember.build(model, ember.BuildConfig(device="cpu", precision="int8", **config), calibration_data=data)


@pytest.fixture(scope="module")
def fp32(model):
    return ember.build(model, ember.BuildConfig(device="cpu"))


def test_int8_engine_keeps_fp32_results(model, fp32):
    engine = _int8(model, (b for b in _batches()))  # a generator is read once, and that is enough
    kinds = [layer.kind for layer in engine.plan.layers]
    assert kinds.count("QConv") == 3 and kinds.count("QGemm") == 1
    assert all(layer.precision == "int8" for layer in engine.plan.layers if layer.kind.startswith("Q"))
    quant = engine.plan.records.quantization
    assert quant.get("x").source == "calibration:entropy" and quant.get("x").zero_point == (128,)
    x = _batches(1, seed=9)[0]
    ref, got = _run(fp32, x), _run(engine, x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75
    single = _run(engine, {"x": x["x"][:1]})  # the dynamic batch runs any size
    assert np.allclose(single, got[:1], atol=1e-5)


@pytest.mark.parametrize("calibrator", ["entropy", "minmax", "percentile", "mse"])
def test_every_calibrator_builds(model, fp32, calibrator):
    engine = _int8(model, _batches(2), calibrator=calibrator, calibration_percentile=99.9)
    x = _batches(1, seed=9)[0]
    ref = _run(fp32, x)
    assert np.abs(_run(engine, x) - ref).max() / np.abs(ref).max() < 0.1
    assert engine.plan.records.quantization.get("x").source == f"calibration:{calibrator}"


def test_cache_rebuilds_the_same_engine_without_data(model, tmp_path):
    cache = tmp_path / "model.calib"
    first = _int8(model, _batches(), calibration_cache=str(cache))
    assert cache.read_text().splitlines()[0].startswith("EMBER-")
    again = _int8(model, None, calibration_cache=str(cache))
    x = _batches(1, seed=3)[0]
    assert np.array_equal(_run(first, x), _run(again, x))
    with pytest.warns(CalibrationWarning, match="not used"):  # another calibrator's cache: calibrated afresh
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8", calibrator="minmax",
                                             calibration_cache=str(cache)), calibration_data=_batches(1))


def test_engine_file_round_trip(model, tmp_path):
    engine = _int8(model, _batches(2))
    path = tmp_path / "m.ember"
    engine.save(path)
    loaded = ember.load(path)
    x = _batches(1, seed=4)[0]
    assert np.array_equal(_run(engine, x), _run(loaded, x))
    assert loaded.plan.records.quantization == engine.plan.records.quantization
    assert [layer.precision for layer in loaded.plan.layers] == [layer.precision for layer in engine.plan.layers]


def test_accuracy_target_returns_the_most_damaging_layers_to_fp32(model, fp32):
    data = _batches(2)
    plain = _int8(model, data)
    x = data[0]
    err = np.abs(_run(plain, x) - _run(fp32, x)).max() / np.abs(_run(fp32, x)).max()
    engine = _int8(model, data, accuracy_target=float(err) / 3)
    info = engine.plan.build_info["accuracy"]
    assert info["order"] == "damage" and info["met"] and info["fp32_layers"]
    assert info["error"] <= float(err) / 3
    kept = set(info["fp32_layers"])
    assert all(layer.precision == "fp32" for layer in engine.plan.layers if layer.name in kept)


def test_bad_calibration_input(model, tmp_path):
    with pytest.raises(BuildError, match="calibration needs data"):
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8"))
    with pytest.raises(InputError, match="'x'"):
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8"),
                    calibration_data=[{"image": np.zeros((1, 3, 12, 12), np.float32)}])
    with pytest.raises(InputError):
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8"),
                    calibration_data=[{"x": np.zeros((1, 3, 7, 7), np.float32)}])
    with pytest.raises(InputError):
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8"), calibration_data=[])
    bad = tmp_path / "bad.calib"
    bad.write_text("EMBER-0.1.0-EntropyCalibration2\nx: zzzz\n")
    with pytest.raises(BuildError, match="bad.calib"):
        ember.build(model, ember.BuildConfig(device="cpu", precision="int8", calibration_cache=str(bad)))


def test_config_refusals():
    assert ember.BuildConfig(device="cuda", precision="int8").precision == "int8"  # CUDA INT8: Triton kernels
    with pytest.raises(BuildError, match="calibrator"):
        ember.BuildConfig(precision="int8", calibrator="kl")
    with pytest.raises(BuildError, match="percentile"):
        ember.BuildConfig(precision="int8", calibration_percentile=0)
    with pytest.raises(BuildError, match="fp8"):
        ember.BuildConfig(precision="fp8")


def test_modelopt_style_qdq_weights_run_int8():
    """NVIDIA ModelOpt writes float weights behind their own Q -> DQ pair (fake quantization of a
    constant): constant folding makes the Q int8 and the DQ float again, and the INT8 conv takes
    the weight's per-channel scales from the pair, so it computes what the model says."""
    import onnx
    from onnx import helper, numpy_helper

    r = np.random.default_rng(5)
    w = r.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32)
    ws = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "modelopt",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    assert [layer.kind for layer in engine.plan.layers] == ["QConv"]
    assert engine.plan.records.quantization.get("wd").scale == tuple(float(v) for v in ws)
    x = r.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)
    xq = np.clip(np.round(x / 0.02), -128, 127) * 0.02
    wq = np.clip(np.round(w / ws[:, None, None, None]), -127, 127) * ws[:, None, None, None]
    ref = torch.nn.functional.conv2d(torch.from_numpy(xq), torch.from_numpy(wq.astype(np.float32)), padding=1).numpy()
    assert np.abs(_run(engine, {"x": x}) - ref).max() < 1e-4


def test_smoothed_gemm_survives_the_engine_file(model, tmp_path):
    """Min-max calibration measures the GEMM input's per-channel maxima and smooths it; the divisors
    live in the layer's attrs, the maxima in the records and the cache's side file."""
    cache = tmp_path / "m.calib"
    engine = _int8(model, _batches(2), calibrator="minmax", calibration_cache=str(cache))
    fc = next(n for n in engine.plan.graph.nodes if n.op.value == "QGemm")
    assert len(fc.attrs.smooth) == 16 and engine.plan.records.quantization.channel_max
    assert (tmp_path / "m.calib.channels.npz").exists()
    engine.save(tmp_path / "m.ember")
    loaded = ember.load(tmp_path / "m.ember")
    x = _batches(1, seed=6)[0]
    assert np.array_equal(_run(engine, x), _run(loaded, x))
    again = _int8(model, None, calibrator="minmax", calibration_cache=str(cache))  # from the cache alone
    assert next(n for n in again.plan.graph.nodes if n.op.value == "QGemm").attrs.smooth == fc.attrs.smooth
