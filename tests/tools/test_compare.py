"""``ember compare``: Ember vs ONNX Runtime, per output and per layer, as a function and a command."""
import argparse
import dataclasses

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from ember.backends.cpu import registry
from ember.ir.optype import OpType
from ember.tools import compare as cmp


def small_model(scale=1.0):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * scale).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "emb")]
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Sigmoid", ["r"], ["s"], name="sig"),
             oh.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
             oh.make_node("Gather", ["emb", "ids"], ["e"], name="embed", axis=0)]
    graph = oh.make_graph(nodes, "small", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5]),
                                           oh.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
                          [oh.make_tensor_value_info("g", TensorProto.FLOAT, None),
                           oh.make_tensor_value_info("e", TensorProto.FLOAT, None)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_matching_engine_passes_with_random_inputs_in_range():
    report = cmp.compare(small_model())
    assert report.passed and report.first_failure is None
    assert [d.name for d in report.outputs] == ["g", "e"]
    assert report.outputs[0].layer == "gap"
    assert report.rtol == 1e-4 and report.precision == "fp32"
    assert report.inputs["ids"] == ((1, 6), "int64")
    assert "PASSED" in report.format()


def test_given_inputs_are_used_and_unknown_ones_refused():
    ids = np.array([[9, 0, 1, 2, 3, 4]], np.int64)
    report = cmp.compare(small_model(), inputs={"ids": ids})
    assert report.passed
    from ember.errors import InputError
    with pytest.raises(InputError, match="nope"):
        cmp.compare(small_model(), inputs={"nope": ids})


def test_other_engine_fails_and_names_the_output(tmp_path):
    import ember
    engine = ember.build(small_model(scale=1.5), ember.BuildConfig())
    path = tmp_path / "other.ember"
    engine.save(path)
    report = cmp.compare(small_model(), engine=str(path))
    assert not report.passed
    assert report.first_failure.name == "g" and [d.passed for d in report.outputs] == [False, True]
    assert "FAILED" in report.format()


def test_per_layer_names_the_first_wrong_layer(monkeypatch):
    table = registry.CPU_KERNELS.table(OpType.SIGMOID)
    right = table[registry.ATEN]

    def wrong(node, ctx):
        kernel = right.factory(node, ctx)
        return lambda inputs: [kernel(inputs)[0] * 1.01]

    monkeypatch.setitem(table, registry.ATEN, dataclasses.replace(right, factory=wrong))
    report = cmp.compare(small_model(), per_layer=True)
    assert not report.passed
    names = [d.name for d in report.layers]
    assert "r" in names and "s" in names
    assert report.first_failure.name == "s" and report.first_failure.layer == "sig"
    assert all(d.passed for d in report.layers if d.name == "r")


def test_diff_tolerances():
    ref = np.array([1.0, -2.0, 0.0], np.float32)
    assert cmp.diff("t", ref + 1e-5, ref, 1e-4, 1e-6).passed
    assert not cmp.diff("t", ref + 1e-3, ref, 1e-4, 1e-6).passed
    assert not cmp.diff("t", ref[:2], ref, 1e-4, 1e-6).passed
    assert not cmp.diff("t", np.array([1, 2]), np.array([1, 3]), 1e-4, 1e-6).passed
    nan = np.array([np.nan, 1.0])
    assert not cmp.diff("t", np.array([0.0, 1.0]), nan, 1e-4, 1e-6).passed
    assert cmp.diff("t", nan, nan, 1e-4, 1e-6).passed


def test_command_exit_status(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(small_model().SerializeToString())
    parser = argparse.ArgumentParser()
    cmp.add_arguments(parser)
    args = parser.parse_args([str(model_path), "--per-layer", "--json", str(tmp_path / "r.json")])
    assert cmp.run(args) == 0
    assert "PASSED" in capsys.readouterr().out and (tmp_path / "r.json").exists()
    import ember
    other = tmp_path / "other.ember"
    ember.build(small_model(scale=2.0), ember.BuildConfig()).save(other)
    assert cmp.run(parser.parse_args([str(model_path), "--engine", str(other), "--seed", "3"])) == 1
    assert "FAILED: first out of tolerance" in capsys.readouterr().out
