"""Every op and opset variant: Ember (ember.build on the CPU) against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import ember
from tests.conformance.op_models import OpCase, all_cases
from tests.int8ref import needs_other_reference, reference_run

CASES = all_cases()


def run_ort(case: OpCase) -> list[np.ndarray]:
    if needs_other_reference(case.model):  # ONNX Runtime's 8-bit kernels saturate on this CPU
        return reference_run(case.model, case.inputs)
    sess = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, case.inputs)


def assert_matches(case: OpCase, got: dict, want: list[np.ndarray]) -> None:
    names = [o.name for o in case.model.graph.output]
    assert list(got) == names
    for name, ref in zip(names, want):
        out = np.asarray(got[name])
        assert out.shape == ref.shape, f"{case.name}: output {name} shape {out.shape} != ORT {ref.shape}"
        assert out.dtype == ref.dtype, f"{case.name}: output {name} dtype {out.dtype} != ORT {ref.dtype}"
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(out, ref, rtol=case.rtol, atol=case.atol, err_msg=case.name)
        else:
            np.testing.assert_array_equal(out, ref, err_msg=case.name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_onnxruntime(case: OpCase) -> None:
    want = run_ort(case)
    engine = ember.build(case.model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        got = ctx.infer(dict(case.inputs))
    assert_matches(case, got, want)
