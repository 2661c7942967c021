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


def cnn_graph() -> Graph:
    """x[batch,3,8,8] -> conv 3x3 -> relu -> conv 1x1 (+ residual) -> global average pool."""
    from ember.ops.attrs import ConvAttrs

    rng = np.random.default_rng(2)
    f = lambda *s: TensorType(DType.FLOAT32, s)  # noqa: E731
    nodes = [
        Node("conv1", OpType.CONV, ("x", "k1", "c1"), ("a",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
        Node("relu1", OpType.RELU, ("a",), ("b",)),
        Node("conv2", OpType.CONV, ("b", "k2"), ("c",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))),
        Node("res", OpType.ADD, ("c", "b"), ("d",)),
        Node("pool", OpType.GLOBAL_AVERAGE_POOL, ("d",), ("y",)),
    ]
    types = {"x": f("batch", 3, 8, 8), "k1": f(8, 3, 3, 3), "c1": f(8), "a": f("batch", 8, 8, 8),
             "b": f("batch", 8, 8, 8), "k2": f(8, 8, 1, 1), "c": f("batch", 8, 8, 8),
             "d": f("batch", 8, 8, 8), "y": f("batch", 8, 1, 1)}
    consts = {"k1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
              "c1": rng.standard_normal(8).astype(np.float32),
              "k2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32)}
    return Graph("cnn", nodes, ["x"], ["y"], types, consts, opset=17)


def cnn_reference(g: Graph, x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    c = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    b = F.relu(F.conv2d(torch.from_numpy(x), c["k1"], c["c1"], padding=1))
    return (F.conv2d(b, c["k2"]) + b).mean(dim=(2, 3), keepdim=True).numpy()
