"""The activation table (``ember.backends.activations``): one row per ``Activation``, in-place
forms equal to the out-of-place ones (NaN and infinities included), and each library's names
exactly as they were before the table replaced the per-backend copies."""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ember.backends import activations as acts
from ember.backends.activations import (
    ACTIVATIONS,
    RNN_ACTIVATIONS,
    ActivationRow,
    OneDNNPostOp,
    activation_fn,
    inplace_activation,
    onednn_postop,
)
from ember.ops.attrs import Activation, activation_params

A = Activation

#: Parameters each activation is checked with: none (defaults), and explicit ones.
PARAMS: dict[Activation, list[tuple[float, ...]]] = {
    A.CLIP: [(), (0.0, 6.0), (-1.0,), (-0.5, 0.5)],
    A.LEAKY_RELU: [(), (0.2,)],
    A.HARD_SIGMOID: [(), (0.3, 0.4), (1 / 6, 0.5)],
}
CASES = [(a, p) for a in Activation for p in PARAMS.get(a, [()])]


def test_every_activation_has_exactly_one_row():
    assert set(ACTIVATIONS) == set(Activation)
    assert all(isinstance(r, ActivationRow) and ACTIVATIONS[a].act is a for a, r in ACTIVATIONS.items())


def test_a_missing_or_doubled_row_fails_at_import():
    rows = acts._ROWS
    with pytest.raises(RuntimeError, match="no row for Activation GELU_TANH"):
        acts._index([r for r in rows if r.act is not A.GELU_TANH])
    with pytest.raises(RuntimeError, match="two rows"):
        acts._index([*rows, rows[0]])


def _data(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 3.0, -3.0, 1e-8, -1e-8, 6.0])
    x = torch.cat([torch.randn(4000, generator=g) * 4, special, -special])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act,params", CASES, ids=[f"{a.name}{p}" for a, p in CASES])
def test_inplace_form_equals_the_out_of_place_one(act, params, dtype):
    x = _data(dtype)
    fn = activation_fn(act, params)
    assert (fn is None) == (act is A.NONE)
    fn = fn or (lambda t: t.clone())
    inplace = inplace_activation(act, params)
    assert inplace is not None, f"{act} has no in-place form"
    y = x.clone()
    inplace(y)
    torch.testing.assert_close(y, fn(x), rtol=0, atol=0, equal_nan=True)
    # on a strided view of a wider buffer (aten's strided loop, which may round differently from
    # its vectorized one: compared with the out-of-place form on the same view), the neighbours
    # untouched
    buf = torch.stack([x.clone(), torch.full_like(x, 7.0)], 1)
    ref = fn(buf.clone()[:, 0])
    inplace(buf[:, 0])
    torch.testing.assert_close(buf[:, 0], ref, rtol=0, atol=0, equal_nan=True)
    assert bool((buf[:, 1] == 7.0).all())


@pytest.mark.parametrize("act,params", CASES, ids=[f"{a.name}{p}" for a, p in CASES])
def test_out_of_place_form_is_the_onnx_function(act, params):
    x = _data(torch.float64)
    p = activation_params(act, params)
    expect = {
        A.NONE: lambda: x,
        A.RELU: lambda: torch.where(x > 0, x, torch.zeros_like(x)).where(~x.isnan(), x),
        A.CLIP: lambda: torch.minimum(torch.maximum(x, torch.tensor(p[0], dtype=x.dtype)),
                                      torch.tensor(p[1], dtype=x.dtype)),
        A.LEAKY_RELU: lambda: torch.where(x < 0, x * p[0], x),
        A.SIGMOID: lambda: 1 / (1 + torch.exp(-x)),
        A.SILU: lambda: x / (1 + torch.exp(-x)),
        A.HARD_SWISH: lambda: x * torch.clamp(x / 6 + 0.5, 0, 1),
        A.HARD_SIGMOID: lambda: torch.clamp(x * p[0] + p[1], 0, 1),
        A.TANH: lambda: torch.tanh(x),
        A.GELU_ERF: lambda: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        A.GELU_TANH: lambda: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    }[act]()
    fn = activation_fn(act, params)
    got = fn(x) if fn is not None else x
    torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-12, equal_nan=True)


