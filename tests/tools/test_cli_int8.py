"""``ember build --precision int8`` and ``ember inspect`` of INT8 engines, end to end on a tiny CNN."""
from __future__ import annotations

import argparse
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ember.cli import main
from ember.runtime.engine import Engine
from ember.tools.args import add_build_options, config_from_args


def int8_cnn() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: three
    layers INT8 can run, the first writing an 8-bit tensor for the second."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3, scale=0.2), init("b2", 8),
             init("fc_w", 5, 8), init("fc_b", 5)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "int8_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8_cli")
    onnx.save(int8_cnn(), d / "cnn.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", x=x)
    np.savez(d / "wrong_name.npz", y=x)
    np.save(d / "x.npy", x[:4])
    return d, x


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _reference(d, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession((d / "cnn.onnx").as_posix(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_build_options_reach_the_build_config():
    p = argparse.ArgumentParser()
    add_build_options(p)
    args = p.parse_args(["--precision", "int8", "--calibrator", "percentile", "--calib-percentile", "99.9",
                         "--calib-cache", "m.calib", "--calib-data", "calib.npz"])
    cfg = config_from_args(args)
    assert (cfg.precision, cfg.calibrator, cfg.calibration_percentile, cfg.calibration_cache) == \
        ("int8", "percentile", 99.9, "m.calib")
    assert config_from_args(p.parse_args([])).calibrator == "entropy"


def test_build_int8_then_rebuild_from_the_cache(files, capsys):
    d, x = files
    out, cache = d / "cnn.ember", d / "cnn.calib"
    code, stdout, err = _run(capsys, "build", d / "cnn.onnx", "-o", out, "--precision", "int8",
                             "--calib-data", d / "calib.npz", "--calibrator", "minmax", "--calib-cache", cache)
    assert code == 0, err
    assert stdout.startswith(f"built {out}: ")
    assert "int8: 3 of " in stdout and "(calibration:minmax)" in stdout
    assert f"calibration cache {cache} written" in stdout
    assert cache.read_text().splitlines()[0].endswith("MinMaxCalibration")
    engine = Engine.load(out)
    assert sorted(layer.kind for layer in engine.plan.layers if layer.precision == "int8") == \
        ["QConv", "QConv", "QGemm"]
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x[:4]})["logits"]
    want = _reference(d, x[:4])
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05

    # the cache alone is enough for the same model and calibrator: the same scales come back
    again = d / "again.ember"
    code, stdout, err = _run(capsys, "build", d / "cnn.onnx", "-o", again, "--precision", "int8",
                             "--calibrator", "minmax", "--calib-cache", cache)
    assert code == 0, err
    assert "int8: 3 of " in stdout and f"calibration cache {cache} read" in stdout and not err
    first = engine.plan.records.quantization.tensors
    second = Engine.load(again, compile=False).plan.records.quantization.tensors
    assert {k: r.scale for k, r in first.items()} == {k: r.scale for k, r in second.items()}

    # a cache from another calibrator is not used: one warning line, and a fresh calibration
    code, stdout, err = _run(capsys, "build", d / "cnn.onnx", "-o", d / "entropy.ember", "--precision", "int8",
                             "--calib-data", d / "calib.npz", "--calib-cache", cache)
    assert code == 0, err
    assert err.startswith("warning: calibration cache") and err.count("\n") == 1
    assert cache.read_text().splitlines()[0].endswith("EntropyCalibration2")


def test_calib_data_folder(files, capsys, tmp_path):
    d, x = files
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=x[:8])
    np.savez(folder / "b.npz", x=x[8:])
    code, stdout, err = _run(capsys, "build", d / "cnn.onnx", "-o", tmp_path / "f.ember", "--precision", "int8",
                             "--calib-data", folder, "--calibrator", "percentile", "--calib-percentile", "99.9")
    assert code == 0, err
    assert "calibration:percentile" in stdout and (tmp_path / "f.ember").exists()


