"""Conv + bias + residual + activation -> FusedConv, checked against ONNX Runtime."""
import numpy as np
import pytest
from onnx import helper as oh

from ember.ops.attrs import Activation

from passkit import check_against_ort, onnx_model, ops, rng_const


def conv(name, x, y, w="w", b="b", k=3):
    return oh.make_node("Conv", [x, w, b] if b else [x, w], [y], name=name, pads=[k // 2] * 4)


def weights(cin=3, cout=4, k=3):
    return {"w": rng_const(cout, cin, k, k), "b": rng_const(cout, seed=1)}


X = {"x": (1, 3, 6, 6)}

ACTIVATIONS = [
    ("relu", [oh.make_node("Relu", ["c"], ["y"], name="act")], {}, Activation.RELU, ()),
    ("relu6", [oh.make_node("Clip", ["c", "lo", "hi"], ["y"], name="act")],
     {"lo": np.float32(0), "hi": np.float32(6)}, Activation.CLIP, (0.0, 6.0)),
    ("leaky", [oh.make_node("LeakyRelu", ["c"], ["y"], name="act", alpha=0.1)], {}, Activation.LEAKY_RELU, (0.1,)),
    ("sigmoid", [oh.make_node("Sigmoid", ["c"], ["y"], name="act")], {}, Activation.SIGMOID, ()),
    ("silu", [oh.make_node("Sigmoid", ["c"], ["g"], name="gate"), oh.make_node("Mul", ["c", "g"], ["y"], name="act")],
     {}, Activation.SILU, ()),
    ("hardswish", [oh.make_node("HardSwish", ["c"], ["y"], name="act")], {}, Activation.HARD_SWISH, ()),
    ("hardswish_old", [oh.make_node("HardSigmoid", ["c"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
                       oh.make_node("Mul", ["g", "c"], ["y"], name="act")], {}, Activation.HARD_SWISH, ()),
]


@pytest.mark.parametrize("label, act_nodes, extra, act, params", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_conv_activation_fuses(label, act_nodes, extra, act, params):
    model = onnx_model([conv("conv", "x", "c")] + act_nodes, X, ["y"], {**weights(), **extra})
    out = check_against_ort(model)
    assert ops(out) == ["FusedConv"]
    node = out.nodes[0]
    assert node.attrs.activation is act and tuple(round(p, 6) for p in node.attrs.act_params) == params
    assert node.origin[0] == "conv" and node.origin[-1] == "act"
    assert node.rule.startswith("conv(x, w, b) -> ")


def test_conv_residual_relu_fuses_into_one_layer():
    nodes = [conv("conv", "x", "c", w="w"), oh.make_node("Add", ["c", "x"], ["s"], name="add"),
             oh.make_node("Relu", ["s"], ["y"], name="relu")]
    out = check_against_ort(onnx_model(nodes, X, ["y"], weights(3, 3)))
    assert ops(out) == ["FusedConv"]
    node = out.nodes[0]
    assert node.attrs.has_residual and node.attrs.activation is Activation.RELU
    assert node.inputs[3] == "x" and node.display_name == "conv + add + relu"
    assert node.rule == "conv(x, w, b) + r => conv_add(x, w, b, r) ; conv(x, w, b) -> relu => conv_relu(x, w, b)"


def test_projection_shortcut_the_later_conv_takes_the_residual():
    nodes = [conv("short", "x", "s", w="w2", b="", k=1), conv("main", "x", "m", w="w"),
             oh.make_node("Add", ["s", "m"], ["a"], name="add"), oh.make_node("Relu", ["a"], ["y"], name="relu")]
    inits = {**weights(), "w2": rng_const(4, 3, 1, 1, seed=3)}
    out = check_against_ort(onnx_model(nodes, X, ["y"], inits))
    assert ops(out) == ["Conv", "FusedConv"]
    assert out.nodes[1].display_name == "main + add + relu" and out.nodes[1].inputs[3] == "s"


def test_conv_with_a_second_reader_does_not_fuse():
    nodes = [conv("conv", "x", "c"), oh.make_node("Relu", ["c"], ["y"], name="relu"),
             oh.make_node("Sigmoid", ["c"], ["z"], name="other")]
    out = check_against_ort(onnx_model(nodes, X, ["y", "z"], weights()))
    assert ops(out) == ["Conv", "Relu", "Sigmoid"]


def test_conv_output_that_is_a_graph_output_does_not_fuse():
    nodes = [conv("conv", "x", "c"), oh.make_node("Relu", ["c"], ["y"], name="relu")]
    out = check_against_ort(onnx_model(nodes, X, ["y", "c"], weights()))
    assert ops(out) == ["Conv", "Relu"]


def test_add_that_broadcasts_is_not_a_residual():
    nodes = [conv("conv", "x", "c"), oh.make_node("Add", ["c", "r"], ["y"], name="add")]
    out = check_against_ort(onnx_model(nodes, {**X, "r": (1, 4, 1, 6)}, ["y"], weights()),
                            feeds={"x": rng_const(1, 3, 6, 6), "r": rng_const(1, 4, 1, 6)})
    assert ops(out) == ["Conv", "Add"]


def test_optimize_false_keeps_layers_apart_but_folds():
    nodes = [conv("conv", "x", "c"), oh.make_node("Relu", ["c"], ["y"], name="relu")]
    out = check_against_ort(onnx_model(nodes, X, ["y"], weights()), optimize=False)
    assert ops(out) == ["Conv", "Relu"]
