"""Hand-made graphs for runtime tests (no frontend needed); imported by the test modules."""
from __future__ import annotations

import numpy as np

from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import GemmAttrs


def mlp_graph(batch="batch") -> Graph:
    """y = sigmoid(relu(x @ w1 + b1) @ w2) + relu(...) ; mask is an int64 pass-through."""
    rng = np.random.default_rng(0)
    f = lambda *s: TensorType(DType.FLOAT32, s)  # noqa: E731
    nodes = [
        Node("fc1", OpType.GEMM, ("x", "w1", "b1"), ("h",), GemmAttrs()),
        Node("relu", OpType.RELU, ("h",), ("r",)),
        Node("fc2", OpType.MATMUL, ("r", "w2"), ("z",)),
        Node("sig", OpType.SIGMOID, ("z",), ("s",)),
        Node("add", OpType.ADD, ("s", "r2"), ("y",)),
        Node("slice_r", OpType.RELU, ("z",), ("r2",)),
    ]
    # topological order: r2 must come before add
    nodes = [nodes[0], nodes[1], nodes[2], nodes[3], nodes[5], nodes[4]]
    types = {"x": f(batch, 6), "w1": f(6, 8), "b1": f(8), "h": f(batch, 8), "r": f(batch, 8),
             "w2": f(8, 4), "z": f(batch, 4), "s": f(batch, 4), "r2": f(batch, 4), "y": f(batch, 4)}
    consts = {"w1": rng.standard_normal((6, 8)).astype(np.float32),
              "b1": rng.standard_normal(8).astype(np.float32),
              "w2": rng.standard_normal((8, 4)).astype(np.float32)}
    return Graph("mlp", nodes, ["x"], ["y", "z"], types, consts, opset=17)


def mlp_reference(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    c = g.constants
    r = np.maximum(x @ c["w1"] + c["b1"], 0)
    z = r @ c["w2"]
    return {"y": 1 / (1 + np.exp(-z)) + np.maximum(z, 0), "z": z}
