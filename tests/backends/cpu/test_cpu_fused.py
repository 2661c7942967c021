"""Fused layers against the unfused composition of the same ops, on every tactic."""
from __future__ import annotations

import numpy as np
import pytest
from cpukit import assert_same, ember_runs  # tests/backends/cpu/cpukit.py

from ember.backends.cpu import evaluate
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    Activation,
    ClipAttrs,
    ConvAttrs,
    FusedAttentionAttrs,
    FusedConvAttrs,
    FusedGemmAttrs,
    GeluAttrs,
    GemmAttrs,
    HardSigmoidAttrs,
    LeakyReluAttrs,
    SoftmaxAttrs,
)

F32 = np.float32

#: activation -> (params, the unfused node that applies it)
ACTS = {
    Activation.NONE: ((), None),
    Activation.RELU: ((), (OpType.RELU, None)),
    Activation.CLIP: ((0.0, 6.0), (OpType.CLIP, ClipAttrs(0.0, 6.0))),
    Activation.LEAKY_RELU: ((0.1,), (OpType.LEAKY_RELU, LeakyReluAttrs(0.1))),
    Activation.SIGMOID: ((), (OpType.SIGMOID, None)),
    Activation.HARD_SWISH: ((), (OpType.HARD_SWISH, None)),
    Activation.HARD_SIGMOID: ((0.2, 0.5), (OpType.HARD_SIGMOID, HardSigmoidAttrs(0.2, 0.5))),
    Activation.TANH: ((), (OpType.TANH, None)),
    Activation.GELU_ERF: ((), (OpType.GELU, GeluAttrs("none"))),
    Activation.GELU_TANH: ((), (OpType.GELU, GeluAttrs("tanh"))),
}


def _apply(act: Activation, y: np.ndarray) -> np.ndarray:
    if act is Activation.SILU:
        (s,) = evaluate(Node("s", OpType.SIGMOID, ("y",), ("z",)), [y])
        (out,) = evaluate(Node("m", OpType.MUL, ("y", "s"), ("z",)), [y, s])
        return out
    params, unfused = ACTS[act]
    if unfused is None:
        return y
    op, attrs = unfused
    return evaluate(Node("act", op, ("y",), ("z",), attrs), [y])[0]


def _check_all(node: Node, arrays: list, const: set[int], want: np.ndarray, rtol=1e-4, atol=1e-4) -> dict:
    results = ember_runs(node, arrays, const)
    for label, outs in results.items():
        assert_same(outs[0], want, rtol, atol, f"{node.op} [{label}]")
    return results


CONV_GEOS = [
    ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ConvAttrs((1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), group=4),
    ConvAttrs((3, 2), (1, 2), (0, 1, 1, 0), (2, 1)),
]


