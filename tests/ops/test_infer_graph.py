"""infer_graph re-derives every type in order and returns a new graph."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import ShapeError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import AxisAttrs, ReshapeAttrs
from ember.ops.infer import infer_graph


def _graph(batch="batch") -> Graph:
    nodes = [
        Node("mm", OpType.MATMUL, ("x", "w"), ("h",)),
        Node("relu", OpType.RELU, ("h",), ("r",)),
        Node("reshape", OpType.RESHAPE, ("r", "shape"), ("y",), ReshapeAttrs()),
        Node("concat", OpType.CONCAT, ("y", "y"), ("z",), AxisAttrs(-1)),
    ]
    constants = {"w": np.zeros((8, 6), np.float32), "shape": np.array([0, -1, 2], np.int64)}
    types = {"x": TensorType(DType.FLOAT32, (batch, 8)), "stale": TensorType(DType.FLOAT32, (1,))}
    return Graph("g", nodes, ["x"], ["z"], types, constants)


def test_infer_graph_types_every_tensor_and_leaves_the_input_graph_alone():
    g = _graph()
    before = dict(g.types)
    out = infer_graph(g)
    assert out is not g and g.types == before
    assert out.types["h"] == TensorType(DType.FLOAT32, ("batch", 6))
    assert out.types["y"].shape == ("batch", 3, 2)
    assert out.types["z"].shape == ("batch", 3, 4)
    assert out.types["w"] == TensorType(DType.FLOAT32, (8, 6))
    assert "stale" not in out.types


def test_infer_graph_follows_new_input_shapes():
    g = _graph()
    g.types["x"] = TensorType(DType.FLOAT32, (4, 8))
    assert infer_graph(g).types["z"].shape == (4, 3, 4)


def test_infer_graph_names_the_failing_node():
    g = _graph()
    g.constants["w"] = np.zeros((7, 6), np.float32)
    with pytest.raises(ShapeError, match="node 'mm'"):
        infer_graph(g)
