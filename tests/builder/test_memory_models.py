"""The memory plan on real exported models: checked for overlaps, and actually reusing memory."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import zoo
from ember.plan.memory import check_no_overlap, liveness


@pytest.fixture(scope="module")
def bert_tiny_dynamic():
    return zoo.export_onnx("bert-tiny", batch=1, dynamic_batch=True)


@pytest.fixture(scope="module")
def mobilenet_v3():
    return zoo.export_onnx("mobilenet-v3-small", batch=1)


def _check_plan(engine) -> None:
    plan = engine.plan
    check_no_overlap(plan.memory)
    live = liveness(plan.graph)
    assert set(live) == set(plan.memory.tensors)
    for name, t in plan.memory.tensors.items():
        assert (t.first, t.last) == live[name]
    assert 0 < plan.memory.arena_bytes < plan.memory.sum_bytes


def test_mobilenet_plan(mobilenet_v3):
    engine = ember.build(str(mobilenet_v3))
    _check_plan(engine)
    assert not engine.plan.memory.dynamic
    assert engine.plan.memory.arena_bytes * 3 < engine.plan.memory.sum_bytes


def test_bert_profile_plan_is_sized_at_max(bert_tiny_dynamic):
    names = [i.name for i in zoo.get("bert-tiny").inputs]
    cfg = ember.BuildConfig(profiles={n: ((1, 128), (2, 128), (4, 128)) for n in names})
    engine = ember.build(str(bert_tiny_dynamic), cfg)
    _check_plan(engine)
    out = engine.plan.graph.outputs[0]
    hidden = engine.plan.graph.types[out].shape[-1]
    assert engine.plan.memory.tensors[out].size == 4 * 128 * hidden * 4
    feeds = zoo.sample_inputs("bert-tiny", batch=3)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(bert_tiny_dynamic), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)[out]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
