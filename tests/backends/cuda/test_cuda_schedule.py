"""The CUDA program's static schedule (``execution.schedule``, CPU-only logic): host placement of
shape arithmetic, stream assignment of parallel branches, lifetimes, and which layers can be
captured."""
from __future__ import annotations

import torch

from ember.backends.cuda.exec.schedule import VALUE_TO_DEVICE, plan_steps
from ember.backends.cuda.exec.streams import assign_streams

from cuda_graphs import host_to_device_graph, inception_graph, reshape_chain_graph


def _steps(g):
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    return {s.node.name: s for s in plan_steps(g, {}, consts, consts)}


def test_shape_arithmetic_runs_on_host_and_stays_capturable():
    steps = _steps(reshape_chain_graph())
    assert {n for n, s in steps.items() if s.on_host} == {"shape", "g0", "unsq", "cat"}
    assert not steps["reshape"].on_host and not steps["relu"].on_host
    assert all(s.capturable for s in steps.values())


def test_host_value_used_as_data_is_marked_uncapturable():
    steps = _steps(host_to_device_graph())
    assert steps["cast"].on_host
    add = steps["add"]
    assert not add.capturable and "host" in add.reason
    assert add.args[1].kind == VALUE_TO_DEVICE


def test_inception_branches_get_their_own_streams():
    steps = _steps(inception_graph())
    branch_heads = [steps[n].stream for n in ("b1", "b2a", "b3a", "b4p")]
    assert len(set(branch_heads)) == 4
    assert steps["b2b"].stream == steps["b2a"].stream  # a chain continues its stream
    cat = steps["cat"]
    assert len(cat.waits) == 3  # joins the three branches not on its own stream
    assert all(steps[n].records_event for n in ("b1", "b2b", "b3b", "b4") if steps[n].stream != cat.stream)


def test_values_are_released_after_their_last_reader():
    steps = _steps(inception_graph())
    freed = {name: s.node.name for s in steps.values() for name in s.frees}
    assert freed["s"] == "b4p" and freed["cat"] == "res"
    assert "prob" not in freed and "logits" not in freed and "x" not in freed


def test_stream_count_is_capped_round_robin():
    plan = assign_streams([[]] + [[0]] * 6, max_streams=3)
    assert max(plan.stream) == 2 and plan.num_streams == 3
    single = assign_streams([[], [0], [0], [1, 2]], max_streams=1)
    assert single.stream == [0, 0, 0, 0] and single.event_steps == frozenset()
