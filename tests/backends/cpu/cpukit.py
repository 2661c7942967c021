"""Oracle helpers for the CPU kernel tests: one ONNX node run by ONNX Runtime (or the ONNX
reference evaluator) against the same node run by Ember's CPU kernels, every tactic."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend, evaluate
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType


def onnx_model(op: str, inputs: dict[str, Optional[np.ndarray]], attrs: dict, n_out: int,
               opset: int) -> onnx.ModelProto:
    names = [k if v is not None else "" for k, v in inputs.items()]
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    g_inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for k, v in inputs.items() if v is not None]
    g_outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in outs]
    graph = helper.make_graph([node], "single", g_inputs, g_outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_oracle(model: onnx.ModelProto, feeds: dict[str, np.ndarray], oracle: str) -> list[np.ndarray]:
    if oracle == "ort":
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    return list(ReferenceEvaluator(model).run(None, feeds))


def ember_runs(node: Node, arrays: list[Optional[np.ndarray]], const: set[int]) -> dict[str, list]:
    """Outputs of ``evaluate`` and of every tactic of ``node`` (constants as graph constants)."""
    results = {"evaluate": evaluate(node, arrays)}
    constants = {node.inputs[i]: arrays[i] for i in const if i < len(arrays) and arrays[i] is not None}
    types = {n: TensorType(DType.from_numpy(a.dtype), tuple(a.shape))
             for n, a in zip(node.inputs, arrays) if a is not None}
    graph = Graph("t", [node], [n for n in node.inputs if n and n not in constants],
                  list(node.outputs), types, constants)
    backend = CPUBackend()
    for tactic in backend.tactics(node, graph):
        tconst = {k: torch.from_numpy(np.array(v)) for k, v in constants.items()}
        ctx = CompileContext(graph, tconst, torch.device("cpu"), tactic=tactic)
        kernel = backend.compile_node(node, ctx)
        tensors = [None if a is None else torch.from_numpy(np.array(a)) for a in arrays]
        with torch.inference_mode():
            outs = kernel(tensors)
        results[tactic] = [None if t is None else t.contiguous().numpy() for t in outs]
    return results


def assert_same(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, label: str) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{label}: dtype {got.dtype} != {want.dtype}"
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=label)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=label)


def check_op(onnx_op: str, inputs: dict[str, Optional[np.ndarray]], op: OpType, attrs: Any = None,
             onnx_attrs: Optional[dict] = None, *, n_out: int = 1, opset: int = 18,
             const: tuple[int, ...] = (), rtol: float = 1e-5, atol: float = 1e-6,
             oracle: str = "ort") -> dict[str, list]:
    """Runs ``onnx_op`` in the oracle and ``op`` with ``attrs`` in Ember; asserts equal outputs."""
    model = onnx_model(onnx_op, inputs, onnx_attrs or {}, n_out, opset)
    feeds = {k: v for k, v in inputs.items() if v is not None}
    want = run_oracle(model, feeds, oracle)
    names = tuple(k if v is not None else "" for k, v in inputs.items())
    node = Node("n0", op, names, tuple(f"out{i}" for i in range(n_out)), attrs)
    results = ember_runs(node, list(inputs.values()), set(const))
    for label, outs in results.items():
        for i, w in enumerate(want):
            assert_same(outs[i], w, rtol, atol, f"{onnx_op} [{label}] output {i}")
    return results


def assert_runs_like_ort(model: onnx.ModelProto, contexts: list[Any], x: np.ndarray, bad: np.ndarray,
                         output: str = "y", tol: float = 1e-4, between: float = 1e-5) -> None:
    """Runs ``x``, then ``bad`` (NaN / infinity in it), then ``x`` again through each Ember execution
    context (on input "x") and ONNX Runtime: each output has ORT's shape and NaN where ORT has NaN
    (only in the bad run), finite values within ``tol`` of ORT's and within ``between`` of the first
    context's (a chained engine's finite runs use its chains, the bad run its layers one by one)."""
    from ember.tools.runners import max_rel_error

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in (x, bad, x):
        want = sess.run(None, {"x": feed})[0]
        assert np.isnan(want).any() == (feed is bad)
        outs = [c.infer({"x": feed})[output] for c in contexts]
        for got in outs:
            assert got.shape == want.shape
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(want)) < tol
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(outs[0])) < between


def blocked_layout(x: torch.Tensor, block: Optional[int] = None) -> torch.Tensor:
    """A float32 NCHW tensor in oneDNN's nChw<block>c (channels zero-padded to the block) as a flat
    buffer: what a blocked chain step reads and writes (default: this CPU's block, 16 with AVX-512
    and 8 without, ``ext.blocked_channels()``)."""
    if block is None:
        from ember.backends.cpu import native
        block = native.extension().blocked_channels()
    n, c, h, w = x.shape
    cp = (c + block - 1) // block * block
    padded = torch.zeros(n, cp, h, w)
    padded[:, :c] = x
    return padded.view(n, cp // block, block, h, w).permute(0, 1, 3, 4, 2).contiguous().view(-1)
