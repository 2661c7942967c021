"""Cleanup passes: each fires on a graph built for it and keeps the outputs."""
import numpy as np

from ember.ir import Node, OpType
from ember.ops.attrs import AxesAttrs, AxisAttrs, CastAttrs, ReshapeAttrs, TransposeAttrs

from passkit import assert_same_outputs, ir_graph, ops, run_pass


def test_identity_dropout_cast_reshape_removed():
    nodes = [Node("id", OpType.IDENTITY, ("x",), ("a",)),
             Node("drop", OpType.DROPOUT, ("a",), ("b",)),
             Node("cast", OpType.CAST, ("b",), ("c",), CastAttrs("float32")),
             Node("reshape", OpType.RESHAPE, ("c", "shape"), ("d",), ReshapeAttrs()),
             Node("relu", OpType.RELU, ("d",), ("y",))]
    g = ir_graph(nodes, {"x": (2, 3)}, ["y"], {"shape": np.array([2, 3], np.int64)})
    out, fired = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].inputs == ("x",)
    assert fired["x -> noop(x) => x"] == 4
    assert "shape" not in out.constants
    assert_same_outputs(g, out)


def test_noop_feeding_a_graph_output_renames_the_producer():
    nodes = [Node("relu", OpType.RELU, ("x",), ("r",)), Node("id", OpType.IDENTITY, ("r",), ("y",))]
    g = ir_graph(nodes, {"x": (4,)}, ["y"])
    out, _ = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].outputs == ("y",)
    assert_same_outputs(g, out)


def test_identity_of_a_graph_input_to_an_output_stays():
    g = ir_graph([Node("id", OpType.IDENTITY, ("x",), ("y",))], {"x": (4,)}, ["y"])
    out, _ = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Identity"]


def test_real_cast_and_reshape_stay():
    nodes = [Node("cast", OpType.CAST, ("x",), ("c",), CastAttrs("float16")),
             Node("reshape", OpType.RESHAPE, ("c", "shape"), ("y",), ReshapeAttrs())]
    g = ir_graph(nodes, {"x": (2, 3)}, ["y"], {"shape": np.array([3, 2], np.int64)})
    out, fired = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Cast", "Reshape"] and not fired


