"""Decomposed LayerNorm -> LayerNormalization; residual Add + LayerNorm -> SkipLayerNormalization;
vs ONNX Runtime."""
import numpy as np
import pytest
from onnx import helper as oh

from passkit import check_against_ort, onnx_model, ops, rng_const

X = {"x": (2, 3, 8)}


def layernorm(x, y, square="pow", divide="div", axes=(-1,), affine=True):
    nodes = [oh.make_node("ReduceMean", [x], ["mu"], name="ln/mean", axes=list(axes)),
             oh.make_node("Sub", [x, "mu"], ["d"], name="ln/sub")]
    nodes.append(oh.make_node("Pow", ["d", "two"], ["sq"], name="ln/pow") if square == "pow"
                 else oh.make_node("Mul", ["d", "d"], ["sq"], name="ln/sq"))
    nodes += [oh.make_node("ReduceMean", ["sq"], ["var"], name="ln/var", axes=list(axes)),
              oh.make_node("Add", ["var", "eps"], ["ve"], name="ln/eps"),
              oh.make_node("Sqrt", ["ve"], ["std"], name="ln/sqrt")]
    norm = "n" if affine else y
    if divide == "div":
        nodes.append(oh.make_node("Div", ["d", "std"], [norm], name="ln/div"))
    else:
        nodes += [oh.make_node("Reciprocal", ["std"], ["inv"], name="ln/recip"),
                  oh.make_node("Mul", ["d", "inv"], [norm], name="ln/div")]
    if affine:
        nodes += [oh.make_node("Mul", ["n", "gamma"], ["ng"], name="ln/gamma"),
                  oh.make_node("Add", ["ng", "beta"], [y], name="ln/beta")]
    return nodes


CONSTS = {"two": np.float32(2), "eps": np.float32(1e-5), "gamma": rng_const(8, low=0.5, high=1.5),
          "beta": rng_const(8, seed=3)}


@pytest.mark.parametrize("square, divide", [("pow", "div"), ("mul", "recip")])
def test_decomposed_layernorm_becomes_one_node(square, divide):
    out = check_against_ort(onnx_model(layernorm("x", "y", square, divide), X, ["y"], CONSTS, opset=13))
    assert ops(out) == ["LayerNormalization"]
    ln = out.nodes[0]
    assert ln.attrs.axis == -1 and abs(ln.attrs.epsilon - 1e-5) < 1e-9
    assert ln.origin[0] == "ln/mean" and ln.origin[-1] == "ln/beta" and len(ln.origin) == 9 + (divide != "div")


def test_a_residual_add_before_layernorm_is_absorbed():
    nodes = [oh.make_node("Add", ["x", "r"], ["s"], name="residual")] + layernorm("s", "y")
    out = check_against_ort(onnx_model(nodes, {**X, "r": (2, 3, 8)}, ["y"], CONSTS))
    assert ops(out) == ["SkipLayerNormalization"]
    skip = out.nodes[0]
    assert skip.inputs[:2] == ("x", "r") and skip.origin[0] == "residual" and skip.attrs.axis == -1
    assert "skip_layer_norm" in skip.rule and skip.name == "ln/mean"


def test_onnx_layernormalization_after_an_add_over_two_axes():
    nodes = [oh.make_node("Add", ["x", "r"], ["s"], name="residual"),
             oh.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], name="ln", axis=-2)]
    consts = {"gamma": rng_const(3, 8), "beta": rng_const(3, 8, seed=2)}
    out = check_against_ort(onnx_model(nodes, {**X, "r": (2, 3, 8)}, ["y"], consts, opset=17))
    assert ops(out) == ["SkipLayerNormalization"] and out.nodes[0].attrs.axis == -2


@pytest.mark.parametrize("case", ["broadcast", "second_reader", "stats"])
def test_residual_adds_that_stay(case):
    r_shape = (8,) if case == "broadcast" else (2, 3, 8)
    ln_outputs = ["y", "mean"] if case == "stats" else ["y"]
    nodes = [oh.make_node("Add", ["x", "r"], ["s"], name="residual"),
             oh.make_node("LayerNormalization", ["s", "gamma", "beta"], ln_outputs, name="ln", axis=-1)]
    outputs = list(ln_outputs)
    if case == "second_reader":
        nodes.append(oh.make_node("Relu", ["s"], ["z"], name="other"))
        outputs.append("z")
    consts = {"gamma": rng_const(8), "beta": rng_const(8, seed=2)}
    out = check_against_ort(onnx_model(nodes, {**X, "r": r_shape}, outputs, consts, opset=17))
    assert "SkipLayerNormalization" not in ops(out) and "Add" in ops(out)


def test_layernorm_over_two_trailing_axes():
    consts = {**CONSTS, "gamma": rng_const(3, 8), "beta": rng_const(3, 8, seed=2)}
    out = check_against_ort(onnx_model(layernorm("x", "y", axes=(1, 2)), X, ["y"], consts))
    assert ops(out) == ["LayerNormalization"] and out.nodes[0].attrs.axis == -2


def test_normalizing_a_leading_axis_is_not_layernorm():
    consts = {**CONSTS, "gamma": rng_const(3, 1), "beta": rng_const(3, 1, seed=2)}
    out = check_against_ort(onnx_model(layernorm("x", "y", axes=(1,)), X, ["y"], consts))
    assert "LayerNormalization" not in ops(out)


def test_mean_with_a_second_reader_blocks_the_fusion():
    nodes = layernorm("x", "y") + [oh.make_node("Relu", ["mu"], ["z"], name="other")]
    out = check_against_ort(onnx_model(nodes, X, ["y", "z"], CONSTS))
    assert "LayerNormalization" not in ops(out)


def test_affine_after_layernorm_over_a_symbolic_dim_is_left_alone():
    """A scale after a LayerNorm whose normalized dim is symbolic cannot be folded into its weights
    (the folded weight's shape is unknown): the rule declines instead of failing the build."""
    from ember.ir import DType, Node, OpType
    from ember.ops.attrs import LayerNormAttrs

    from passkit import ir_graph, run_pass

    nodes = [Node("ln", OpType.LAYER_NORM, ("x", "s"), ("n",), LayerNormAttrs(-1, 1e-5)),
             Node("mul", OpType.MUL, ("n", "c"), ("y",))]
    g = ir_graph(nodes, {"x": ((2, "hidden"), DType.FLOAT32)}, ["y"],
                 {"s": np.ones(4, np.float32), "c": np.array([2.0], np.float32)})
    out, fired = run_pass(g, "fuse_layernorm")
    assert [n.op for n in out.nodes] == [OpType.LAYER_NORM, OpType.MUL] and not fired
