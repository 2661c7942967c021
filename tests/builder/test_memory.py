"""The static memory plan: liveness, the allocator, and the no-overlap property."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.errors import BuildError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.plan.memory import ALIGNMENT, MemoryPlan, TensorAlloc, allocate, check_no_overlap, liveness, plan_memory


def _chain_graph() -> Graph:
    """x -> relu a -> relu b -> add(a, b) c -> relu d (output); w is a constant."""
    f = lambda *s: TensorType(DType.FLOAT32, s)  # noqa: E731
    nodes = [
        Node("n0", OpType.RELU, ("x",), ("a",)),
        Node("n1", OpType.RELU, ("a",), ("b",)),
        Node("n2", OpType.ADD, ("a", "b"), ("c",)),
        Node("n3", OpType.MUL, ("c", "w"), ("d",)),
    ]
    types = {"x": f(4, 8), "w": f(8), "a": f(4, 8), "b": f(4, 8), "c": f(4, 8), "d": f(4, 8)}
    return Graph("chain", nodes, ["x"], ["d"], types, {"w": np.ones(8, np.float32)})


def test_liveness_follows_execution_order():
    live = liveness(_chain_graph())
    assert live == {"a": (0, 2), "b": (1, 2), "c": (2, 3), "d": (3, 4)}  # d is an output: to the end


def test_inputs_and_constants_are_not_planned():
    plan = plan_memory(_chain_graph())
    assert set(plan.tensors) == {"a", "b", "c", "d"}
    check_no_overlap(plan)


def test_plan_reuses_dead_tensors():
    plan = plan_memory(_chain_graph())
    # a, b, c are alive together at layer 2; d can reuse a's or b's bytes
    assert plan.sum_bytes == 4 * 128
    assert plan.arena_bytes == 3 * 128
    assert plan.tensors["d"].offset in (plan.tensors["a"].offset, plan.tensors["b"].offset)


def test_unread_output_lives_one_layer_and_symbolic_is_dynamic():
    g = _chain_graph()
    g.nodes[1] = Node("n1", OpType.DROPOUT, ("a",), ("b", "mask"))
    g.types["mask"] = TensorType(DType.BOOL, ("n", 8))
    plan = plan_memory(g)
    assert plan.tensors["mask"].first == plan.tensors["mask"].last == 1
    assert plan.tensors["mask"].dynamic and plan.dynamic == ["mask"]
    assert plan.frees_after()[1] == ["mask"]
    assert 4 not in plan.frees_after()  # the graph output is never freed


def test_offsets_are_aligned():
    plan = allocate({"a": (3, 0, 0), "b": (5, 0, 0), "c": (70, 0, 0)})
    check_no_overlap(plan)
    assert all(t.offset % ALIGNMENT == 0 for t in plan.tensors.values())
    assert plan.arena_bytes == 128 + 64 + 64


def test_checker_catches_overlap():
    bad = MemoryPlan(128, 256, {"a": TensorAlloc("a", 0, 128, 0, 2), "b": TensorAlloc("b", 64, 64, 1, 1)})
    with pytest.raises(BuildError, match="'a'.*'b'.*overlap"):
        check_no_overlap(bad)
    misaligned = MemoryPlan(256, 256, {"a": TensorAlloc("a", 8, 64, 0, 0)})
    with pytest.raises(BuildError, match="aligned"):
        check_no_overlap(misaligned)
    past = MemoryPlan(64, 128, {"a": TensorAlloc("a", 0, 128, 0, 0)})
    with pytest.raises(BuildError, match="runs past"):
        check_no_overlap(past)


def test_json_round_trip():
    plan = plan_memory(_chain_graph())
    assert MemoryPlan.from_json(plan.to_json()) == plan


@st.composite
def _requests(draw):
    n_layers = draw(st.integers(1, 30))
    n = draw(st.integers(0, 40))
    reqs = {}
    for i in range(n):
        first = draw(st.integers(0, n_layers - 1))
        last = draw(st.integers(first, n_layers))
        size = draw(st.one_of(st.none(), st.integers(0, 5000)))
        reqs[f"t{i}"] = (size, first, last)
    return reqs, n_layers


@settings(max_examples=120, deadline=None)
@given(_requests())
def test_no_overlap_on_random_lifetimes(case):
    reqs, n_layers = case
    plan = allocate(reqs, num_layers=n_layers)
    check_no_overlap(plan)
    # independent brute-force check: at every layer, live byte ranges are disjoint
    for step in range(n_layers + 1):
        live = sorted((t.offset, t.offset + t.size) for t in plan.tensors.values()
                      if t.size and t.first <= step <= t.last)
        for (_, end), (start, _) in zip(live, live[1:]):
            assert end <= start
    # the arena is never smaller than the largest set of tensors alive together
    peak = max((sum(-(-s // ALIGNMENT) * ALIGNMENT for s, first, last in reqs.values() if s and first <= k <= last)
                for k in range(n_layers + 1)), default=0)
    assert peak <= plan.arena_bytes <= plan.sum_bytes
