"""Attention (MatMul-scale-mask-Softmax-MatMul) -> FusedAttention, vs ONNX Runtime."""
import numpy as np
import pytest
from onnx import helper as oh

from passkit import check_against_ort, onnx_model, ops, rng_const

QKV = {"q": (1, 2, 4, 8), "kt": (1, 2, 8, 4), "v": (1, 2, 4, 8), "mask": (1, 1, 1, 4)}


def attention(normalizer="Softmax", scale_op="Div", mask=True, axis=-1):
    nodes = [oh.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             oh.make_node(scale_op, ["s", "scale"], ["ss"], name="scale")]
    logits = "ss"
    if mask:
        nodes.append(oh.make_node("Add", ["mask", "ss"], ["sm"], name="mask"))
        logits = "sm"
    kwargs = {"axis": axis} if normalizer == "Softmax" else {}
    nodes += [oh.make_node(normalizer, [logits], ["p"], name="softmax", **kwargs),
              oh.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    return nodes


def feeds():
    return {k: rng_const(*s, seed=i) for i, (k, s) in enumerate(QKV.items())}


@pytest.mark.parametrize("scale_op, mask", [("Div", True), ("Mul", False)])
def test_attention_becomes_one_layer(scale_op, mask):
    inputs = QKV if mask else {k: v for k, v in QKV.items() if k != "mask"}
    scale = np.float32(np.sqrt(8.0) if scale_op == "Div" else 1 / np.sqrt(8.0))
    model = onnx_model(attention(scale_op=scale_op, mask=mask), inputs, ["y"], {"scale": scale})
    f = {k: v for k, v in feeds().items() if k in inputs}
    out = check_against_ort(model, feeds=f)
    assert ops(out) == ["FusedAttention"]
    node = out.nodes[0]
    assert abs(node.attrs.scale - 1 / np.sqrt(8.0)) < 1e-6 and node.attrs.k_transposed
    assert node.inputs == (("q", "kt", "v", "mask") if mask else ("q", "kt", "v"))
    assert node.display_name == " + ".join(["qk", "scale"] + (["mask"] if mask else []) + ["softmax", "pv"])


@pytest.mark.parametrize("normalizer", ["Sigmoid", "Relu", "LogSoftmax"])
def test_non_softmax_normalizer_is_not_attention(normalizer):
    model = onnx_model(attention(normalizer), QKV, ["y"], {"scale": np.float32(2.0)})
    out = check_against_ort(model, feeds=feeds())
    assert "FusedAttention" not in ops(out)


def test_softmax_over_another_axis_is_not_attention():
    model = onnx_model(attention(axis=2), QKV, ["y"], {"scale": np.float32(2.0)})
    out = check_against_ort(model, feeds=feeds())
    assert "FusedAttention" not in ops(out)


def test_attention_whose_probabilities_are_an_output_stays_apart():
    model = onnx_model(attention(), QKV, ["y", "p"], {"scale": np.float32(2.0)})
    out = check_against_ort(model, feeds=feeds())
    assert "FusedAttention" not in ops(out)
