"""The frontend-neutral ``GraphBuilder`` (what the ONNX frontend builds on, and a Caffe or PyTorch
frontend would): names, inputs with overrides, constants, nodes typed as they are added."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

import ember.frontends.graph_builder as gb
from ember.errors import GraphError, ModelLoadError, ShapeError
from ember.frontends import GraphBuilder
from ember.ir import DType, OpType
from ember.ir.graph import SourceInfo
from ember.ops.attrs import AxisAttrs


def test_doctests():
    assert doctest.testmod(gb).failed == 0


def test_nodes_are_typed_as_they_are_added_and_named_uniquely():
    b = GraphBuilder("test")
    b.add_input("x", DType.FLOAT32, ("batch", 4))
    one = b.add_scalar("one", 1.0, DType.FLOAT32)
    b.add_node(OpType.ADD, ("x", one), ("a",), name="add", origin=("src",))
    assert b.type("a").shape == ("batch", 4)
    n2 = b.add_node(OpType.CONCAT, ("a", "x"), ("c",), AxisAttrs(1), name="add")
    assert n2.name == "add_1" and b.type("c").shape == ("batch", 8)
    assert b.nodes[0].origin == ("src",)
    with pytest.raises(GraphError, match="'nope' is used before it is defined"):
        b.type("nope")


def test_fresh_names_avoid_reserved_and_defined_ones():
    b = GraphBuilder("test")
    b.reserve(["t", "t_1", ""])
    b.add_constant("t_2", np.zeros(2, np.float32))
    assert b.fresh("t") == "t_3" and b.fresh("t") == "t_4" and b.fresh("u") == "u"


def test_input_overrides_keep_rank_and_fixed_dims():
    b = GraphBuilder("m.onnx")
    assert b.add_input("x", DType.FLOAT32, ("n", 3), (2, 3)).shape == (2, 3)
    assert b.add_input("free", DType.INT64, None, (5,)).shape == (5,)
    with pytest.raises(ShapeError, match=r"input 'y' has rank 1, but m.onnx declares rank 2"):
        b.add_input("y", DType.FLOAT32, ("n", 3), (2,))
    with pytest.raises(ShapeError, match=r"conflicts with the model's fixed dim 1 = 3"):
        b.add_input("z", DType.FLOAT32, ("n", 3), (2, 4))
    with pytest.raises(ShapeError, match=r"input 'w' has no shape.*shapes=\{'w': \(\.\.\.\)\}"):
        b.add_input("w", DType.FLOAT32, None)
    with pytest.raises(ShapeError, match=r"shapes given for \['q'\], which are not inputs of m.onnx"):
        b.check_shapes({"x": (2, 3), "q": (1,)})


def test_finish_drops_unread_constants_and_checks_outputs():
    b = GraphBuilder("test")
    b.add_input("x", DType.FLOAT32, (2,))
    w = b.add_constant("w", np.ones(2, np.float32))
    b.add_constant("unused", np.ones(3, np.float32))
    b.add_node(OpType.MUL, ("x", w), ("y",), name="mul")
    info = SourceInfo("test", "maker 1.0", 3)
    g = b.finish("g", ["y"], opset=13, source_info=info)
    assert set(g.constants) == {"w"} and g.inputs == ["x"] and g.opset == 13 and g.source_info == info
    with pytest.raises(ModelLoadError, match="graph output 'ghost' is not produced"):
        b.finish("g", ["ghost"])


def test_symbolic_dims_are_canonical():
    assert gb.symbolic_dim("2 * batch") == "batch*2" and gb.symbolic_dim("seq*batch") == "batch*seq"
    assert gb.symbolic_dim("7") == 7
