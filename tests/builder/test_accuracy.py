"""Builds to an accuracy target (``BuildConfig.accuracy_target``, ``ember.builder.accuracy``): the
search for the shortest fp32 prefix with a fake builder whose error falls as layers go to fp32,
the configuration checks, and on a GPU a real fp16 build that must come within the target."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest

import ember
from ember.builder import accuracy
from ember.errors import BuildError
from ember.plan.config import BuildConfig

N_LAYERS = 10
X = np.linspace(-1, 1, 16).reshape(4, 4)


def cnn_model():
    """x[4,3,16,16] -> five 3x3 convs with ReLU -> global average pool: an ONNX model."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "x", 3
    for i in range(5):
        w = (rng.standard_normal((16, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        inits.append(onh.from_array(w, f"w{i}"))
        nodes += [oh.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  oh.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, c_in = f"r{i}", 16
    nodes.append(oh.make_node("GlobalAveragePool", [prev], ["y"], name="pool"))
    graph = oh.make_graph(nodes, "cnn", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 16, 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 16, 1, 1])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


class FakeEngine:
    """An engine whose output error is ``error_of(k)`` for ``k`` leading layers in fp32, and
    ``tail_error_of(k)`` for ``k`` trailing ones (default: trailing layers change nothing)."""

    def __init__(self, config: BuildConfig, error_of, tail_error_of=None) -> None:
        fp32 = {n for n, p in config.layer_precisions.items() if p == "fp32"}
        names = [f"layer{i}" for i in range(N_LAYERS)]
        precision = "fp32" if config.precision == "fp32" else config.precision
        self.k = sum(n in fp32 for n in names)
        promoted = [n for n in names if n in fp32]
        from_end = bool(promoted) and names[N_LAYERS - self.k:] == promoted and names[:self.k] != promoted
        assert from_end or names[:self.k] == promoted, "promotions must be a prefix or a suffix"
        self.plan = SimpleNamespace(
            config=config, build_info={},
            layers=[SimpleNamespace(name=n, precision="fp32" if n in fp32 else precision) for n in names])
        tail = tail_error_of or (lambda k: error_of(0))
        self.error = 0.0 if config.precision == "fp32" else (tail if from_end else error_of)(self.k)

    def create_context(self):
        engine = self

        class Ctx:
            def infer(self, feeds):
                return {"y": feeds["x"] * (1 + engine.error)}  # max relative error = engine.error

        return contextlib.nullcontext(Ctx())


def _search(error_of, target: float, tail_error_of=None):
    config = BuildConfig(device="cuda", precision="fp16", accuracy_target=target)
    builds: list[BuildConfig] = []

    def build_fn(cfg):
        builds.append(cfg)
        return FakeEngine(cfg, error_of, tail_error_of)

    first = FakeEngine(config, error_of, tail_error_of)
    return accuracy.meet_target(first, config, build_fn, {"x": X}), first, builds


def test_the_shortest_prefix_that_meets_the_target_is_kept():
    engine, _, builds = _search(lambda k: 0.02 / (1 + k), 0.006)  # needs k >= 2.33: k = 3
    info = engine.plan.build_info["accuracy"]
    assert engine.k == 3 and info["met"] and info["fp32_layers"] == ["layer0", "layer1", "layer2"]
    # an eighth (1 layer) from each end, the first helped more: doubling from there, then bisection
    assert [(t["fp32_layers"], t.get("from", "")) for t in info["trials"]] == [
        (0, ""), (1, ""), (1, "end"), (2, ""), (4, ""), (3, "")]
    assert info["order"] == "execution"
    assert info["error"] == pytest.approx(0.005) and info["error_before"] == pytest.approx(0.02)
    assert builds[0].precision == "fp32" and not builds[0].tactic_tuning  # the reference
    assert all(b.accuracy_target is None for b in builds)  # the trials do not search again
    assert engine.plan.config.accuracy_target == 0.006
    assert engine.plan.config.layer_precisions == {"layer0": "fp32", "layer1": "fp32", "layer2": "fp32"}


def test_when_the_last_layers_own_the_error_the_search_keeps_them_in_fp32():
    """A post-LN transformer's case: fp32 first layers change nothing, fp32 last layers help."""
    engine, _, _ = _search(lambda k: 0.02, 0.006, tail_error_of=lambda k: 0.02 / (1 + k))
    info = engine.plan.build_info["accuracy"]
    assert info["met"] and info["order"] == "reverse" and info["fp32_layers"] == ["layer9", "layer8", "layer7"]
    assert [(t["fp32_layers"], t.get("from", "")) for t in info["trials"]] == [
        (0, ""), (1, ""), (1, "end"), (2, "end"), (4, "end"), (3, "end")]
    assert info["error"] == pytest.approx(0.005)
    assert "the last 3 layers kept in fp32" in accuracy.describe(info)


def test_an_engine_within_the_target_is_kept_as_it_is():
    engine, first, builds = _search(lambda k: 0.004, 0.01)
    assert engine is first and len(builds) == 1  # only the fp32 reference was built
    assert engine.plan.build_info["accuracy"]["fp32_layers"] == []


def test_a_target_out_of_reach_warns_and_keeps_the_engine():
    with pytest.warns(UserWarning, match="not reached even with every layer in fp32"):
        engine, first, _ = _search(lambda k: 0.05, 0.01)
    info = engine.plan.build_info["accuracy"]
    assert engine is first and not info["met"] and info["trials"][-1]["fp32_layers"] == N_LAYERS


def test_the_target_is_checked_and_only_applies_to_gpu_builds_below_fp32():
    with pytest.raises(BuildError, match="between 0 and 1"):
        BuildConfig(accuracy_target=0)
    with pytest.raises(BuildError, match="between 0 and 1"):
        BuildConfig(accuracy_target=1.5)
    assert accuracy.applies(BuildConfig(device="cpu", precision="bf16", accuracy_target=1e-2))
    assert not accuracy.applies(BuildConfig(device="cpu", precision="fp32", accuracy_target=1e-2))
    assert not accuracy.applies(BuildConfig(device="cuda", precision="fp32", accuracy_target=1e-2))
    assert accuracy.applies(BuildConfig(device="cuda", precision="bf16", accuracy_target=1e-2))
    assert BuildConfig.from_json(BuildConfig(accuracy_target=1e-3).to_json()).accuracy_target == 1e-3


def test_a_cpu_fp32_build_with_a_target_is_an_ordinary_build():
    engine = ember.build(cnn_model(), BuildConfig(device="cpu", precision="fp32", accuracy_target=1e-3),
                         progress=False)
    assert "accuracy" not in engine.plan.build_info and all(layer.precision == "fp32" for layer in engine.plan.layers)


@pytest.mark.cuda
def test_a_gpu_fp16_build_meets_a_tight_target_with_an_fp32_prefix():
    plain = ember.build(cnn_model(), BuildConfig(device="cuda", precision="fp16"), progress=False)
    feeds = accuracy.calibration_inputs(plain)
    ref = ember.build(cnn_model(), BuildConfig(device="cuda", tactic_tuning=False), progress=False)  # as the search's
    ref_out = accuracy._outputs(ref, feeds)
    before = accuracy.max_output_error(accuracy._outputs(plain, feeds), ref_out)
    target = before / 4
    engine = ember.build(cnn_model(), BuildConfig(device="cuda", precision="fp16", accuracy_target=target),
                         progress=False)
    info = engine.plan.build_info["accuracy"]
    after = accuracy.max_output_error(accuracy._outputs(engine, feeds), ref_out)
    promoted = [layer.name for layer in engine.plan.layers if layer.precision == "fp32"]
    assert info["met"] and after <= target * 1.01 + 1e-7
    assert info["error"] == pytest.approx(after, rel=0.01, abs=1e-7)
    assert set(info["fp32_layers"]) <= set(promoted) and info["fp32_layers"]
    assert engine.plan.config.timing_cache is None  # the trials' shared cache was temporary


def test_the_outcome_is_described_in_one_line():
    engine, _, _ = _search(lambda k: 0.02 / (1 + k), 0.006)
    line = accuracy.describe(engine.plan.build_info["accuracy"])
    assert "the first 3 layers kept in fp32" in line and "2.00e-02 -> 5.00e-03" in line
    kept, _, _ = _search(lambda k: 0.004, 0.01)
    assert "met as built" in accuracy.describe(kept.plan.build_info["accuracy"])
    with pytest.warns(UserWarning):
        missed, _, _ = _search(lambda k: 0.05, 0.01)
    assert "not reached" in accuracy.describe(missed.plan.build_info["accuracy"])


def test_the_command_line_takes_a_target():
    import argparse

    from ember.tools.args import add_build_options, config_from_args

    p = argparse.ArgumentParser()
    add_build_options(p)
    cfg = config_from_args(p.parse_args(["--device", "cuda", "--precision", "fp16", "--accuracy-target", "5e-3"]))
    assert cfg.accuracy_target == 5e-3 and cfg.precision == "fp16"
    assert config_from_args(p.parse_args([])).accuracy_target is None
