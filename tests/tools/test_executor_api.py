"""The tools' CUDA paths use only the runtime's public executor API, checked on the CPU with fakes.

``ember bench`` and ``ember inspect --device-memory`` read a CUDA engine through
``ExecutionContext.executor`` (``infer``, ``last_timing``, ``input_buffer``, ``run_device``,
``memory``, ``arena_report``) and ``Engine.compile()``; never through the CUDA backend's classes or
a context's private fields. The fakes below have exactly that surface (a CPU engine does the
arithmetic), so a tool reaching for anything else fails here, without a GPU.
"""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ember.tools import bench, inspect
from ember.tools.bench_stats import wall_clock

ROOT = Path(__file__).resolve().parents[2]


class FakeExecutor:
    """A CUDA executor's public surface over a CPU execution context."""

    captures = 1
    fallback_reason: dict[Any, str] = {}

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.buffers: dict[str, torch.Tensor] = {}
        self.calls: list[str] = []

    def infer(self, feeds: dict) -> dict:
        self.calls.append("infer")
        return self.ctx.infer(feeds)

    def last_timing(self) -> Any:
        return SimpleNamespace(h2d_ms=0.1, compute_ms=1.0, d2h_ms=0.2)

    def input_buffer(self, feeds_like: dict, name: str) -> torch.Tensor:
        like = torch.from_numpy(feeds_like[name])
        return self.buffers.setdefault(name, torch.empty_like(like))

    def run_device(self, dev_feeds: dict) -> dict:
        self.calls.append("run_device")
        assert all(dev_feeds[k] is self.buffers[k] for k in dev_feeds)  # the executor's own buffers
        return self.ctx.infer(dev_feeds)

    def memory(self) -> dict[str, int]:
        return {"weights": 100, "arena": 0, "graph_pool": 20, "static_buffers": 3, "graphs": 1}

    def arena_report(self) -> None:
        return None


class FakeContext:
    def __init__(self, engine: Any) -> None:
        self.inner = engine.create_context()
        self.executor = FakeExecutor(self.inner)

    def infer(self, feeds: dict) -> dict:
        return self.inner.infer(feeds)

    def __enter__(self) -> FakeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()


class FakeCudaEngine:
    """A CPU engine that says it was built for cuda."""

    def __init__(self, engine: Any) -> None:
        self.cpu = engine
        self.inputs, self.outputs = engine.inputs, engine.outputs
        config = SimpleNamespace(device="cuda", profiles={})
        self.plan = SimpleNamespace(config=config, graph=engine.plan.graph)
        self.contexts: list[FakeContext] = []

    def create_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self.cpu))
        return self.contexts[-1]

    def compile(self) -> Any:
        return SimpleNamespace(num_streams=2)


def small_model() -> Any:
    """x[N, 3, 8, 8] -> conv -> relu -> global pool -> flatten -> y[N, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    w = numpy_helper.from_array(weights, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def cuda_like() -> FakeCudaEngine:
    import ember

    return FakeCudaEngine(ember.build(small_model(), ember.BuildConfig(shapes={"x": (2, 3, 8, 8)})))


def test_bench_times_a_cuda_engine_through_its_executor(cuda_like, monkeypatch):
    # CUDA events need a GPU: time on the wall clock instead (what is timed is the point here)
    def on_the_wall_clock(fn, device, iterations, warmup, **kw):
        return wall_clock(fn, iterations, warmup)

    monkeypatch.setattr(bench, "measure", on_the_wall_clock)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    result, outs = bench.measure_ember(cuda_like, feeds, bench.BenchOptions("m", iterations=3, warmup=1))
    executor = cuda_like.contexts[-1].executor
    assert executor.calls.count("run_device") == 4 and "infer" in executor.calls
    assert result["split_ms"] == {"h2d": 0.1, "compute": 1.0, "d2h": 0.2}
    assert result["compute_ms"]["count"] == 3 and result["end_to_end_ms"]["count"] == 3
    assert result["cuda_graphs"] is True and result["streams"] == 2 and result["device_memory"]["graphs"] == 1
    np.testing.assert_array_equal(executor.buffers["x"].numpy(), feeds["x"])
    with cuda_like.cpu.create_context() as ctx:
        np.testing.assert_allclose(outs["y"], ctx.infer(feeds)["y"])


def test_inspect_device_memory_reads_the_executor(cuda_like):
    report = inspect.measure_device_memory(cuda_like)
    assert report["total"] == 100 + 0 + 20 + 3
    assert "device memory (measured)" in inspect.device_memory_text(report)


def test_tools_use_no_cuda_backend_classes_nor_context_internals():
    bad = []
    for path in sorted((ROOT / "ember" / "tools").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{path.name}:{node.lineno} imports {n}" for n in names
                    if n.startswith("ember.backends.cuda")]
            if isinstance(node, ast.Attribute) and node.attr in ("runner", "_runner"):
                bad.append(f"{path.name}:{node.lineno} reads .{node.attr}")
    assert not bad, "tools reach into the CUDA backend; use ExecutionContext.executor: " + "; ".join(bad)
