"""Tactic selection with the CUDA tactic timer (CPU-side logic, fake clock): the fastest tactic
that meets accuracy wins, failing or inaccurate tactics never do, and the timing cache is keyed
by device so a warm cache skips timing and another device's cache is ignored with a warning."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext
from ember.backends.cuda.tuning import CudaTacticTimer, relative_error
from ember.builder.tactics import TacticSelector, TimingCache, layer_signature
from ember.ir import OpType
from ember.ops.attrs import SoftmaxAttrs

from cuda_graphs import one_node

FAKE_MS = {"reference": 3.0, "fast_wrong": 0.5, "good": 1.0, "raises": 0.1, "slow": 9.0}


class FakeBackend:
    """Softmax with tactics of known speed; one is fast but wrong, one cannot run."""

    name = "fake"

    def __init__(self):
        self.compiled: list[str] = []

    def tactics(self, node, graph):
        return ["reference", "fast_wrong", "good", "raises", "slow"]

    def compile_node(self, node, ctx: CompileContext):
        self.compiled.append(ctx.tactic)
        if ctx.tactic == "raises":
            raise RuntimeError("this tactic needs a GPU feature")
        if ctx.tactic == "fast_wrong":
            return lambda ins: [torch.softmax(ins[0], -1) * 1.1]
        return lambda ins: [torch.softmax(ins[0], -1)]


def _measure_by_tactic(backend):
    return lambda fn: FAKE_MS[backend.compiled[-1]]


def _node():
    g = one_node(OpType.SOFTMAX, SoftmaxAttrs(-1), [("x", (4, 33))])
    return g.nodes[0], g


def test_fastest_accurate_tactic_wins():
    node, g = _node()
    backend = FakeBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), measure=_measure_by_tactic(backend))
    choice = TacticSelector(timer).select(node, g, backend.tactics(node, g), "fp16")
    assert choice.tactic == "good"
    assert math.isinf(choice.timings["fast_wrong"]) and math.isinf(choice.timings["raises"])
    assert "relative error" in timer.rejected[(node.name, "fast_wrong")]
    assert "GPU feature" in timer.rejected[(node.name, "raises")]


def test_warm_cache_skips_timing_and_other_device_is_ignored(tmp_path):
    node, g = _node()
    path = tmp_path / "timing.json"
    backend = FakeBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), measure=_measure_by_tactic(backend))
    cache = TimingCache.open(path, "cuda:H100:sm9.0")
    assert TacticSelector(timer, cache).select(node, g, backend.tactics(node, g), "fp16").tactic == "good"
    cache.save()
    data = json.loads(path.read_text())
    assert data["device_key"] == "cuda:H100:sm9.0"
    assert layer_signature(node, g, "fp16") in data["entries"]

    fresh = FakeBackend()
    warm = TimingCache.open(path, "cuda:H100:sm9.0")
    timer2 = CudaTacticTimer(fresh, {}, torch.device("cpu"), measure=_measure_by_tactic(fresh))
    choice = TacticSelector(timer2, warm).select(node, g, fresh.tactics(node, g), "fp16")
    assert choice.cached and choice.tactic == "good" and fresh.compiled == []

    with pytest.warns(UserWarning, match="another device"):
        other = TimingCache.open(path, "cuda:A100:sm8.0")
    assert other.entries == {}


def test_signature_depends_on_precision_and_shape():
    node, g = _node()
    g2 = one_node(OpType.SOFTMAX, SoftmaxAttrs(-1), [("x", (8, 33))])
    assert layer_signature(node, g, "fp16") != layer_signature(node, g, "fp32")
    assert layer_signature(node, g, "fp16") != layer_signature(g2.nodes[0], g2, "fp16")


def test_relative_error_flags_nan_and_shape_mismatch():
    a = torch.ones(3)
    assert relative_error(a, a) == 0.0
    assert math.isinf(relative_error(torch.tensor([1.0, float("nan"), 1.0]), a))
    assert math.isinf(relative_error(torch.ones(4), a))
    assert relative_error(torch.from_numpy(np.array([1.0, 1.0, 1.01])), a) == pytest.approx(0.01 / 3 ** 0.5)
