"""The RNN/GRU/LSTM activation list: table activations and RNN-only ones consume the alphas and
betas in order, with ONNX's defaults where the lists run out; an unknown name names the node.
(The kernels themselves are checked against ONNX Runtime in ``tests/conformance``.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember.backends.cpu.kernels.recurrent import activation_fns
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import RNNAttrs


def _node(activations, alpha=(), beta=()) -> Node:
    attrs = RNNAttrs(hidden_size=4, activations=tuple(activations), activation_alpha=tuple(alpha),
                     activation_beta=tuple(beta))
    return Node("rnn0", OpType.RNN, ("x", "w", "r"), ("y",), attrs)


def test_alphas_and_betas_are_consumed_in_order():
    x = torch.linspace(-6, 6, 101)
    names = ["HardSigmoid", "LeakyRelu", "ScaledTanh", "Elu", "HardSigmoid", "Tanh", "Relu", "Sigmoid"]
    fns = activation_fns(_node(names, alpha=[0.3, 0.05, 2.0], beta=[0.6, 0.5]))
    expect = [
        torch.clamp(0.3 * x + 0.6, 0, 1),      # alpha 0.3, beta 0.6
        F.leaky_relu(x, 0.05),                 # alpha 0.05
        2.0 * torch.tanh(0.5 * x),             # alpha 2.0, beta 0.5
        F.elu(x, 1.0),                         # alphas ran out: default 1.0
        torch.clamp(0.2 * x + 0.5, 0, 1),      # both ran out: defaults 0.2, 0.5
        torch.tanh(x), torch.relu(x), torch.sigmoid(x),
    ]
    assert len(fns) == len(expect)
    for name, fn, want in zip(names, fns, expect):
        torch.testing.assert_close(fn(x), want, msg=name)


def test_an_unknown_activation_is_refused_where_the_attributes_are_made():
    """RNN activations are an enum: a name ONNX does not define never reaches the kernel (the ONNX
    frontend names the node; ``tests/frontends/test_attr_enums.py``)."""
    with pytest.raises(ValueError, match=r"activations=\('Swish',\).*Sigmoid, Tanh"):
        _node(["Swish"])
