"""Running engines: concurrency across contexts and threads, and freeing tensors after last use."""
from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import ember
from ember.backends.cpu import CPUBackend
from ember.builder.build import build
from ember.ir import Node, OpType
from ember.ops.attrs import SplitAttrs

from runtime_graphs import cnn_graph, cnn_reference, mlp_graph, mlp_reference

MLP = mlp_graph()  # the unoptimized graph: references use its weights
CNN = cnn_graph()


def test_contexts_run_concurrently_from_threads():
    engine = build(mlp_graph(), ember.BuildConfig(profiles={"x": ((1, 6), (4, 6), (16, 6))}))
    barrier = threading.Barrier(4)

    def worker(seed: int) -> int:
        rng = np.random.default_rng(seed)
        contexts = [engine.create_context() for _ in range(3)]
        barrier.wait()
        checked = 0
        for i in range(25):
            ctx = contexts[i % 3]
            x = rng.standard_normal((int(rng.integers(1, 17)), 6)).astype(np.float32)
            out = ctx.infer({"x": torch.from_numpy(x)} if i % 2 else {"x": x})
            want = mlp_reference(MLP, x)
            for k in ("y", "z"):
                got = out[k].numpy() if isinstance(out[k], torch.Tensor) else out[k]
                np.testing.assert_allclose(got, want[k], rtol=1e-5, atol=1e-6)
            checked += 1
        for ctx in contexts:
            ctx.close()
        return checked

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 100


def test_conv_engine_concurrently_from_threads():
    engine = build(cnn_graph(), ember.BuildConfig(profiles={"x": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}))
    assert len(engine.plan.layers) < 5  # the optimizer fused something: real prepacked kernels

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with engine.create_context() as ctx:
            for _ in range(15):
                x = rng.standard_normal((int(rng.integers(1, 5)), 3, 8, 8)).astype(np.float32)
                np.testing.assert_allclose(ctx.infer({"x": x})["y"], cnn_reference(CNN, x),
                                           rtol=1e-4, atol=1e-5)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))


def test_one_context_shared_by_threads_is_serialized():
    engine = build(mlp_graph(), ember.BuildConfig(shapes={"x": (2, 6)}))
    ctx = engine.create_context()
    xs = [np.full((2, 6), i, np.float32) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda x: ctx.infer({"x": x})["y"], xs))
    for x, y in zip(xs, outs):
        np.testing.assert_allclose(y, mlp_reference(MLP, x)["y"], rtol=1e-5)
    assert ctx.runs == 16


class _WatchingBackend(CPUBackend):
    """CPU kernels that record, at every layer, which earlier intermediates are still alive."""

    def __init__(self) -> None:
        self.made: dict[str, weakref.ref] = {}
        self.alive_at: list[set[str]] = []

    def compile_node(self, node, ctx):
        kernel = super().compile_node(node, ctx)

        def run(inputs):
            self.alive_at.append({n for n, r in self.made.items() if r() is not None})
            outs = kernel(inputs)
            for name, t in zip(node.outputs, outs):
                if name and t is not None:
                    self.made[name] = weakref.ref(t)
            return outs

        return run


def _graph_with_dead_output():
    """mlp, plus a Split of x whose second half nobody reads."""
    g = mlp_graph()
    split = Node("split", OpType.SPLIT, ("x",), ("x_a", "x_dead"), SplitAttrs(axis=1, split=(3, 3)))
    relu = Node("relu_a", OpType.RELU, ("x_a",), ("x_r",))
    f = g.types["x"].with_shape
    g.types.update({"x_a": f(("batch", 3)), "x_dead": f(("batch", 3)), "x_r": f(("batch", 3))})
    return g.copy(nodes=[split, *g.nodes, relu], outputs=[*g.outputs, "x_r"])


def test_intermediates_are_freed_after_their_last_use():
    backend = _WatchingBackend()
    engine = build(_graph_with_dead_output(), ember.BuildConfig(shapes={"x": (2, 6)}, tactic_tuning=False),
                   backend=backend)
    plan = engine.plan
    with engine.create_context() as ctx:
        ctx.infer({"x": np.ones((2, 6), np.float32)})
    assert len(backend.alive_at) == len(plan.layers)
    for i, alive in enumerate(backend.alive_at):
        expected = {t.name for t in plan.memory.tensors.values() if t.first < i <= t.last}
        assert alive == expected, f"layer {i}: alive {sorted(alive)}, plan says {sorted(expected)}"
    assert plan.memory.tensors["x_dead"].last == plan.memory.tensors["x_dead"].first
    assert any(t.last < len(plan.layers) for t in plan.memory.tensors.values())  # something was freed


class _ExecutorBackend(CPUBackend):
    """A backend whose program gives every context an executor of its own (as CUDA's does)."""

    def __init__(self) -> None:
        self.runners: list = []

    def make_program(self, plan, device):
        from ember.backends.base import Executor
        from ember.backends.cpu.program import CPUProgram

        backend = self

        class CountingExecutor(Executor):
            device_type = "cpu"

            def __init__(self, program):
                self.program, self.closed, self.calls = program, False, 0

            def infer(self, inputs):
                self.calls += 1
                feeds = {k: torch.as_tensor(v) for k, v in inputs.items()}
                return {k: v.numpy() for k, v in self.program.run(feeds).items()}

            def close(self):
                self.closed = True

        class CountingProgram(CPUProgram):
            def create_executor(self):
                backend.runners.append(CountingExecutor(self))
                return backend.runners[-1]

        return CountingProgram(plan, CPUBackend(), device)


def test_backend_program_and_executor_contract():
    backend = _ExecutorBackend()
    engine = build(mlp_graph(), ember.BuildConfig(shapes={"x": (2, 6)}), backend=backend)
    x = np.ones((2, 6), np.float32)
    with engine.create_context() as a, engine.create_context() as b:
        ya, yb = a.infer({"x": x})["y"], b.infer({"x": x})["y"]
        with pytest.raises(ember.InputError, match="missing input 'x'"):
            a.infer({})  # inputs are validated before the executor sees them
        with pytest.raises(ember.EmberError, match="infer_async needs an engine built for cuda"):
            a.infer_async({"x": x})
    np.testing.assert_allclose(ya, mlp_reference(MLP, x)["y"], rtol=1e-5)
    np.testing.assert_array_equal(ya, yb)
    assert [(r.calls, r.closed) for r in backend.runners] == [(1, True), (1, True)]