@pytest.mark.parametrize("act", list(ACTS) + [Activation.SILU])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("geo", CONV_GEOS)
def test_fused_conv(rng, act, residual, geo):
    x = rng.standard_normal((1, 8, 9, 9)).astype(F32)
    w = (rng.standard_normal((8, 8 // geo.group, *geo.kernel_shape)) * 0.3).astype(F32)
    b = rng.standard_normal(8).astype(F32)
    (y,) = evaluate(Node("c", OpType.CONV, ("x", "w", "b"), ("y",), geo), [x, w, b])
    arrays = [x, w, b]
    names = ("x", "w", "b")
    if residual:
        r = rng.standard_normal(y.shape).astype(F32)
        (y,) = evaluate(Node("a", OpType.ADD, ("y", "r"), ("z",)), [y, r])
        arrays.append(r)
        names += ("r",)
    want = _apply(act, y)
    attrs = FusedConvAttrs(geo, act, ACTS.get(act, ((), None))[0], residual)
    node = Node("fc", OpType.FUSED_CONV, names, ("out",), attrs)
    _check_all(node, arrays, {1, 2}, want)


@pytest.mark.parametrize("act", [Activation.NONE, Activation.RELU, Activation.GELU_ERF, Activation.GELU_TANH])
@pytest.mark.parametrize("a_shape,trans_b",
                         [((3, 16), False), ((3, 16), True), ((2, 5, 16), False), ((2, 5, 16), True)])
def test_fused_gemm(rng, act, a_shape, trans_b):
    a = rng.standard_normal(a_shape).astype(F32)
    b = rng.standard_normal((12, 16) if trans_b else (16, 12)).astype(F32)
    c = rng.standard_normal(12).astype(F32)
    bt = b.T.copy() if trans_b else b
    (y,) = evaluate(Node("mm", OpType.MATMUL, ("a", "b"), ("y",)), [a, bt])
    (y,) = evaluate(Node("add", OpType.ADD, ("y", "c"), ("z",)), [y, c])
    want = _apply(act, y)
    attrs = FusedGemmAttrs(GemmAttrs(trans_b=trans_b), act, ACTS[act][0])
    _check_all(Node("fg", OpType.FUSED_GEMM, ("a", "b", "c"), ("out",), attrs), [a, b, c], {1, 2}, want)


def test_fused_gemm_alpha_beta_no_bias(rng):
    a = rng.standard_normal((4, 6)).astype(F32)
    b = rng.standard_normal((6, 3)).astype(F32)
    attrs = FusedGemmAttrs(GemmAttrs(alpha=0.5, beta=3.0, trans_a=False), Activation.RELU)
    want = np.maximum(0.5 * a @ b, 0)
    _check_all(Node("fg", OpType.FUSED_GEMM, ("a", "b"), ("out",), attrs), [a, b], {1}, want, 1e-5, 1e-5)
    c = rng.standard_normal((4, 1)).astype(F32)
    want = np.maximum(0.5 * a @ b + 3.0 * c, 0)
    _check_all(Node("fg", OpType.FUSED_GEMM, ("a", "b", "c"), ("out",), attrs), [a, b, c], {1, 2}, want,
               1e-5, 1e-5)


def _attention_unfused(q, k, v, mask, scale, k_transposed):
    kt = k if k_transposed else np.swapaxes(k, -1, -2)
    (s,) = evaluate(Node("qk", OpType.MATMUL, ("q", "k"), ("s",)), [q, kt])
    (s,) = evaluate(Node("sc", OpType.MUL, ("s", "c"), ("t",)), [s, np.array(scale, F32)])
    if mask is not None:
        (s,) = evaluate(Node("m", OpType.ADD, ("s", "m"), ("t",)), [s, mask])
    (p,) = evaluate(Node("sm", OpType.SOFTMAX, ("s",), ("p",), SoftmaxAttrs(-1)), [s])
    return evaluate(Node("pv", OpType.MATMUL, ("p", "v"), ("o",)), [p, v])[0]


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 7), (7,), (2, 3, 5, 7), (5, 7)])
@pytest.mark.parametrize("k_transposed", [False, True])
def test_fused_attention(rng, mask_shape, k_transposed):
    q = rng.standard_normal((2, 3, 5, 8)).astype(F32)
    k = rng.standard_normal((2, 3, 7, 8)).astype(F32)
    v = rng.standard_normal((2, 3, 7, 4)).astype(F32)
    mask = None if mask_shape is None else np.where(rng.random(mask_shape) > 0.3, 0, -1e4).astype(F32)
    kk = np.swapaxes(k, -1, -2).copy() if k_transposed else k
    want = _attention_unfused(q, kk, v, mask, 0.35, k_transposed)
    names = ("q", "k", "v") + (("m",) if mask is not None else ())
    arrays = [q, kk, v] + ([mask] if mask is not None else [])
    node = Node("att", OpType.FUSED_ATTENTION, names, ("o",), FusedAttentionAttrs(0.35, k_transposed))
    results = _check_all(node, arrays, set(), want, 1e-5, 1e-5)
    assert "math" in results


def test_fused_attention_broadcast_batch(rng):
    # K/V shared across heads: SDPA does not broadcast batch dims, the kernel must still be exact
    q = rng.standard_normal((2, 3, 4, 8)).astype(F32)
    k = rng.standard_normal((2, 1, 6, 8)).astype(F32)
    v = rng.standard_normal((2, 1, 6, 8)).astype(F32)
    want = _attention_unfused(q, k, v, None, 0.5, False)
    node = Node("att", OpType.FUSED_ATTENTION, ("q", "k", "v"), ("o",), FusedAttentionAttrs(0.5))
    _check_all(node, [q, k, v], set(), want, 1e-5, 1e-5)


