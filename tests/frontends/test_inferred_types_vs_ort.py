"""Inferred output types of every conformance model agree with what ONNX Runtime produces."""
from __future__ import annotations

import onnxruntime as ort
import pytest

from ember.frontends.onnx import import_onnx
from ember.ir import DType
from tests.conformance.op_models import OpCase, all_cases

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inferred_types_match_onnxruntime(case: OpCase) -> None:
    graph = import_onnx(case.model)
    sess = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, ref in zip(graph.outputs, sess.run(None, case.inputs)):
        t = graph.types[name]
        assert t.dtype is DType.from_numpy(ref.dtype), f"{case.name}: {name} is {t}, ORT gives {ref.dtype}"
        assert t.rank == ref.ndim, f"{case.name}: {name} is {t}, ORT gives shape {ref.shape}"
        for dim, want in zip(t.shape, ref.shape):
            if isinstance(dim, int):
                assert dim == want, f"{case.name}: {name} is {t}, ORT gives shape {ref.shape}"
        if "runtime" not in case.name:  # parameters fed at run time may leave dims symbolic
            assert t.is_static, f"{case.name}: {name} should be static, got {t}"
