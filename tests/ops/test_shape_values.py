"""Build-time values of shape tensors: Shape -> Gather -> Concat -> Reshape chains with symbols."""
from __future__ import annotations

import numpy as np

from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops import attrs as A
from ember.ops.infer import infer_graph


def _chain_graph() -> Graph:
    """x[batch, seq, 64] -> reshape to [batch, seq, 4, 16] via a run-time shape computation."""
    i64 = np.int64
    nodes = [
        Node("shape", OpType.SHAPE, ("x",), ("s",), A.ShapeAttrs()),
        Node("b", OpType.GATHER, ("s", "i0"), ("b",), A.AxisAttrs(0)),
        Node("l", OpType.GATHER, ("s", "i1"), ("l",), A.AxisAttrs(0)),
        Node("ub", OpType.UNSQUEEZE, ("b",), ("ub",), A.AxesAttrs((0,))),
        Node("ul", OpType.UNSQUEEZE, ("l",), ("ul",), A.AxesAttrs((0,))),
        Node("cat", OpType.CONCAT, ("ub", "ul", "heads"), ("target",), A.AxisAttrs(0)),
        Node("rs", OpType.RESHAPE, ("x", "target"), ("y",), A.ReshapeAttrs()),
        Node("prod", OpType.MUL, ("b", "l"), ("bl",)),
        Node("ubl", OpType.UNSQUEEZE, ("bl",), ("ubl",), A.AxesAttrs((0,))),
        Node("cat2", OpType.CONCAT, ("ubl", "c64"), ("flat",), A.AxisAttrs(0)),
        Node("rs2", OpType.RESHAPE, ("x", "flat"), ("z",), A.ReshapeAttrs()),
        Node("eq", OpType.EQUAL, ("l", "l"), ("same",)),
        Node("rng", OpType.RANGE, ("zero", "l", "one"), ("pos",)),
        Node("exp", OpType.EXPAND, ("pos", "s2"), ("pos2",)),
    ]
    consts = {"i0": np.array(0, i64), "i1": np.array(1, i64), "heads": np.array([4, 16], i64),
              "c64": np.array([64], i64), "zero": np.array(0, i64), "one": np.array(1, i64)}
    nodes.append(Node("s2n", OpType.CONCAT, ("ub", "ul"), ("s2",), A.AxisAttrs(0)))
    nodes.insert(-2, nodes.pop())  # s2 before Expand
    types = {"x": TensorType(DType.FLOAT32, ("batch", "seq", 64))}
    return Graph("chain", nodes, ["x"], ["y", "z", "same", "pos2"], types, consts)


def test_symbolic_shape_chain_resolves_reshape_range_expand():
    g = infer_graph(_chain_graph())
    assert g.types["y"].shape == ("batch", "seq", 4, 16)
    assert g.types["z"].shape == ("batch*seq", 64)
    assert g.types["pos"].shape == ("seq",)
    assert g.types["pos2"].shape == ("batch", "seq")


def test_static_shapes_give_plain_ints():
    g = _chain_graph()
    g.types["x"] = TensorType(DType.FLOAT32, (2, 5, 64))
    g = infer_graph(g)
    assert g.types["y"].shape == (2, 5, 4, 16) and g.types["z"].shape == (10, 64)
    assert g.types["pos2"].shape == (2, 5)