def test_fused_elementwise_chain(rng):
    from ember.ops.attrs import FusedElementwiseAttrs, FusedStep

    x = rng.standard_normal((2, 3, 4)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    # y = relu((x + b) * x) - sigmoid(x + b); operands: 0=x, 1=b, then step results 2, 3, ...
    steps = (FusedStep(OpType.ADD, (0, 1)), FusedStep(OpType.MUL, (2, 0)), FusedStep(OpType.RELU, (3,)),
             FusedStep(OpType.SIGMOID, (2,)), FusedStep(OpType.SUB, (4, 5)),
             FusedStep(OpType.CLIP, (6,), ClipAttrs(-0.5, 2.0)))
    node = Node("fe", OpType.FUSED_ELEMENTWISE, ("x", "b"), ("y",), FusedElementwiseAttrs(steps))
    s = x + b
    want = np.clip(np.maximum(s * x, 0) - 1 / (1 + np.exp(-s)), -0.5, 2.0)
    x_before = x.copy()
    _check_all(node, [x, b], set(), want, 1e-5, 1e-6)
    np.testing.assert_array_equal(x, x_before)  # inputs are never written


def test_fused_elementwise_does_not_overwrite_a_shared_intermediate(rng):
    from ember.ops.attrs import FusedElementwiseAttrs, FusedStep

    x = rng.standard_normal((5,)).astype(F32)
    # t = x * 2 is read twice: relu(t) must not change t before t + relu(t)
    steps = (FusedStep(OpType.MUL, (0, 1)), FusedStep(OpType.RELU, (2,)), FusedStep(OpType.ADD, (2, 3)))
    node = Node("fe", OpType.FUSED_ELEMENTWISE, ("x", "two"), ("y",), FusedElementwiseAttrs(steps))
    t = x * 2
    _check_all(node, [x, np.array(2.0, F32)], set(), t + np.maximum(t, 0), 1e-6, 1e-6)


def test_fused_elementwise_never_writes_through_a_noop_step(rng):
    import torch

    from ember.backends.base import CompileContext
    from ember.backends.cpu import CPUBackend
    from ember.ir.graph import Graph
    from ember.ops.attrs import CastAttrs, FusedElementwiseAttrs, FusedStep

    x = torch.from_numpy(rng.standard_normal((5,)).astype(F32))
    # Cast to the same dtype hands back x itself; the Relu after it must not write into x
    steps = (FusedStep(OpType.CAST, (0,), CastAttrs("float32")), FusedStep(OpType.RELU, (1,)))
    node = Node("fe", OpType.FUSED_ELEMENTWISE, ("x",), ("y",), FusedElementwiseAttrs(steps))
    kernel = CPUBackend().compile_node(node, CompileContext(Graph("g", [], [], [], {}), {}, torch.device("cpu")))
    before = x.clone()
    (y,) = kernel([x])
    torch.testing.assert_close(y, torch.relu(before))
    torch.testing.assert_close(x, before)


@pytest.mark.parametrize("tactic", ["", "math"])
def test_fused_attention_of_a_half_model_rounds_once_in_an_fp32_layer(rng, tactic):
    """A model typed float16 whose attention the optimizer fused: an fp32 layer computes it in
    float32 and rounds the output once, as the unfused graph rounds only its ops' outputs (fused
    in half, the scores and probabilities would round at each step); a layer the build made fp16
    keeps half compute."""
    import torch
    import torch.nn.functional as tf

    from ember.backends.base import CompileContext
    from ember.backends.cpu import CPUBackend
    from ember.ir import DType, Graph, TensorType

    q, k, v = (torch.from_numpy(rng.standard_normal(s).astype(np.float16)) for s in ((2, 3, 4, 8), (2, 3, 6, 8),
                                                                                     (2, 3, 6, 8)))
    types = {n: TensorType(DType.FLOAT16, tuple(t.shape)) for n, t in zip("qkv", (q, k, v))}
    node = Node("att", OpType.FUSED_ATTENTION, ("q", "k", "v"), ("o",), FusedAttentionAttrs(0.35, False))
    types["o"] = TensorType(DType.FLOAT16, (2, 3, 4, 8))
    graph = Graph("g", [node], ["q", "k", "v"], ["o"], types, {})
    want = tf.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.35).half()
    for precision in ("fp32", "fp16"):
        kernel = CPUBackend().compile_node(node, CompileContext(graph, {}, torch.device("cpu"), tactic, precision))
        y = kernel([q, k, v])[0]
        assert y.dtype == torch.float16
        if precision == "fp32":
            torch.testing.assert_close(y, want, rtol=0, atol=0)
        else:
            torch.testing.assert_close(y.float(), want.float(), rtol=1e-2, atol=1e-2)
