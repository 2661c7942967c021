"""Constant folding, shape subgraphs included."""
import numpy as np

from ember.ir import Node, OpType
from ember.ops.attrs import AxesAttrs, AxisAttrs, ReshapeAttrs, ShapeAttrs

from passkit import assert_same_outputs, ir_graph, ops, run_pass


def shape_chain(x_shape, index=1):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch.onnx.export writes x.view(b, -1)."""
    nodes = [Node("shape", OpType.SHAPE, ("x",), ("s",), ShapeAttrs()),
             Node("gather", OpType.GATHER, ("s", "idx"), ("d",), AxisAttrs(0)),
             Node("unsq", OpType.UNSQUEEZE, ("d",), ("u",), AxesAttrs((0,))),
             Node("concat", OpType.CONCAT, ("u", "minus1"), ("shp",), AxisAttrs(0)),
             Node("reshape", OpType.RESHAPE, ("x", "shp"), ("y",), ReshapeAttrs())]
    consts = {"idx": np.array(index, np.int64), "minus1": np.array([-1], np.int64)}
    return ir_graph(nodes, {"x": x_shape}, ["y"], consts)


def test_shape_chain_folds_to_a_constant_reshape():
    g = shape_chain((2, 3, 4), index=0)
    out, fired = run_pass(g, "fold_constants")
    assert ops(out) == ["Reshape"]
    assert out.constants[out.nodes[0].inputs[1]].tolist() == [2, -1]
    assert out.types["y"].shape == (2, 12)
    assert fired["shape arithmetic on static dims => constant"] >= 1
    assert_same_outputs(g, out)


def test_shape_chain_folds_a_static_dim_of_a_dynamic_batch():
    g = shape_chain(("batch", 3, 4), index=2)
    out, _ = run_pass(g, "fold_constants")
    assert ops(out) == ["Reshape"]
    assert out.constants[out.nodes[0].inputs[1]].tolist() == [4, -1]


def test_shape_chain_on_the_dynamic_dim_becomes_a_copy_dim():
    g = shape_chain(("batch", 3, 4), index=0)
    out, _ = run_pass(g, "fold_constants")
    assert ops(out) == ["Reshape"]
    assert out.constants[out.nodes[0].inputs[1]].tolist() == [0, -1]
    for batch in (1, 3):
        assert_same_outputs(g, out, {"x": np.ones((batch, 3, 4), np.float32)})


def test_expand_to_a_shape_with_the_input_batch_symbol_keeps_that_dim():
    nodes = [Node("shape", OpType.SHAPE, ("x",), ("s",), ShapeAttrs(0, 1)),
             Node("concat", OpType.CONCAT, ("s", "rest"), ("shp",), AxisAttrs(0)),
             Node("expand", OpType.EXPAND, ("x", "shp"), ("y",))]
    g = ir_graph(nodes, {"x": ("batch", 1, 4)}, ["y"], {"rest": np.array([5, 4], np.int64)})
    out, _ = run_pass(g, "fold_constants")
    assert ops(out) == ["Expand"] and out.constants[out.nodes[0].inputs[1]].tolist() == [1, 5, 4]
    assert_same_outputs(g, out, {"x": np.ones((2, 1, 4), np.float32)})


def test_reshape_with_two_unknown_dims_stays_dynamic():
    nodes = [Node("shape", OpType.SHAPE, ("x",), ("s",), ShapeAttrs()),
             Node("reshape", OpType.RESHAPE, ("y0", "s"), ("y",), ReshapeAttrs())]
    g = ir_graph(nodes, {"x": ("a", "b"), "y0": ("c", "d")}, ["y"])
    out, _ = run_pass(g, "fold_constants")
    assert ops(out) == ["Shape", "Reshape"]


def test_nodes_on_constants_are_evaluated():
    nodes = [Node("add", OpType.ADD, ("a", "b"), ("c",)), Node("mul", OpType.MUL, ("x", "c"), ("y",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"], {"a": np.ones(3, np.float32), "b": np.full(3, 2, np.float32)})
    out, fired = run_pass(g, "fold_constants")
    assert ops(out) == ["Mul"] and out.constants["c"].tolist() == [3, 3, 3]
    assert out.constants["c"].dtype == np.float32
    assert fired["f(constants) => constant"] == 1
    assert_same_outputs(g, out)


def test_huge_results_are_not_folded():
    from ember.ops.attrs import ConstantOfShapeAttrs
    from ember.passes.fold import fold_constants
    from ember.passes.manager import PassContext
    nodes = [Node("cos", OpType.CONSTANT_OF_SHAPE, ("shape",), ("big",), ConstantOfShapeAttrs(1.0, "float32")),
             Node("add", OpType.ADD, ("x", "big"), ("y",))]
    g = ir_graph(nodes, {"x": (64, 64)}, ["y"], {"shape": np.array([64, 64], np.int64)})
    out = fold_constants(g, PassContext(max_fold_bytes=1024))
    assert ops(out) == ["ConstantOfShape", "Add"]
    out = fold_constants(g, PassContext())
    assert ops(out) == ["Add"]
