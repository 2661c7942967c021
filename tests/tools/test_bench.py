"""``ember bench`` and ``ember profile`` on the CPU (what CI can run): a small ONNX model, the
peers measured in the same process, the JSON report and the Chrome trace."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ember.backends.tensors import max_relative_error
from ember.cli import main as cli_main
from ember.tools.bench import BenchOptions, bench, format_report
from ember.tools.bench_stats import LatencyStats
from ember.tools.profile import chrome_trace, format_table, profile_engine, to_json


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> str:
    """conv -> relu -> global pool -> flatten -> gemm -> softmax, dynamic batch."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["l"], name="fc", transB=1),
             helper.make_node("Softmax", ["l"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("bench") / "small.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_bench_cpu_reports_latency_peers_and_accuracy(small_onnx):
    r = bench(BenchOptions(small_onnx, device="cpu", precision="fp32", batch=2, iterations=5, warmup=1,
                           peers=("torch", "onnxruntime")))
    assert r["config"]["batch"] == 2 and r["config"]["shapes"] == {"x": [2, 3, 8, 8]}
    c = r["ember"]["compute_ms"]
    assert c["count"] == 5 and 0 < c["min"] <= c["median"] <= c["p99"] <= c["max"]
    assert r["ember"]["throughput"] == pytest.approx(2e3 / c["median"], rel=1e-3)
    assert set(r["peers"]) == {"torch", "onnxruntime"}
    for p in r["peers"].values():
        assert "error" not in p, p
        assert p["ember_speedup"] == pytest.approx(p["compute_ms"]["median"] / c["median"], rel=1e-2)
    assert r["peers"]["torch"]["source"] == "ONNX graph on PyTorch kernels"
    assert r["accuracy"]["max_rel_error"] < 1e-5
    assert r["versions"]["torch"] == torch.__version__ and r["device"]["type"] == "cpu"
    text = format_report(r)
    assert "onnxruntime" in text and "median" in text


def test_bench_cli_writes_json_and_rejects_unknown_peer(small_onnx, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli_main(["bench", small_onnx, "--device", "cpu", "--iterations", "3", "--warmup", "1",
                     "--peers", "none", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["peers"] == {} and report["ember"]["compute_ms"]["count"] == 3
    assert cli_main(["bench", small_onnx, "--device", "cpu", "--peers", "tensorrt"]) == 1
    assert "tensorrt" in capsys.readouterr().err


def test_bench_on_an_engine_file(small_onnx, tmp_path):
    import ember

    engine = ember.build(small_onnx, ember.BuildConfig(device="cpu", shapes={"x": (3, 3, 8, 8)}))
    path = tmp_path / "small.ember"
    engine.save(path)
    r = bench(BenchOptions(str(path), device="cpu", precision="fp32", iterations=3, warmup=1, peers=()))
    assert r["config"]["shapes"] == {"x": [3, 3, 8, 8]} and r["build"]["seconds"] is None


def test_profile_cpu_table_json_and_trace(small_onnx, tmp_path):
    import ember

    engine = ember.build(small_onnx, ember.BuildConfig(device="cpu", shapes={"x": (2, 3, 8, 8)}))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    layers, timeline = profile_engine(engine, feeds, iterations=4, warmup=1)
    assert [lay.name for lay in layers] == [lay.name for lay in engine.plan.layers]
    assert all(len(lay.samples) == 4 and lay.median > 0 for lay in layers)
    data = to_json(layers, "small", "cpu")
    assert sum(x["share"] for x in data["layers"]) == pytest.approx(1.0, abs=1e-3)
    table = format_table(layers)
    assert "Total" in table and layers[0].display_name in table
    trace = chrome_trace(layers, timeline, "cpu")
    starts = [e["ts"] for e in trace["traceEvents"]]
    assert starts == sorted(starts) and all(e["ph"] == "X" for e in trace["traceEvents"])


def test_profile_cli(small_onnx, tmp_path, capsys):
    js, tr = tmp_path / "p.json", tmp_path / "t.json"
    assert cli_main(["profile", small_onnx, "--device", "cpu", "--batch", "2", "--iterations", "2",
                     "--warmup", "1", "--json", str(js), "--trace", str(tr)]) == 0
    assert "Total" in capsys.readouterr().out
    assert json.loads(js.read_text())["layers"] and json.loads(tr.read_text())["traceEvents"]


def test_latency_stats_and_relative_error():
    s = LatencyStats.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.min, s.median, s.max, s.count) == (1.0, 3.0, 100.0, 5)
    assert s.p90 > s.median and s.p99 <= s.max
    assert max_relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
    assert max_relative_error(np.array([np.nan]), np.array([1.0])) == float("inf")
    with pytest.raises(ValueError):
        LatencyStats.of([])
