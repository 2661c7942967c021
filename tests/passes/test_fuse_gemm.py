"""MatMul/Gemm + bias + scale + activation -> FusedGemm; GELU spellings -> Gelu; vs ONNX Runtime."""
import math

import numpy as np
import pytest
from onnx import helper as oh

from ember.ops.attrs import Activation

from passkit import check_against_ort, onnx_model, ops, rng_const

X = {"x": (2, 3, 4)}


def linear(y="h"):
    return [oh.make_node("MatMul", ["x", "w"], ["mm"], name="fc"), oh.make_node("Add", ["mm", "b"], [y], name="bias")]


def inits(**more):
    return {"w": rng_const(4, 5), "b": rng_const(5, seed=1), **more}


def erf_gelu(x, y):
    """torch.onnx's spelling: x * (1 + erf(x / sqrt2)) * 0.5."""
    return [oh.make_node("Div", [x, "sqrt2"], ["gd"], name="gelu/div"),
            oh.make_node("Erf", ["gd"], ["ge"], name="gelu/erf"),
            oh.make_node("Add", ["ge", "one"], ["ga"], name="gelu/add"),
            oh.make_node("Mul", [x, "ga"], ["gm"], name="gelu/mul"),
            oh.make_node("Mul", ["gm", "half"], [y], name="gelu/mul2")]


def tanh_gelu(x, y):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    return [oh.make_node("Pow", [x, "three"], ["t3"], name="gelu/pow"),
            oh.make_node("Mul", ["t3", "c"], ["tc"], name="gelu/mulc"),
            oh.make_node("Add", [x, "tc"], ["ti"], name="gelu/inner"),
            oh.make_node("Mul", ["ti", "k"], ["tk"], name="gelu/mulk"),
            oh.make_node("Tanh", ["tk"], ["tt"], name="gelu/tanh"),
            oh.make_node("Add", ["one", "tt"], ["ta"], name="gelu/add"),
            oh.make_node("Mul", ["half", x], ["th"], name="gelu/half"),
            oh.make_node("Mul", ["th", "ta"], [y], name="gelu/out")]


GELU_CONSTS = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5),
               "three": np.float32(3), "c": np.float32(0.044715), "k": np.float32(math.sqrt(2 / math.pi))}


def test_matmul_bias_becomes_fused_gemm():
    out = check_against_ort(onnx_model(linear("y"), X, ["y"], inits()))
    assert ops(out) == ["FusedGemm"]
    assert out.nodes[0].display_name == "fc + bias" and out.nodes[0].rule == "matmul(x, w) + b => gemm(x, w, b)"


@pytest.mark.parametrize("spelling, act", [("erf", Activation.GELU_ERF), ("tanh", Activation.GELU_TANH)])
def test_spelled_out_gelu_after_linear_fuses_into_the_gemm(spelling, act):
    gelu = erf_gelu if spelling == "erf" else tanh_gelu
    out = check_against_ort(onnx_model(linear() + gelu("h", "y"), X, ["y"], inits(**GELU_CONSTS)))
    assert ops(out) == ["FusedGemm"] and out.nodes[0].attrs.activation is act
    assert out.nodes[0].origin[:2] == ("fc", "bias") and out.nodes[0].origin[-1].startswith("gelu/")


def test_spelled_out_gelu_alone_becomes_one_gelu_node():
    out = check_against_ort(onnx_model(erf_gelu("x", "y"), X, ["y"], GELU_CONSTS))
    assert ops(out) == ["Gelu"] and out.nodes[0].attrs.approximate == "none"
    assert len(out.nodes[0].origin) == 5


def test_gelu_with_a_wrong_constant_is_not_gelu():
    consts = {**GELU_CONSTS, "sqrt2": np.float32(1.5)}
    out = check_against_ort(onnx_model(erf_gelu("x", "y"), X, ["y"], consts))
    assert "Gelu" not in ops(out)


def test_gemm_relu_and_scale_fold():
    nodes = [oh.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc", transB=1),
             oh.make_node("Mul", ["g", "s"], ["m"], name="scale"), oh.make_node("Relu", ["m"], ["y"], name="relu")]
    out = check_against_ort(onnx_model(nodes, {"x": (3, 4)}, ["y"],
                                       {"w": rng_const(5, 4), "b": rng_const(5), "s": rng_const(5, seed=2)}))
    assert ops(out) == ["FusedGemm"] and out.nodes[0].attrs.activation is Activation.RELU
    assert out.nodes[0].display_name == "fc + scale + relu"


def test_matmul_of_two_activations_is_not_a_gemm():
    nodes = [oh.make_node("MatMul", ["x", "z"], ["mm"], name="bmm"),
             oh.make_node("Add", ["mm", "b"], ["y"], name="bias")]
    out = check_against_ort(onnx_model(nodes, {"x": (2, 3, 4), "z": (2, 4, 5)}, ["y"], {"b": rng_const(5)}))
    assert ops(out) == ["MatMul", "Add"]


def test_bias_that_is_not_per_feature_stays_an_add():
    out = check_against_ort(onnx_model(linear("y"), X, ["y"], inits(b=rng_const(3, 5))))
    assert ops(out) == ["MatMul", "Add"]
