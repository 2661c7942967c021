"""Small ONNX graphs with com.microsoft ops, run by ONNX Runtime (the oracle) and by Ember."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from tests.int8ref import ORT_INT8_REASON, needs_other_reference

MS = "com.microsoft"
_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
               np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.float16): TensorProto.FLOAT16}


def model(nodes: Sequence[onnx.NodeProto], feeds: Mapping[str, np.ndarray], outputs: Sequence[str],
          weights: Optional[Mapping[str, np.ndarray]] = None, opset: int = 17) -> onnx.ModelProto:
    """A model of ``nodes`` whose inputs are ``feeds`` (types from the arrays) and initializers
    ``weights``; the outputs' types are left to the runtimes."""
    inputs = [helper.make_tensor_value_info(k, _NP_TO_ONNX[v.dtype], list(v.shape)) for k, v in feeds.items()]
    outs = [onnx.ValueInfoProto(name=o) for o in outputs]
    inits = [numpy_helper.from_array(v, k) for k, v in (weights or {}).items()]
    graph = helper.make_graph(list(nodes), "g", inputs, outs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def run_ort(m: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs; a skip where its 8-bit kernels saturate and the model has one of
    them (``tests/int8ref.py``: the com.microsoft ops have no other reference)."""
    if needs_other_reference(m):
        pytest.skip(ORT_INT8_REASON)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def run_ember(m: Any, feeds: Mapping[str, np.ndarray], **config: Any) -> dict[str, np.ndarray]:
    engine = ember.build(m, ember.BuildConfig(device="cpu", **config))
    with engine.create_context() as ctx:
        return {k: np.asarray(v) for k, v in ctx.infer(dict(feeds)).items()}


def max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(np.asarray(ours, np.float64) - ref))) if ref.size else 0.0
    return diff / scale if scale else diff


def assert_matches_ort(m: onnx.ModelProto, feeds: Mapping[str, np.ndarray], rtol: float = 1e-4,
                       **config: Any) -> dict[str, np.ndarray]:
    """Ember's outputs equal ONNX Runtime's within ``rtol`` (max relative error); returns Ember's."""
    ref = run_ort(m, feeds)
    got = run_ember(m, feeds, **config)
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    for k in ref:
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        if ref[k].dtype.kind in "iub":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        else:
            err = max_rel(got[k], ref[k])
            assert err <= rtol, f"{k}: max relative error {err:.3g} > {rtol}"
    return got
