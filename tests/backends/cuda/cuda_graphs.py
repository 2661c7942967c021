"""Hand-made IR graphs for the CUDA backend's tests (no frontend needed)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import (
    Activation,
    AxisAttrs,
    ConvAttrs,
    FusedConvAttrs,
    GemmAttrs,
    PoolAttrs,
    ReshapeAttrs,
    SoftmaxAttrs,
)
from ember.ops.infer import infer_graph

RNG = np.random.default_rng(0)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def one_node(op: OpType, attrs: Any, inputs: list[tuple[str, Any]], n_out: int = 1,
             name: str = "layer") -> Graph:
    """A graph of one node. ``inputs``: (name, array) for constants, (name, TensorType or shape
    tuple) for graph inputs, ("", None) for an omitted optional input."""
    types: dict[str, TensorType] = {}
    consts: dict[str, np.ndarray] = {}
    graph_inputs = []
    for n, v in inputs:
        if not n:
            continue
        if isinstance(v, np.ndarray):
            consts[n] = v
        else:
            t = v if isinstance(v, TensorType) else TensorType(DType.FLOAT32, tuple(v))
            types[n] = t
            graph_inputs.append(n)
    outs = tuple(f"out{i}" for i in range(n_out))
    node = Node(name, op, tuple(n for n, _ in inputs), outs, attrs)
    g = Graph(f"{op.value}_test", [node], graph_inputs, list(outs), types, consts, opset=17)
    return infer_graph(g)


def conv_attrs(k: int, stride: int = 1, pad: Optional[tuple[int, ...]] = None, group: int = 1) -> ConvAttrs:
    p = pad if pad is not None else (k // 2,) * 4
    return ConvAttrs((k, k), (stride, stride), p, (1, 1), group)


def fused_conv(name: str, x: str, out: str, cin: int, cout: int, k: int, consts: dict, *,
               stride: int = 1, act: Activation = Activation.RELU, residual: str = "",
               params: tuple[float, ...] = (), group: int = 1) -> Node:
    consts[f"{name}.w"] = rand(cout, cin // group, k, k, scale=(2.0 / (cin * k * k)) ** 0.5)
    consts[f"{name}.b"] = rand(cout, scale=0.1)
    attrs = FusedConvAttrs(conv_attrs(k, stride, group=group), act, params, bool(residual))
    ins = (x, f"{name}.w", f"{name}.b") + ((residual,) if residual else ())
    return Node(name, OpType.FUSED_CONV, ins, (out,), attrs)


def inception_graph(batch: int = 2, c: int = 16, hw: int = 14) -> Graph:
    """A stem conv, then four Inception-style branches concatenated, then a classifier head."""
    consts: dict[str, np.ndarray] = {}
    nodes = [
        fused_conv("stem", "x", "s", 3, c, 3, consts),
        fused_conv("b1", "s", "b1o", c, 8, 1, consts),
        fused_conv("b2a", "s", "b2a", c, 8, 1, consts),
        fused_conv("b2b", "b2a", "b2o", 8, 12, 3, consts),
        fused_conv("b3a", "s", "b3a", c, 4, 1, consts),
        fused_conv("b3b", "b3a", "b3o", 4, 6, 5, consts, act=Activation.CLIP, params=(0.0, 6.0)),
        Node("b4p", OpType.MAX_POOL, ("s",), ("b4p",),
             PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), ceil_mode=True)),
        fused_conv("b4", "b4p", "b4o", c, 6, 1, consts),
        Node("cat", OpType.CONCAT, ("b1o", "b2o", "b3o", "b4o"), ("cat",), AxisAttrs(1)),
        fused_conv("res", "cat", "r", 32, 32, 3, consts, residual="cat"),
        Node("gap", OpType.GLOBAL_AVERAGE_POOL, ("r",), ("gap",)),
        Node("flat", OpType.FLATTEN, ("gap",), ("flat",), AxisAttrs(1)),
        Node("fc", OpType.GEMM, ("flat", "fc.w", "fc.b"), ("logits",), GemmAttrs(trans_b=True)),
        Node("sm", OpType.SOFTMAX, ("logits",), ("prob",), SoftmaxAttrs(-1)),
    ]
    consts["fc.w"] = rand(10, 32, scale=0.2)
    consts["fc.b"] = rand(10, scale=0.1)
    types = {"x": TensorType(DType.FLOAT32, (batch, 3, hw, hw))}
    g = Graph("inception_mini", nodes, ["x"], ["prob", "logits"], types, consts, opset=17)
    return infer_graph(g)


def reshape_chain_graph(batch: int = 2) -> Graph:
    """Shape arithmetic feeding a Reshape: runs on the host, the data stays on the GPU."""
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    from ember.ops.attrs import AxesAttrs, ShapeAttrs

    nodes = [
        Node("shape", OpType.SHAPE, ("x",), ("shp",), ShapeAttrs()),
        Node("g0", OpType.GATHER, ("shp", "zero"), ("n",), AxisAttrs(0)),
        Node("unsq", OpType.UNSQUEEZE, ("n",), ("n1",), AxesAttrs((0,))),
        Node("cat", OpType.CONCAT, ("n1", "minus1"), ("target",), AxisAttrs(0)),
        Node("reshape", OpType.RESHAPE, ("x", "target"), ("flat",), ReshapeAttrs()),
        Node("relu", OpType.RELU, ("flat",), ("y",)),
    ]
    consts = {"zero": i64(0), "minus1": i64([-1])}
    types = {"x": TensorType(DType.FLOAT32, (batch, 4, 3))}
    g = Graph("reshape_chain", nodes, ["x"], ["y"], types, consts, opset=17)
    return infer_graph(g)


def cpu_reference(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``graph`` node by node with the CPU backend's generic kernels (the oracle)."""
    from ember.backends.cpu import evaluate

    env: dict[str, np.ndarray] = dict(graph.constants)
    env.update(feeds)
    for node in graph.nodes:
        outs = evaluate(node, [env[i] if i else None for i in node.inputs], graph)
        env.update({o: v for o, v in zip(node.outputs, outs) if o})
    return {o: env[o] for o in graph.outputs}


def host_to_device_graph(batch: int = 2) -> Graph:
    """A run-time shape value added to data: must be copied host -> GPU (not capturable)."""
    from ember.ops.attrs import CastAttrs, ShapeAttrs

    nodes = [
        Node("shape", OpType.SHAPE, ("x",), ("shp",), ShapeAttrs(1, 2)),
        Node("cast", OpType.CAST, ("shp",), ("c",), CastAttrs("float32")),
        Node("add", OpType.ADD, ("x", "c"), ("y",)),
    ]
    types = {"x": TensorType(DType.FLOAT32, (batch, 5))}
    return infer_graph(Graph("host_to_device", nodes, ["x"], ["y"], types, {}, opset=17))