def test_int8_errors_are_one_line_and_write_nothing(files, capsys, tmp_path):
    d, _ = files
    out, cache = tmp_path / "bad.ember", tmp_path / "bad.calib"
    int8 = ["--precision", "int8", "-o", out]
    damaged = tmp_path / "damaged.calib"
    damaged.write_text("not a header\nx: zz\n")
    cases = [
        ([*int8], "error: calibration needs data"),
        ([*int8, "--calib-cache", cache], "error: calibration needs data"),
        ([*int8, "--calib-data", d / "wrong_name.npz", "--calib-cache", cache], "error: calibration file"),
        ([*int8, "--calib-data", tmp_path / "missing.npz"], "error: calibration data"),
        ([*int8, "--calib-data", d / "x.npy"], "error: calibration file"),
        ([*int8, "--calib-cache", damaged], "error: calibration cache"),
        (["-o", out, "--calib-data", d / "calib.npz"], "error: --calib-data is for INT8 builds"),
        ([*int8, "--calib-data", d / "calib.npz", "--calib-percentile", "0"], "error: calibration_percentile"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*int8, "--device", "cuda", "--calib-data", d / "calib.npz"],
                      "error: an INT8 engine for cuda needs an NVIDIA GPU"))
    for argv, start in cases:
        code, stdout, err = _run(capsys, "build", d / "cnn.onnx", *argv)
        assert code == 1 and err.startswith(start), (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert not out.exists() and not cache.exists(), argv
    code, _, err = _run(capsys, "build", d / "cnn.onnx", *int8, "--calib-data", d / "wrong_name.npz")
    assert "unknown input 'y'" in err and "'x'" in err


def test_qdq_model_builds_int8_without_data(files, capsys):
    d, _ = files
    qdq = d / "cnn_qdq.onnx"
    code, _, err = _run(capsys, "quantize", d / "cnn.onnx", "--calib-data", d / "calib.npz", "--calibrator",
                        "minmax", "-o", qdq)
    assert code == 0, err
    code, stdout, err = _run(capsys, "build", qdq, "-o", d / "qdq.ember")
    assert code == 0, err
    assert "int8: 3 of " in stdout and "(qdq)" in stdout and "calibration cache" not in stdout
    # data given for a Q/DQ model is not needed: said in one warning line
    code, stdout, err = _run(capsys, "build", qdq, "-o", d / "qdq.ember", "--precision", "int8",
                             "--calib-data", d / "calib.npz")
    assert code == 0 and err.startswith("warning: the model is explicitly quantized") and err.count("\n") == 1


def test_inspect_shows_int8_scales(files, capsys):
    d, _ = files
    code, stdout, err = _run(capsys, "inspect", d / "cnn.onnx", "--precision", "int8", "--calib-data",
                             d / "calib.npz", "--calibrator", "minmax")
    assert code == 0, err
    lines = stdout.splitlines()
    assert "precision int8" in lines[0] and any(line.startswith("  quantization: ") for line in lines)
    table = [re.split(r"\s{2,}", line.rstrip()) for line in lines if line[:1] in "#0123456789" and "  " in line]
    header, rows = table[0], {row[1].split(" + ")[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert header[-4:] == ["rule", "input scale/zp", "weight scales", "output scale/zp"]
    conv1, conv2, fc, pool = rows["conv1"], rows["conv2"], rows["fc"], rows["pool"]
    assert [r["kind"] for r in (conv1, conv2, fc)] == ["QConv", "QConv", "QGemm"]
    assert all(r["precision"] == "int8" for r in (conv1, conv2, fc)) and pool["precision"] == "fp32"
    assert (conv1["weight scales"], conv2["weight scales"], fc["weight scales"]) == \
        ("8 per-channel", "8 per-channel", "5 per-channel")
    # conv1 writes an 8-bit tensor for conv2: its output scale/zp is conv2's input scale/zp
    assert re.search(r"r1:u?int8\[", conv1["outputs"])
    assert re.fullmatch(r"[0-9.e-]+ / \d+ \(u?int8\)", conv1["output scale/zp"])
    assert conv1["output scale/zp"] == conv2["input scale/zp"]
    assert re.fullmatch(r"[0-9.e-]+ / \d+ \(u?int8\)", conv1["input scale/zp"])
    # fp32 layers that read float tensors get no scales
    assert (pool["input scale/zp"], pool["weight scales"], pool["output scale/zp"]) == ("-", "-", "-")
