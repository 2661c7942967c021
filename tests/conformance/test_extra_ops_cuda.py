"""The cases of ``op_models_extra`` (the ops beyond the core families, recurrent ones included)
built for the GPU (no CUDA-specific kernels: the CUDA backend's generic fallback runs the CPU
kernels' PyTorch code on the device, under CUDA-graph capture), fp32, against ONNX Runtime on
the CPU."""
from __future__ import annotations

import pytest

import ember
from tests.conformance.op_models import FAMILIES  # (imports op_models_extra after op_models)
from tests.conformance.test_ops_vs_ort import assert_matches, run_ort

CASES = FAMILIES["extra"]()


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_extra_op_on_cuda_matches_onnxruntime(case) -> None:
    want = run_ort(case)
    engine = ember.build(case.model, ember.BuildConfig(device="cuda", precision="fp32"))
    with engine.create_context() as ctx:
        got = ctx.infer(dict(case.inputs))
    assert_matches(case, got, want)