# ---- each library's names, as the per-backend tables had them -------------------------------
def test_onednn_postops_are_the_former_conv_table():
    expect = {
        A.NONE: ("none", [], ""), A.SIGMOID: ("sigmoid", [], ""),
        A.TANH: ("tanh", [], ""), A.SILU: ("swish", [], ""), A.HARD_SWISH: ("hardswish", [], ""),
        A.GELU_TANH: ("gelu", [], "tanh"),
        A.LEAKY_RELU: ("leaky_relu", [0.01], ""),
        A.HARD_SIGMOID: None,  # ONNX's default (0.2, 0.5) is not oneDNN's hardsigmoid
        # oneDNN's relu and hardtanh turn NaN into 0 (tests/backends/cpu/test_nan_propagation.py)
        A.RELU: None, A.CLIP: None,
        A.GELU_ERF: None,  # oneDNN's gelu_erf turns +inf into NaN (ONNX Runtime: +inf)
    }
    for act, want in expect.items():
        got = onednn_postop(act, ())
        assert (got.args() if got is not None else None) == want, act
    assert onednn_postop(A.LEAKY_RELU, (0.3,)).args() == ("leaky_relu", [0.3], "")
    assert onednn_postop(A.CLIP, (0.0, 6.0)) is None
    assert onednn_postop(A.HARD_SIGMOID, (1 / 6, 0.5)) == OneDNNPostOp("hardsigmoid")
    assert onednn_postop(A.HARD_SIGMOID, (0.2, 0.5)) is None


def test_library_names_are_the_former_tables():
    triton = {A.NONE: 0, A.RELU: 1, A.CLIP: 2, A.LEAKY_RELU: 3, A.SIGMOID: 4, A.SILU: 5, A.HARD_SWISH: 6,
              A.HARD_SIGMOID: 7, A.TANH: 8, A.GELU_ERF: 9, A.GELU_TANH: 10}
    assert {a: r.triton for a, r in ACTIVATIONS.items()} == triton
    assert {a: r.cudnn_graph for a, r in ACTIVATIONS.items() if r.cudnn_graph} == {
        A.NONE: "none", A.RELU: "relu", A.CLIP: "clip"}
    assert {a: r.cublaslt for a, r in ACTIVATIONS.items() if r.cublaslt} == {
        A.NONE: "BIAS", A.RELU: "RELU_BIAS", A.GELU_TANH: "GELU_BIAS"}
    assert dict(RNN_ACTIVATIONS) == {"Relu": A.RELU, "LeakyRelu": A.LEAKY_RELU, "Sigmoid": A.SIGMOID,
                                     "HardSigmoid": A.HARD_SIGMOID, "Tanh": A.TANH}


def test_cuda_tables_read_the_rows():
    """The CUDA modules' derived tables (they import without a GPU or Triton)."""
    from ember.backends.cuda.kernels import conv_cudnn_graph, gemm
    from ember.backends.cuda.libs.triton_ops import ACT_CODES, EPILOGUE_ACTIVATIONS

    assert ACT_CODES == {a: r.triton for a, r in ACTIVATIONS.items()}
    assert EPILOGUE_ACTIVATIONS == frozenset(Activation)
    # torch._addmm_activation: bias + ReLU, bias + tanh-GELU (use_gelu), nothing else
    assert {a: gemm._lt_epilogue(a) for a in Activation if gemm._lt_epilogue(a) is not None} == {
        A.RELU: False, A.GELU_TANH: True}
    assert {a for a in Activation if conv_cudnn_graph._graph_act(a) is not None} == {A.NONE, A.RELU, A.CLIP}


def test_triton_codes_are_the_branches_of_activate():
    """Each code has its branch in ``triton_jit.activate`` (read as text: Triton may be absent)."""
    spec = importlib.util.find_spec("ember.backends.cuda.libs.triton_jit")
    assert spec is not None and spec.origin
    src = Path(spec.origin).read_text()
    body = src[src.index("def activate("):src.index("return x", src.index("def activate("))]
    branches = {int(c) for c in re.findall(r"ACT == (\d+)", body)}
    codes = [r.triton for r in ACTIVATIONS.values() if r.triton is not None]
    assert len(codes) == len(set(codes)), "two activations share a Triton code"
    assert set(codes) - {0} == branches  # 0: NONE, no branch


def test_rnn_only_activations_are_not_in_the_table():
    from ember.backends.cpu.kernels.recurrent import RNN_ONLY

    assert not set(RNN_ONLY) & set(RNN_ACTIVATIONS)
    x = _data(torch.float32)
    torch.testing.assert_close(ACTIVATIONS[A.SIGMOID].fn(())(x), torch.sigmoid(x), equal_nan=True)
    torch.testing.assert_close(F.leaky_relu(x, 0.3), activation_fn(A.LEAKY_RELU, (0.3,))(x), equal_nan=True)
