"""Constant folding of every op: each conformance case with all inputs made constant folds to
constants that equal ONNX Runtime's outputs; with inputs left as inputs the pipeline keeps them."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ember.frontends.onnx import import_onnx  # noqa: E402
from tests.conformance.op_models import all_cases  # noqa: E402

from passkit import optimize, ort_run, run_graph  # noqa: E402

CASES = all_cases()


def as_constants(case):
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for name, value in case.inputs.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    keep = [i for i in model.graph.input if i.name not in case.inputs]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def check(got, want, case):
    for name, ref in want.items():
        out = np.asarray(got[name])
        assert out.shape == ref.shape and out.dtype == ref.dtype, (case.name, name)
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(out, ref, rtol=case.rtol, atol=case.atol, err_msg=case.name)
        else:
            np.testing.assert_array_equal(out, ref, err_msg=case.name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_everything_constant_folds_to_the_right_values(case):
    model = as_constants(case)
    out = optimize(import_onnx(model))
    assert not out.nodes, f"{case.name}: left {[n.op.value for n in out.nodes]}"
    check({k: out.constants[k] for k in out.outputs}, ort_run(model, {}), case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pipeline_keeps_each_op_case_equal(case):
    out = optimize(import_onnx(case.model))
    check(run_graph(out, case.inputs), ort_run(case.model, case.inputs), case)
