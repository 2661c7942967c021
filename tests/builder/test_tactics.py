"""Tactic selection and the timing cache."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ember.backends.cpu import CPUBackend
from ember.backends.timing import wall_clock_timer
from ember.builder.tactics import TacticSelector, TimingCache, layer_signature
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records


def _graph(n=4) -> Graph:
    t = TensorType(DType.FLOAT32, (n, n))
    node = Node("mm", OpType.MATMUL, ("a", "b"), ("c",))
    return Graph("g", [node], ["a"], ["c"], {"a": t, "b": t, "c": t}, {"b": np.eye(n, dtype=np.float32)})


def test_fastest_candidate_wins_and_ties_keep_the_default():
    g = _graph()
    times = {"slow": 3.0, "fast": 1.0, "broken": math.inf}
    sel = TacticSelector(timer=lambda node, graph, tactic, precision: times[tactic])
    assert sel.select(g.nodes[0], g, ["slow", "fast", "broken"], "fp32").tactic == "fast"
    sel = TacticSelector(timer=lambda *a: 1.0)
    assert sel.select(g.nodes[0], g, ["first", "second"], "fp32").tactic == "first"
    sel = TacticSelector(timer=lambda *a: math.inf)
    assert sel.select(g.nodes[0], g, ["first", "second"], "fp32").tactic == "first"


def test_a_near_tie_keeps_the_default_under_a_margin():
    """``margin`` (the CPU's ``switch_margin``): another candidate must beat the default by both the
    fraction and the milliseconds; a default that failed loses to anything that ran."""
    g = _graph()

    def pick(times, margin=(0.05, 0.02)):
        sel = TacticSelector(timer=lambda node, graph, tactic, precision: times[tactic], margin=margin)
        return sel.select(g.nodes[0], g, list(times), "fp32").tactic

    assert pick({"default": 1.00, "other": 0.96}) == "default"  # 4%: noise
    assert pick({"default": 1.00, "other": 0.90}) == "other"
    assert pick({"default": 0.030, "other": 0.015}) == "default"  # half, but 15 us
    assert pick({"default": 0.030, "other": 0.015}, margin=(0.0, 0.0)) == "other"
    assert pick({"default": math.inf, "other": 5.0}) == "other"


def test_without_timer_or_with_one_candidate_nothing_is_timed():
    g = _graph()
    calls = []
    sel = TacticSelector(timer=lambda *a: calls.append(a) or 1.0)
    assert sel.select(g.nodes[0], g, ["only"], "fp32").tactic == "only"
    assert TacticSelector().select(g.nodes[0], g, ["a", "b"], "fp32").tactic == "a"
    assert calls == []


def test_only_the_named_op_types_are_timed():
    """``only`` (the CPU's ``always_timed`` without ``tune_cpu``): other layers keep the default
    without a call to the timer; identical layers share one timing through the cache."""
    g = _graph()
    calls = []
    times = {"a": 2.0, "b": 1.0}
    sel = TacticSelector(timer=lambda node, graph, tactic, precision: calls.append(tactic) or times[tactic],
                         only={OpType.GEMM})
    assert sel.select(g.nodes[0], g, ["a", "b"], "fp32").tactic == "a" and calls == []
    memo = TimingCache("dev")
    sel = TacticSelector(timer=lambda node, graph, tactic, precision: calls.append(tactic) or times[tactic],
                         cache=memo, only={OpType.MATMUL})
    assert sel.select(g.nodes[0], g, ["a", "b"], "fp32").tactic == "b" and calls == ["a", "b"]
    twin = _graph()
    again = sel.select(twin.nodes[0], twin, ["a", "b"], "fp32")
    assert again.tactic == "b" and again.cached and calls == ["a", "b"]


def test_a_fallback_is_timed_and_chosen_only_when_every_other_candidate_failed(tmp_path):
    """A fallback tactic (a backend's ``fallback_tactics``, e.g. CUDA's ``generic``) never wins on
    timing against working kernels, and stands in for them where they all fail; the timing cache
    keeps what was timed, so a rebuild times nothing."""
    g = _graph()
    calls: list[str] = []

    def timer(times):
        return lambda node, graph, tactic, precision: calls.append(tactic) or times[tactic]

    fast_fallback = {"a": 2.0, "b": 3.0, "fb": 1.0}
    choice = TacticSelector(timer(fast_fallback)).select(g.nodes[0], g, ["a", "b", "fb"], "fp32", {"fb"})
    assert choice.tactic == "a" and calls == ["a", "b"] and "fb" not in choice.timings
    calls.clear()
    cache = TimingCache.open(tmp_path / "cache.json", "cpu:test")
    failing = {"a": math.inf, "b": math.inf, "fb": 5.0}
    choice = TacticSelector(timer(failing), cache).select(g.nodes[0], g, ["a", "b", "fb"], "fp32", {"fb"})
    assert choice.tactic == "fb" and calls == ["a", "b", "fb"] and not choice.cached
    calls.clear()
    again = TacticSelector(timer(failing), cache).select(g.nodes[0], g, ["a", "b", "fb"], "fp32", {"fb"})
    assert again.tactic == "fb" and again.cached and calls == []
    everything_fails = {"a": math.inf, "fb": math.inf}
    assert TacticSelector(timer(everything_fails)).select(g.nodes[0], g, ["a", "fb"], "fp32", {"fb"}).tactic == "a"


def test_timing_cache_spares_the_second_build(tmp_path):
    g = _graph()
    path = tmp_path / "cache.json"
    calls = []

    def timer(node, graph, tactic, precision):
        calls.append(tactic)
        return {"x": 2.0, "y": 1.0}[tactic]

    cache = TimingCache.open(path, "cpu:test")
    assert TacticSelector(timer, cache).select(g.nodes[0], g, ["x", "y"], "fp32").tactic == "y"
    cache.save()
    assert calls == ["x", "y"]
    again = TimingCache.open(path, "cpu:test")
    choice = TacticSelector(timer, again).select(g.nodes[0], g, ["x", "y"], "fp32")
    assert choice.tactic == "y" and choice.cached and calls == ["x", "y"] and again.hits == 1
    with pytest.warns(UserWarning, match="written on another device"):
        other_device = TimingCache.open(path, "cuda:H100")
    assert other_device.entries == {}
    assert json.loads(path.read_text())["device_key"] == "cpu:test"


class _PreparingTimer:
    """A timer with ``precompile``: records what it was handed before any timing, then times."""

    def __init__(self, times):
        self.times, self.jobs, self.timed = times, [], []

    def precompile(self, graph, jobs):
        self.jobs.append([(node.name, precision, list(tactics)) for node, precision, tactics in jobs])

    def __call__(self, node, graph, tactic, precision):
        self.timed.append(tactic)
        return self.times[tactic]


def test_precompile_hands_the_timer_exactly_what_select_will_time(tmp_path):
    """``precompile`` passes every layer's not-yet-cached first-timed candidates, once, and skips
    single-candidate layers, fallbacks and layers the timing cache answers."""
    g = _graph()
    node = g.nodes[0]
    other = Node("mm2", OpType.MATMUL, ("c", "b"), ("d",))
    g2 = Graph("g", [node, other], ["a"], ["d"], dict(g.types, d=g.types["c"]), g.constants)
    timer = _PreparingTimer({"a": 2.0, "b": 1.0, "fb": 0.5})
    cache = TimingCache.open(tmp_path / "cache.json", "cpu:test")
    sel = TacticSelector(timer, cache)
    layers = [(node, ["a", "b", "fb"], Precision.FP32, {"fb"}), (other, ["only"], Precision.FP32, set())]
    sel.precompile(g2, layers)
    assert timer.jobs == [[("mm", Precision.FP32, ["a", "b"])]] and timer.timed == []
    assert sel.select(node, g2, ["a", "b", "fb"], Precision.FP32, {"fb"}).tactic == "b"
    assert timer.timed == ["a", "b"]
    sel.precompile(g2, layers)  # all cached now: nothing to prepare, and the timer is not called
    assert len(timer.jobs) == 1


def test_precompile_is_skipped_for_a_timer_without_it():
    g = _graph()
    calls = []
    sel = TacticSelector(timer=lambda *a: calls.append(a) or 1.0)
    sel.precompile(g, [(g.nodes[0], ["a", "b"], Precision.FP32, set())])
    TacticSelector().precompile(g, [(g.nodes[0], ["a", "b"], Precision.FP32, set())])
    assert calls == []


def test_lower_compiles_ahead_as_a_build_phase_of_its_own_before_any_timing():
    """``lower`` hands a timer with ``precompile`` every layer to prepare before the first timing,
    as the build's "compile kernels" phase; a build whose timer has none shows no such phase."""
    from ember.builder.lower import lower
    from ember.builder.progress import BuildProgress

    class Backend:
        fallback_tactics: frozenset = frozenset()
        switch_margin = (0.0, 0.0)

        def __init__(self, timer):
            self.timer = timer

        def supports(self, node):
            return True

        def tactics(self, node, graph, records=None):
            return ["a", "b"]

        def make_timer(self, constants, device, records, config):
            return self.timer

        def effective_precision(self, node, tactic, precision):
            return precision

    g = _graph()
    config = BuildConfig(device="cpu", tune_cpu=True)
    timer = _PreparingTimer({"a": 2.0, "b": 1.0})
    with BuildProgress(enabled=False) as progress:
        layers, info = lower(g, Records(), config, Backend(timer), "cpu:test", progress)
    assert timer.jobs == [[("mm", Precision.FP32, ["a", "b"])]] and timer.timed == ["a", "b"]
    assert layers[0].tactic == "b" and [name for name, _ in progress.times] == ["compile kernels", "tactics"]
    plain = Backend(lambda node, graph, tactic, precision: {"a": 2.0, "b": 1.0}[tactic])
    with BuildProgress(enabled=False) as progress:
        layers, _ = lower(g, Records(), config, plain, "cpu:test", progress)
    assert layers[0].tactic == "b" and [name for name, _ in progress.times] == ["tactics"]


def test_signature_depends_on_types_and_precision():
    a, b = _graph(4), _graph(8)
    sig = layer_signature(a.nodes[0], a, Records(), Precision("fp32"))
    assert sig != layer_signature(b.nodes[0], b, Records(), Precision("fp32"))
    assert sig != layer_signature(a.nodes[0], a, Records(), Precision("fp16"))
    assert sig == layer_signature(a.nodes[0], _graph(4), Records(), Precision("fp32"))


def test_kernel_timer_times_real_kernels():
    g = _graph(16)
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    timer = wall_clock_timer(CPUBackend(), consts, torch.device("cpu"), Records(), BuildConfig(), warmup=1, reps=2)
    ms = timer(g.nodes[0], g, "aten", "fp32")
    assert 0 < ms < 1000
    assert timer(g.nodes[0], g, "no-such-tactic", "fp32") == math.inf
    dyn = g.copy(types={**g.types, "a": TensorType(DType.FLOAT32, ("n", 16))})
    assert timer(dyn.nodes[0], dyn, "aten", "fp32") == math.inf


def test_a_layer_is_labelled_with_the_precision_its_tactic_computes(monkeypatch):
    """An FP8 layer whose fastest tactic is an fp16 kernel is an fp16 layer in the plan (and the
    build says how many fell back), so that ``ember inspect`` and the build summary tell what
    runs: on the H100 all 49 FP8-planned GEMMs of BERT-base chose cuBLAS fp16 and were listed as
    FP8."""
    from ember.backends.cuda import CUDABackend
    from ember.builder import lower as lower_mod
    from ember.plan.records import PrecisionPlan

    cuda = CUDABackend()
    node = Node("fc", OpType.GEMM, ("x", "w"), ("y",))
    assert cuda.effective_precision(node, "cublas", Precision.FP8) is Precision.FP16
    assert cuda.effective_precision(node, "cublaslt_fp8", Precision.FP8) is Precision.FP8
    assert cuda.effective_precision(node, "cublas", Precision.FP16) is Precision.FP16
    assert CPUBackend().effective_precision(node, "aten", Precision.INT8) is Precision.INT8

    class Fp16Wins(CPUBackend):  # a backend whose one candidate computes fp16 in any layer
        def tactics(self, node, graph, records=None):
            return ["half"]

        def effective_precision(self, node, tactic, precision):
            return Precision.FP16 if precision is Precision.INT8 else precision

    g = _graph()
    records = Records(precision=PrecisionPlan({"mm": Precision.INT8}))
    layers, info = lower_mod.lower(g, records, BuildConfig(device="cpu", tactic_tuning=False), Fp16Wins(), "cpu:test")
    assert layers[0].precision is Precision.FP16 and info["precision_fallbacks"] == {"int8->fp16": 1}
    layers, info = lower_mod.lower(g, Records(), BuildConfig(device="cpu", tactic_tuning=False), Fp16Wins(), "cpu:test")
    assert layers[0].precision is Precision.FP32 and "precision_fallbacks" not in info


def test_the_build_summary_counts_quantized_layers_and_those_that_ran_fp16():
    from types import SimpleNamespace

    from ember.plan.plan import Layer
    from ember.tools.build import quantized_text

    def engine(precisions, fallbacks):
        layers = [Layer(f"l{i}", "Gemm", (), (), "t", p) for i, p in enumerate(precisions)]
        info = {"precision_fallbacks": fallbacks} if fallbacks else {}
        plan = SimpleNamespace(layers=layers, build_info=info, records=Records(),
                               config=SimpleNamespace(precision="fp8"))
        return SimpleNamespace(plan=plan)

    text = quantized_text(engine([Precision.FP8, Precision.FP16, Precision.FP16], {"fp8->fp16": 1}))
    assert text.startswith("fp8: 1 of 3 layers") and "1 layers planned fp8 run fp16" in text
    text = quantized_text(engine([Precision.FP16, Precision.FP16], {"fp8->fp16": 2}))
    assert text.startswith("fp8: 0 of 2 layers") and "2 layers planned fp8 run fp16" in text
    assert quantized_text(engine([Precision.FP16], {})).startswith("fp8: no layer runs in fp8")
