"""The zoo's exporter choice (``export_onnx(..., exporter=)``) and ``bench/cpu.py --exporter``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

from ember import zoo
from ember.errors import ModelLoadError
from ember.frontends.onnx import import_onnx

ROOT = Path(__file__).resolve().parents[2]


def test_exporter_dynamo_is_the_dynamo_flag_and_writes_the_asked_opset():
    by_name = zoo.export_onnx("bert-tiny", exporter="dynamo", progress=False)
    assert by_name == zoo.export_onnx("bert-tiny", dynamo=True, progress=False)  # one cache entry
    native = onnx.load(str(zoo.export_onnx("bert-tiny", exporter="dynamo", opset=20, progress=False)))
    assert native.opset_import[0].version == 20
    assert {"LayerNormalization", "Gelu"} <= {n.op_type for n in native.graph.node}  # opset 17+/20 ops
    classic = onnx.load(str(zoo.export_onnx("bert-tiny", exporter="torchscript", progress=False)))
    assert classic.opset_import[0].version == 17 and "Gelu" not in {n.op_type for n in classic.graph.node}
    assert import_onnx(native).outputs == import_onnx(classic).outputs  # same output names


@pytest.mark.parametrize("kwargs, message", [
    ({"exporter": "onnxscript"}, "exporter 'onnxscript' is not one of torchscript, dynamo"),
    ({"exporter": "torchscript", "dynamo": True}, "pass only exporter="),
])
def test_a_wrong_exporter_is_refused_by_name(kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        zoo.export_onnx("bert-tiny", **kwargs)


@pytest.fixture(scope="module")
def bench_cpu():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "bench" / "cpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_cpu_takes_both_exporters(bench_cpu, capsys):
    args = bench_cpu.parse(["--exporter", "torchscript,dynamo", "--models", "bert-tiny"])
    assert args.exporter == ["torchscript", "dynamo"]
    assert [bench_cpu.exporter_opset(e, args) for e in args.exporter] == [17, 20]
    with pytest.raises(SystemExit):
        bench_cpu.parse(["--exporter", "tf2onnx"])
    assert "choose from torchscript, dynamo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_cpu.parse(["--exporter", "dynamo", "--dynamo-opset", "17"])


def test_bench_cpu_markdown_names_each_rows_exporter(bench_cpu):
    lat = {"ember": {"median": 2.0}, "onnxruntime": {"median": 3.0}}
    rows = [{"model": "bert-tiny", "batch": 1, "exporter": e, "opset": o, "latency_ms": lat,
             "max_rel_error_vs_ort": {"ember": 1e-6}, "x_ort": {"ember": {"median": 1.5, "min": 1.5, "max": 1.5}}}
            for e, o in (("torchscript", 17), ("dynamo", 20))]
    machine = {"date": "2026-12-06", "cpu": "cpu", "isa": [], "cores": 2, "threads": 2,
               "versions": {"ember": "0", "torch": "0", "onnxruntime": "0"}}
    text = bench_cpu.markdown({"machine": machine, "iterations": 3, "warmup": 1, "rows": rows})
    assert "| exporter |" in text
    assert "| bert-tiny | 1 | torchscript (opset 17) | fp32 |" in text
    assert "| bert-tiny | 1 | dynamo (opset 20) | fp32 |" in text


def test_bench_cpu_takes_ratios_within_each_round(bench_cpu, monkeypatch):
    """``_timed_rounds`` keeps each round's median per runtime beside every run's time, so
    ``bench_one`` can take ORT / Ember within each round. Timings are faked (no clock): the machine
    gets 3x slower from round 3 on, for both runtimes alike, and each round's ratio stays 1.5."""
    blocks: list[tuple[str, int]] = []

    def fake_time_ms(runner, feeds, warmup, count, max_s):
        blocks.append((runner, count))
        slow = 3.0 if len(blocks) > 4 else 1.0  # two runtimes a round: rounds 3 and 4 are slow
        base = {"ember": 2.0, "onnxruntime": 3.0}[runner]
        return [base * slow + 0.01 * i for i in range(count)]

    monkeypatch.setattr(bench_cpu, "time_ms", fake_time_ms)
    args = bench_cpu.parse(["--iterations", "12", "--rounds", "4", "--warmup", "1", "--gap-ms", "0"])
    times, per_round = bench_cpu._timed_rounds({"ember": "ember", "onnxruntime": "onnxruntime"}, {}, args)
    assert [len(v) for v in times.values()] == [12, 12] and [c for _, c in blocks] == [3] * 8
    assert per_round["ember"] == pytest.approx([2.01, 2.01, 6.01, 6.01])
    assert per_round["onnxruntime"] == pytest.approx([3.01, 3.01, 9.01, 9.01])
    ratios = [o / e for o, e in zip(per_round["onnxruntime"], per_round["ember"])]
    assert ratios == pytest.approx([1.5] * 4, rel=1e-2)
