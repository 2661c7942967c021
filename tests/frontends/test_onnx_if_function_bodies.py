"""What ONNX's AffineGrid function body (``test_affine_grid_*_expanded``) needed, in small
hand-made models:

- an Expand to a shape known only at run time keeps the input dims that are not 1 (the shape
  may only repeat them), so a Split + Squeeze downstream knows which dims are 1 (the 2-D body's
  Transpose failed on a rank-4 tensor that is rank 3 at run time);
- an If whose condition is known only at run time accepts branches whose outputs differ only in
  unit dims (``[]`` and ``[1]``, the 3-D body's step sizes) and selects with a broadcasting Where;
- a branch that reads a tensor whose producer was refused is refused naming that tensor, instead
  of failing inside the branch with "has no type yet".
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.errors import UnsupportedOpError
from ember.frontends.onnx.handlers.control import selected_shape
from ember.ir import OpType

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _run(model, feeds):
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


def _const(name, values, dtype=I64):
    arr = np.array(values)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, arr.shape, arr.reshape(-1)))


def test_expand_to_a_run_time_shape_keeps_the_dims_that_are_not_1():
    """theta[2, 2, 3] gathered through indices Expanded to [size[0], 2, 3] (size an input): the
    Split halves are [N, 1, 3], the Squeeze drops the 1, the Transpose sees rank 2."""
    nodes = [
        _const("starts", [0]), _const("ends", [1]), _const("shape23", [2, 3]),
        _const("idx23", [[0, 1, 2], [2, 1, 0]]),
        helper.make_node("Slice", ["size", "starts", "ends"], ["n"]),
        helper.make_node("Concat", ["n", "shape23"], ["shape_n23"], axis=0),
        helper.make_node("Expand", ["idx23", "shape_n23"], ["idx"]),
        helper.make_node("GatherElements", ["theta", "idx"], ["g"], axis=2),
        helper.make_node("Split", ["g"], ["r1", "r2"], axis=1, num_outputs=2),
        helper.make_node("Squeeze", ["r1"], ["r1_"]),
        helper.make_node("Transpose", ["r1_"], ["y"], perm=[1, 0]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("theta", F, [2, 2, 3]),
                                           helper.make_tensor_value_info("size", I64, [4])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    imported = ember.frontends.load(model)
    expand = next(n for n in imported.nodes if n.op is OpType.EXPAND)
    shape = imported.types[expand.outputs[0]].shape
    assert shape[1:] == (2, 3) and isinstance(shape[0], str)
    assert imported.types["y"].shape == (3, shape[0])
    feeds = {"theta": np.arange(12, dtype=np.float32).reshape(2, 2, 3), "size": np.array([2, 1, 5, 6], np.int64)}
    np.testing.assert_array_equal(_run(model, feeds)["y"], ReferenceEvaluator(model).run(None, feeds)[0])


def _if_model(then_value_shape, as_output=False):
    """y = x * If(flag){ step = 0.0 (shape ``then_value_shape``) } else { step = 2 / (sum(x) - 1) [1] }."""
    zero = np.zeros(then_value_shape, np.float32)
    then_g = helper.make_graph([_const("step_then", zero, F)], "then", [],
                               [helper.make_tensor_value_info("step_then", F, None)])
    else_g = helper.make_graph(
        [_const("two", 2.0, F), _const("one", 1.0, F), _const("axes", [0]),
         helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
         helper.make_node("Sub", ["total", "one"], ["less"]),
         helper.make_node("Div", ["two", "less"], ["step_else"])],
        "else", [], [helper.make_tensor_value_info("step_else", F, None)])
    nodes = [helper.make_node("If", ["flag"], ["step"], then_branch=then_g, else_branch=else_g, name="pick")]
    outputs = [helper.make_tensor_value_info("step", F, None)]
    if not as_output:
        nodes.append(helper.make_node("Mul", ["x", "step"], ["y"]))
        outputs = [helper.make_tensor_value_info("y", F, None)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [3]),
                                           helper.make_tensor_value_info("flag", B, [])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("flag", [True, False])
def test_a_run_time_if_selects_between_branches_that_differ_in_unit_dims(flag):
    model = _if_model(())  # then: float[], else: float[1]
    graph = ember.frontends.load(model)
    assert OpType.WHERE in {n.op for n in graph.nodes} and graph.types["step"].shape == (1,)
    feeds = {"x": np.array([1.0, 2.0, 4.0], np.float32), "flag": np.array(flag)}
    np.testing.assert_allclose(_run(model, feeds)["y"], ReferenceEvaluator(model).run(None, feeds)[0], rtol=1e-6)


def test_branches_that_would_replicate_data_are_still_refused():
    with pytest.raises(UnsupportedOpError, match=r"'pick'.*condition is only known at run time.*float32\[2\]"):
        ember.frontends.load(_if_model((2,)))


def test_a_model_output_whose_rank_depends_on_the_condition_is_refused():
    with pytest.raises(UnsupportedOpError, match=r"model output 'step'.*rank would then depend on the condition"):
        ember.frontends.load(_if_model((), as_output=True))


def test_a_branch_reading_a_refused_nodes_output_is_refused_naming_it():
    """The first If is refused (its branches give [2] and [1]); the second reads its output from
    inside a branch, which the importer cannot see from the node's inputs."""
    model = _if_model((2,))
    inner = helper.make_graph([helper.make_node("Identity", ["step"], ["z_then"])], "t", [],
                              [helper.make_tensor_value_info("z_then", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z_else"])], "e", [],
                              [helper.make_tensor_value_info("z_else", F, None)])
    model.graph.node.append(_const("yes", True, B))
    model.graph.node.append(helper.make_node("If", ["yes"], ["z"], then_branch=inner, else_branch=other,
                                             name="later"))
    model.graph.output.append(helper.make_tensor_value_info("z", F, None))
    with pytest.raises(UnsupportedOpError) as info:
        ember.frontends.load(model)
    msg = str(info.value)
    assert "'pick'" in msg and "'later'" in msg and "reads 'step', which was not imported" in msg


@pytest.mark.parametrize("a,b,want", [
    ((), (1,), (1,)), ((3,), (1, 3), (1, 3)), ((1, "n"), ("n",), (1, "n")), ((2, 3), (2, 3), (2, 3)),
    (("n", 1), ("n",), None),
    ((1, 3), (3, 1), None), ((2,), (1,), None), (("n",), ("m",), None), ((2,), (3,), None),
])
def test_selected_shape(a, b, want):
    assert selected_shape(a, b) == want
