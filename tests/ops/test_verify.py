"""The IR's structural verifier and the ops layer's per-node rules, checked together."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import GraphError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ir.verifier import verify
from ember.ops.attrs import AxisAttrs, SoftmaxAttrs
from ember.ops.verify import verify_graph


def _softmax(attrs: object) -> Graph:
    t = TensorType(DType.FLOAT32, (2, 3))
    return Graph("g", [Node("s", OpType.SOFTMAX, ("x",), ("y",), attrs)], ["x"], ["y"], {"x": t, "y": t})


def test_attrs_of_the_wrong_class_are_caught_by_the_ops_rules_not_the_ir():
    bad = _softmax(AxisAttrs(1))
    verify(bad)  # structure is fine: the IR knows nothing of an op's attributes
    with pytest.raises(GraphError, match=r"node 's' \(Softmax\) has attrs of type AxisAttrs, expected SoftmaxAttrs"):
        verify_graph(bad)
    verify_graph(_softmax(SoftmaxAttrs(-1)))


def test_structural_errors_come_first_and_name_the_tensor():
    t = TensorType(DType.FLOAT32, (2,))
    g = Graph("g", [Node("n", OpType.RELU, ("missing",), ("y",))], ["x"], ["y"], {"x": t, "y": t},
              {"c": np.zeros(2, np.float32)})
    with pytest.raises(GraphError, match="reads 'missing', which is not defined before it"):
        verify_graph(g)
