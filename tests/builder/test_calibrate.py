"""calibrate(): an fp32 CPU engine observed over data, every calibrator, the cache, the errors;
and a small CNN trained on scikit-learn's digits whose simulated INT8 keeps its top-1."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from digitskit import digits_split, train_digits

import ember
from ember.builder.calibration import (
    CalibrationWarning,
    Calibrator,
    calibrate,
    calibration_tensors,
    read_cache,
    unclipped_tensors,
    weight_scales,
)
from ember.builder.calibration.cache import float_to_hex
from ember.builder.calibration.calibrators import QMAX
from ember.builder.progress import BuildProgress
from ember.errors import BuildError, InputError
from ember.ir import DType, Graph, Node, OpType, TensorType


def small_engine() -> ember.Engine:
    """x[2, 4] -> relu(x) -> a; a * x -> y (optimize=False keeps both intermediates)."""
    t = TensorType(DType.FLOAT32, (2, 4))
    nodes = [Node("relu", OpType.RELU, ("x",), ("a",)), Node("mul", OpType.MUL, ("a", "x"), ("y",))]
    graph = Graph("small", nodes, ["x"], ["y"], {"x": t, "a": t, "y": t})
    return ember.build(graph, ember.BuildConfig(device="cpu", optimize=False))


def feeds(n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-2, 2, (2, 4)).astype(np.float32)} for _ in range(n)]


def test_every_float_input_and_layer_output_gets_a_positive_scale():
    engine = small_engine()
    data = feeds()
    assert calibration_tensors(engine.plan.graph) == ["x", "a", "y"]
    plan = calibrate(engine, data, "minmax")
    xs = np.stack([d["x"] for d in data])
    want = {"x": np.abs(xs).max(), "a": np.maximum(xs, 0).max(), "y": (np.maximum(xs, 0) * xs).max()}
    for name, amax in want.items():
        rec = plan.get(name)
        assert rec is not None and rec.source == "calibration:minmax"
        assert rec.scale[0] == pytest.approx(amax / QMAX, rel=1e-6)


def test_a_subset_of_tensors_and_unknown_names():
    engine = small_engine()
    assert list(calibrate(engine, feeds(), tensors=["a"]).tensors) == ["a"]
    with pytest.raises(BuildError, match=r"cannot calibrate tensors \['nope'\]"):
        calibrate(engine, feeds(), tensors=["a", "nope"])


def test_cache_written_then_used_without_data(tmp_path):
    engine = small_engine()
    cache = tmp_path / "small.calib"
    plan = calibrate(engine, feeds(), "entropy", cache=cache)
    lines = cache.read_text().splitlines()
    assert lines[0].endswith("-EntropyCalibration2") and lines[0].startswith("EMBER-")
    assert lines[1:] == [f"{n}: {float_to_hex(plan.get(n).scale[0])}" for n in ("x", "a", "y")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = calibrate(engine, None, "entropy", cache=cache)  # no data: the cache is enough
    assert again == plan


def test_tensorrt_cache_is_used(tmp_path):
    engine = small_engine()
    cache = tmp_path / "trt.cache"
    cache.write_text("TRT-8600-MinMaxCalibration\nx: 3c000000\na: 3c800000\ny: 3d000000\nextra: 3f800000\n")
    plan = calibrate(engine, None, "minmax", cache=cache)
    assert [plan.get(n).scale[0] for n in ("x", "a", "y")] == [2 ** -7, 2 ** -6, 2 ** -5]


def test_cache_of_another_calibrator_or_model_warns_and_calibrates_afresh(tmp_path):
    engine = small_engine()
    cache = tmp_path / "c.calib"
    calibrate(engine, feeds(), "minmax", cache=cache)
    with pytest.warns(CalibrationWarning, match="written by the minmax calibrator, not mse; calibrating afresh"):
        plan = calibrate(engine, feeds(), "mse", cache=cache)
    assert read_cache(cache).calibrator is Calibrator.MSE and plan.get("a").source == "calibration:mse"
    cache.write_text("TRT-8600-MSECalibration\nconv1: 3c000000\n")
    with pytest.warns(CalibrationWarning, match="no scale for 3 of the engine's 3 tensors .*another model"):
        calibrate(engine, feeds(), "mse", cache=cache)
    assert set(read_cache(cache).scales) == {"x", "a", "y"}


def test_errors_no_data_damaged_cache_bad_data_wrong_engine(tmp_path):
    engine = small_engine()
    with pytest.raises(BuildError, match=r"calibration needs data: none was given; give an iterable"):
        calibrate(engine)
    cache = tmp_path / "other.calib"
    cache.write_text("TRT-8600-EntropyCalibration2\nconv1: 3c000000\n")
    with pytest.warns(CalibrationWarning), pytest.raises(BuildError, match="the cache .* cannot be used"):
        calibrate(engine, None, cache=cache)
    cache.write_text("TRT-8600-EntropyCalibration2\nx: zz\n")
    with pytest.raises(BuildError, match="other.calib', line 2"):
        calibrate(engine, feeds(), cache=cache)
    with pytest.raises(InputError, match=r"calibration batch 0: input 'x' has shape \[3, 4\]"):
        calibrate(engine, [{"x": np.zeros((3, 4), np.float32)}])
    with pytest.raises(InputError, match="the calibration data is empty"):
        calibrate(engine, [])
    with pytest.raises(BuildError, match="unknown calibrator"):
        calibrate(engine, feeds(), "kl")
    engine.plan.config = ember.BuildConfig(device="cpu", precision="int8")
    with pytest.raises(BuildError, match="calibration runs an fp32 engine, not a int8 one"):
        calibrate(engine, feeds())
    engine.plan.config = ember.BuildConfig(device="cuda", precision="fp16")
    with pytest.raises(BuildError, match="calibration runs an fp32 engine, not a fp16 one"):
        calibrate(engine, feeds())
    engine.plan.config = ember.BuildConfig(device="cuda")  # a CUDA fp32 config over a CPU program
    with pytest.raises(BuildError, match="calibration on cuda runs the CUDA backend's program"):
        calibrate(engine, feeds())


def test_nan_values_are_ignored_with_a_warning():
    engine = small_engine()
    data = feeds()
    data[0]["x"][0, 0] = np.nan
    with pytest.warns(CalibrationWarning, match="ignored NaN/inf values of 'x' \\(1 NaN/inf\\)"):
        plan = calibrate(engine, data, "minmax")
    assert np.isfinite(plan.get("x").scale[0])


def test_progress_bar_counts_batches():
    engine = small_engine()
    with BuildProgress(enabled=False) as prog:
        calibrate(engine, feeds(5), progress=prog)
    assert [name for name, _ in prog.times] == ["calibrate"]


# ---- a real trained model ------------------------------------------------------------------------
class DigitsCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def digits():
    """A CNN trained on 1200 digits; calibration samples from the training set; the rest held out."""
    x, y, train, held = digits_split()
    torch.manual_seed(0)
    model = train_digits(DigitsCNN(), x, y, train, steps=120, batch=256)
    return model, x[train[:256]], x[held], y[held]


def to_onnx(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def to_engine(model: torch.nn.Module) -> ember.Engine:
    return ember.build(to_onnx(model), ember.BuildConfig(device="cpu"))


def fake_quant(x: np.ndarray, scale: float) -> np.ndarray:
    return (np.clip(np.round(x / scale), -QMAX, QMAX) * scale).astype(np.float32)


@pytest.mark.parametrize("calibrator", list(Calibrator))
def test_digits_cnn_simulated_int8_keeps_top1(digits, calibrator, tmp_path):
    model, calib, held_x, held_y = digits
    engine = to_engine(model)
    with engine.create_context() as ctx:
        fp32_logits = ctx.infer({"input": held_x})["logits"]
    fp32 = fp32_logits.argmax(1)
    assert (fp32 == held_y).mean() > 0.9  # the model did learn
    np.savez(tmp_path / "calib.npz", input=calib)
    plan = calibrate(engine, tmp_path / "calib.npz", calibrator)
    names = calibration_tensors(engine.plan.graph)
    assert set(plan.tensors) == set(names) and len(names) >= 4
    # the classifier's input is calibrated by min-max whatever the calibrator (unclipped_tensors)
    whole = set(unclipped_tensors(engine.plan.graph))
    assert len(whole) == 1 and all(plan.get(n).scale[0] > 0 for n in names)
    assert all(plan.get(n).source == f"calibration:{'minmax' if n in whole else calibrator}" for n in names)

    # INT8 simulated in fp32: per-channel weights of the convs and the gemm, and every activation
    # (graph input, each layer's output, the logits) rounded to its scale's int8 grid
    qmodel = DigitsCNN()
    qmodel.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in (qmodel.conv1, qmodel.conv2, qmodel.fc):
            w = layer.weight.numpy()
            rec = weight_scales(w, axis=0)
            s = np.asarray(rec.scale, np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
            layer.weight.copy_(torch.from_numpy((np.clip(np.round(w / s), -QMAX, QMAX) * s).astype(np.float32)))
    qengine = to_engine(qmodel)
    assert calibration_tensors(qengine.plan.graph) == names
    scales = {n: plan.get(n).scale[0] for n in names}

    # observers must not modify what they see; this test-only one writes the fake-quantized values
    # back, which is safe here (no layer output of this model shares memory with a constant or a
    # feed) and makes every later layer read int8-valued activations
    def quantize(name: str, t: torch.Tensor) -> None:
        if name in scales and name != "input":
            t.copy_(torch.from_numpy(fake_quant(t.numpy(), scales[name])))

    program = qengine.compile()
    with torch.inference_mode():
        out = program.run({"input": torch.from_numpy(fake_quant(held_x, scales["input"]))}, observe=quantize)
    int8 = out["logits"].numpy().argmax(1)
    agreement = (int8 == fp32).mean()
    assert agreement >= 0.99, f"{calibrator}: top-1 agreement {agreement:.3f}"


@pytest.mark.parametrize("calibrator", list(Calibrator))
def test_digits_cnn_int8_engine_keeps_top1(digits, calibrator, tmp_path):
    """The real INT8 engine (oneDNN INT8 convolutions and GEMM, 8-bit activations between them) of
    the trained digits CNN agrees with its fp32 engine on at least 99% of the held-out digits."""
    from ember.backends.cpu.kernels.qlayers import int8_available

    if not int8_available():
        pytest.skip("this PyTorch has no oneDNN INT8 kernels")
    model, calib, held_x, held_y = digits
    onnx_bytes = to_onnx(model)
    np.savez(tmp_path / "calib.npz", input=calib)
    fp32 = ember.build(onnx_bytes, ember.BuildConfig(device="cpu"))
    int8 = ember.build(onnx_bytes, ember.BuildConfig(device="cpu", precision="int8", calibrator=calibrator),
                       calibration_data=tmp_path / "calib.npz")
    assert [layer.kind for layer in int8.plan.layers if layer.precision == "int8"] == ["QConv", "QConv", "QGemm"]
    with fp32.create_context() as ctx:
        ref = ctx.infer({"input": held_x})["logits"].argmax(1)
    with int8.create_context() as ctx:
        got = ctx.infer({"input": held_x})["logits"].argmax(1)
    agreement = (got == ref).mean()
    assert agreement >= 0.99, f"{calibrator}: top-1 agreement {agreement:.3f}"
    assert (got == held_y).mean() > 0.9
