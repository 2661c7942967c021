"""CPUProgram.run(observe=...): sees each feed, then each layer's named outputs as produced."""
from __future__ import annotations

import numpy as np
import torch

import ember
from ember.ir import DType, Graph, Node, OpType, TensorType


def _engine(optimize: bool) -> ember.Engine:
    t = TensorType(DType.FLOAT32, (2, 3))
    nodes = [Node("relu", OpType.RELU, ("x",), ("a",)), Node("neg", OpType.NEG, ("a",), ("b",)),
             Node("add", OpType.ADD, ("b", "x"), ("y",))]
    graph = Graph("g", nodes, ["x"], ["y"], {"x": t, "a": t, "b": t, "y": t})
    return ember.build(graph, ember.BuildConfig(device="cpu", optimize=optimize))


def test_observe_sees_feeds_then_every_output_in_order():
    program = _engine(optimize=False).compile()
    x = torch.tensor([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]])
    seen: list[tuple[str, np.ndarray]] = []
    out = program.run({"x": x}, observe=lambda name, t: seen.append((name, t.clone().numpy())))
    assert [n for n, _ in seen] == ["x", "a", "b", "y"]
    relu = np.maximum(x.numpy(), 0)
    for (_, got), want in zip(seen, [x.numpy(), relu, -relu, x.numpy() - relu]):
        assert np.array_equal(got, want)
    assert torch.equal(out["y"], program.run({"x": x})["y"])  # the same result without a hook


def test_observe_names_are_the_optimized_graphs():
    engine = _engine(optimize=True)
    seen: list[str] = []
    engine.compile().run({"x": torch.ones(2, 3)}, observe=lambda name, t: seen.append(name))
    assert seen == ["x", *[o for node in engine.plan.graph.nodes for o in node.outputs]]