def test_add_zero_and_mul_one_removed_but_broadcasting_ones_stay():
    nodes = [Node("add", OpType.ADD, ("zero", "x"), ("a",)),
             Node("mul", OpType.MUL, ("a", "one"), ("b",)),
             Node("grow", OpType.MUL, ("b", "ones2"), ("y",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"], {"zero": np.zeros(1, np.float32), "one": np.ones(3, np.float32),
                                           "ones2": np.ones((2, 3), np.float32)})
    out, _ = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Mul"] and out.nodes[0].inputs[0] == "x"
    assert_same_outputs(g, out)


def test_where_with_a_uniform_constant_condition_is_its_branch():
    """ONNX's Attention function body ends with ``Where(row fully masked, 0, softmax)``; with the
    mask a constant of the model, the condition folds to all-false and the Where goes (so the
    attention fusion sees Softmax -> MatMul). A mixed condition, or a branch that the other
    operand would broadcast wider, stays."""
    def graph(cond, branch_shape=(2, 3)):
        nodes = [Node("w", OpType.WHERE, ("c", "zero", "x"), ("w_out",)),
                 Node("relu", OpType.RELU, ("w_out",), ("y",))]
        return ir_graph(nodes, {"x": branch_shape}, ["y"], {"c": cond, "zero": np.zeros((2, 3), np.float32)})

    g = graph(np.zeros((2, 3), bool))
    out, fired = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].inputs == ("x",) and fired["x -> noop(x) => x"] == 1
    assert_same_outputs(g, out)
    g = graph(np.ones((1, 3), bool))  # all true: the zeros branch
    out, _ = run_pass(g, "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].inputs == ("zero",)
    assert_same_outputs(graph(np.ones((1, 3), bool)), out)
    for cond, shape in ((np.array([[True, False, True]]), (2, 3)), (np.zeros((2, 3), bool), (1, 3))):
        out, fired = run_pass(graph(cond, shape), "eliminate_noops")
        assert ops(out) == ["Where", "Relu"] and not fired


def test_transpose_pair_cancelled():
    nodes = [Node("t1", OpType.TRANSPOSE, ("x",), ("a",), TransposeAttrs((0, 2, 1))),
             Node("t2", OpType.TRANSPOSE, ("a",), ("b",), TransposeAttrs((0, 2, 1))),
             Node("relu", OpType.RELU, ("b",), ("y",))]
    g = ir_graph(nodes, {"x": (2, 3, 4)}, ["y"])
    out, fired = run_pass(g, "cancel_transposes", "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].inputs == ("x",)
    assert fired["transpose(transpose(x, p), q) => transpose(x, p[q])"] == 1
    assert_same_outputs(g, out)


def test_transpose_pair_composed_and_inner_kept_for_its_other_reader():
    nodes = [Node("t1", OpType.TRANSPOSE, ("x",), ("a",), TransposeAttrs((1, 2, 0))),
             Node("t2", OpType.TRANSPOSE, ("a",), ("b",), TransposeAttrs((0, 2, 1))),
             Node("relu", OpType.RELU, ("a",), ("y2",))]
    g = ir_graph(nodes, {"x": (2, 3, 4)}, ["b", "y2"])
    out, _ = run_pass(g, "cancel_transposes")
    assert ops(out) == ["Transpose", "Transpose", "Relu"]
    t2 = out.node_by_name("t2")
    assert t2.inputs == ("x",) and t2.attrs.perm == (1, 0, 2) and t2.origin == ("t1", "t2")
    assert_same_outputs(g, out)


def test_reshape_chain_merged():
    nodes = [Node("flat", OpType.FLATTEN, ("x",), ("a",), AxisAttrs(1)),
             Node("unsq", OpType.UNSQUEEZE, ("a",), ("b",), AxesAttrs((1,))),
             Node("reshape", OpType.RESHAPE, ("b", "shape"), ("y",), ReshapeAttrs())]
    g = ir_graph(nodes, {"x": (2, 3, 4)}, ["y"], {"shape": np.array([4, 6], np.int64)})
    out, _ = run_pass(g, "merge_reshapes", "dce")
    assert ops(out) == ["Reshape"] and out.nodes[0].inputs[0] == "x"
    assert out.nodes[0].origin == ("flat", "unsq", "reshape")
    assert_same_outputs(g, out)


def test_cse_merges_duplicate_nodes_and_constants():
    nodes = [Node("m1", OpType.MUL, ("x", "c1"), ("a",)), Node("m2", OpType.MUL, ("x", "c2"), ("b",)),
             Node("add", OpType.ADD, ("a", "b"), ("y",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"], {"c1": np.float32(2.0), "c2": np.float32(2.0)})
    out, fired = run_pass(g, "cse")
    assert ops(out) == ["Mul", "Add"] and out.nodes[1].inputs == ("a", "a")
    assert fired["f(x) twice => f(x) once"] == 1 and len(out.constants) == 1
    assert_same_outputs(g, out)


def test_cse_keeps_a_duplicate_that_is_a_graph_output():
    nodes = [Node("r1", OpType.RELU, ("x",), ("a",)), Node("r2", OpType.RELU, ("x",), ("b",))]
    g = ir_graph(nodes, {"x": (3,)}, ["a", "b"])
    out, _ = run_pass(g, "cse")
    assert len(out.nodes) == 2


def test_dce_removes_unused_nodes_and_constants():
    nodes = [Node("r", OpType.RELU, ("x",), ("y",)), Node("dead", OpType.ADD, ("x", "c"), ("z",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"], {"c": np.ones(3, np.float32)})
    out, fired = run_pass(g, "dce")
    assert ops(out) == ["Relu"] and not out.constants and "z" not in out.types
    assert fired["unused => removed"] == 1


def test_transposes_around_an_activation_cancel():
    nodes = [Node("t1", OpType.TRANSPOSE, ("x",), ("a",), TransposeAttrs((0, 2, 1))),
             Node("relu", OpType.RELU, ("a",), ("b",)),
             Node("t2", OpType.TRANSPOSE, ("b",), ("y",), TransposeAttrs((0, 2, 1)))]
    g = ir_graph(nodes, {"x": (2, 3, 4)}, ["y"])
    out, fired = run_pass(g, "cancel_transposes", "eliminate_noops")
    assert ops(out) == ["Relu"] and out.nodes[0].inputs == ("x",) and out.nodes[0].outputs == ("y",)
    assert fired["transpose(f(transpose(x, p)), q) => f(transpose(x, p[q]))"] == 1
    assert_same_outputs(g, out)


def test_transposes_around_an_activation_compose():
    nodes = [Node("t1", OpType.TRANSPOSE, ("x",), ("a",), TransposeAttrs((1, 2, 0))),
             Node("neg", OpType.NEG, ("a",), ("b",)),
             Node("t2", OpType.TRANSPOSE, ("b",), ("y",), TransposeAttrs((0, 2, 1)))]
    g = ir_graph(nodes, {"x": (2, 3, 4)}, ["y"])
    out, _ = run_pass(g, "cancel_transposes", "dce")
    assert ops(out) == ["Transpose", "Neg"] and out.types["y"].shape == (3, 2, 4)
    assert_same_outputs(g, out)


def test_spatial_mean_becomes_global_average_pool():
    from ember.ops.attrs import ReduceAttrs
    nodes = [Node("mean", OpType.REDUCE_MEAN, ("x",), ("y",), ReduceAttrs((-1, 2), True)),
             Node("mean2", OpType.REDUCE_MEAN, ("x",), ("z",), ReduceAttrs((1, 2), True))]
    g = ir_graph(nodes, {"x": (1, 3, 4, 5)}, ["y", "z"])
    out, _ = run_pass(g, "canonicalize")
    assert ops(out) == ["GlobalAveragePool", "ReduceMean"]
    assert_same_outputs(g, out)
