"""``ember debug-precision``: INT8 layers ranked by the error each adds against fp32."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_cli_int8 import int8_cnn

from ember.cli import main
from ember.plan.config import BuildConfig
from ember.tools.debug_precision import debug_precision


def _cnn() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    return int8_cnn()


def _no_int8() -> onnx.ModelProto:
    """x -> Relu -> Softmax: nothing INT8 can run."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("debug_precision")
    onnx.save(_cnn(), d / "cnn.onnx")
    onnx.save(_no_int8(), d / "plain.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    (d / "calib").mkdir()
    np.savez(d / "calib" / "a.npz", x=x[:8])  # two files: two batches
    np.savez(d / "calib" / "b.npz", x=x[8:])
    np.savez(d / "plain.npz", x=np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32))
    return d


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_worst_first_and_json(files, capsys):
    d = files
    out = d / "errors.json"
    code, stdout, err = _run(capsys, "debug-precision", d / "cnn.onnx", "--calib-data", d / "calib",
                             "--calibrator", "minmax", "--json", out, "--top", "2")
    assert code == 0, err
    assert "3 of 5 layers in INT8 (minmax calibration), errors against fp32 on 2 calibration batches" in stdout
    assert "Error each INT8 layer adds on its own, worst first" in stdout
    for column in ("layer", "op", "display name", "rel RMS", "max rel", "cosine"):
        assert column in stdout
    assert "(1 more layer; --top 0 shows all, --json writes all)" in stdout
    assert "whole model, INT8 vs fp32: max relative error " in stdout and "  output logits: max relative" in stdout
    assert stdout.rstrip().endswith(f"wrote {out}")

    report = json.loads(out.read_text())
    assert report["calibrator"] == "minmax" and report["batches"] == 2 and report["cpu"]
    assert (report["int8_layers"], report["layers_total"]) == (3, 5)
    layers = report["layers"]
    assert sorted(e["layer"] for e in layers) == ["conv1", "conv2", "fc"]
    assert [e["rel_rms"] for e in layers] == sorted((e["rel_rms"] for e in layers), reverse=True)
    assert {e["op"] for e in layers} == {"QConv", "QGemm"}
    for e in layers:
        assert 0 < e["rel_rms"] < 0.1 and 0 < e["max_rel"] < 0.2 and 0.99 < e["cosine"] <= 1.0
        assert e["display"].startswith(e["layer"])
    logits = report["outputs"]["logits"]
    assert 0 < logits["max_rel"] == report["max_rel"] < 0.1 and logits["cosine"] > 0.99
    # the table lists the worst layer first
    assert stdout.index(f" {layers[0]['layer']} ") < stdout.index(f" {layers[1]['layer']} ")


def test_python_api_and_batches(files):
    d = files
    report = debug_precision(str(d / "cnn.onnx"), str(d / "calib"), BuildConfig(precision="int8",
                                                                                 calibrator="minmax"), batches=1)
    assert report.batches == 1 and len(report.layers) == 3 and [o.name for o in report.outputs] == ["logits"]


def test_model_without_int8_layers(files, capsys):
    d = files
    code, stdout, err = _run(capsys, "debug-precision", d / "plain.onnx", "--calib-data", d / "plain.npz")
    assert code == 0, err
    assert "0 of " in stdout and "no layer runs in INT8" in stdout
    assert "output y: max relative error 0.00e+00, cosine 1.000000" in stdout


def test_errors(files, capsys, tmp_path):
    d = files
    with pytest.raises(SystemExit) as e:  # --calib-data is required: argparse's usage error
        main(["debug-precision", str(d / "cnn.onnx")])
    assert e.value.code == 2
    capsys.readouterr()
    qdq = tmp_path / "qdq.onnx"
    assert _run(capsys, "quantize", d / "cnn.onnx", "--calib-data", d / "calib", "-o", qdq)[0] == 0
    cases = [
        ([qdq, "--calib-data", d / "calib"], "error: "),
        ([d / "cnn.onnx", "--calib-data", d / "plain.npz"], "error: calibration file"),
        ([d / "cnn.onnx", "--calib-data", d / "calib", "--batches", "0"], "error: --batches 0"),
        ([d / "cnn.onnx", "--calib-data", d / "calib", "--device", "cuda"], "error: ember debug-precision measures"),
    ]
    for argv, start in cases:
        code, stdout, err = _run(capsys, "debug-precision", *argv)
        assert code == 1 and err.startswith(start) and err.count("\n") == 1, (argv, err)
    assert "explicitly quantized" in _run(capsys, "debug-precision", qdq, "--calib-data", d / "calib")[2]
