"""LRN on oneDNN's primitive (Ember's extension) for channels-last float32 / bfloat16 inputs with
an odd window: the ONNX formula's numbers, NaN and infinities included, as the tensor-operation
path (``pool.lrn``) computes them; other inputs take that path; ONNX Runtime agrees on a model."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu.kernels.pool import lrn, lrn_kernel
from ember.ir import Graph, Node, OpType
from ember.ops.attrs import LRNAttrs
from ember.plan.config import Precision

CL = torch.channels_last


def _kernel(a: LRNAttrs):
    node = Node("lrn", OpType.LRN, ("x",), ("y",), a)
    return lrn_kernel(node, CompileContext(Graph("g", [node], ["x"], ["y"], {}), {}, torch.device("cpu"), "",
                                           Precision.FP32))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_the_native_lrn_computes_the_onnx_formula(ext: Any, dtype: torch.dtype, tol: float, size: int):
    a = LRNAttrs(size=size, alpha=2e-3, beta=0.75, bias=1.5)
    x = (torch.randn(2, 24, 7, 5, generator=torch.Generator().manual_seed(size)) * 4).to(dtype)
    x = x.contiguous(memory_format=CL)
    got = _kernel(a)([x])[0]
    want = lrn(x.float(), a)
    assert got.dtype == dtype and got.is_contiguous(memory_format=CL)
    assert float((got.float() - want).abs().max() / want.abs().max()) < tol


def test_nan_and_infinity_come_out_as_the_formula_gives_them(ext: Any):
    a = LRNAttrs(size=5, alpha=1e-4, beta=0.75, bias=1.0)
    x = torch.randn(1, 16, 4, 4).contiguous(memory_format=CL)
    x[0, 3, 1, 1], x[0, 9, 2, 2], x[0, 12, 0, 3] = float("nan"), float("inf"), float("-inf")
    got, want = _kernel(a)([x])[0], lrn(x, a)
    np.testing.assert_array_equal(torch.isnan(got).numpy(), torch.isnan(want).numpy())
    torch.testing.assert_close(torch.nan_to_num(got), torch.nan_to_num(want), rtol=1e-5, atol=1e-6)


def test_other_inputs_take_the_tensor_path(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """An even window (oneDNN centres it otherwise than ONNX), an NCHW tensor, float64, or the
    extension switched off: ``lrn`` itself, the same numbers."""
    x = torch.randn(1, 10, 3, 3, dtype=torch.float64)
    for a, t in ((LRNAttrs(size=4), x.float().contiguous(memory_format=CL)), (LRNAttrs(size=5), x.float()),
                 (LRNAttrs(size=5), x)):
        torch.testing.assert_close(_kernel(a)([t])[0], lrn(t, a), rtol=0, atol=0)
    monkeypatch.setenv("EMBER_ONEDNN_PERSISTENT", "0")
    t = x.float().contiguous(memory_format=CL)
    torch.testing.assert_close(_kernel(LRNAttrs(size=5))([t])[0], lrn(t, LRNAttrs(size=5)), rtol=0, atol=0)


def test_an_engine_with_lrn_after_a_convolution_matches_onnxruntime(ext: Any):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array((rng.standard_normal((32, 3, 3, 3)) * 0.5).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("LRN", ["c"], ["y"], size=5, alpha=1e-3, beta=0.75, bias=2.0)]
    g = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32, 10, 10])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32) * 3
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"x": x})["y"])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_parameters_onednn_refuses_fall_back_to_the_tensor_operations(ext: Any, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(ext, "Lrn", refuse)
    a = LRNAttrs(size=5)
    x = torch.randn(1, 8, 3, 3).contiguous(memory_format=CL)
    kernel = _kernel(a)
    for _ in range(2):
        torch.testing.assert_close(kernel([x])[0], lrn(x, a), rtol=0, atol=0)
    assert len(calls) == 1  # refused once, remembered
