"""ONNX's own backend test suite (``onnx.backend.test.BackendTest``) on Ember.

Every node case generated from the installed ``onnx`` package plus its ``simple``,
``pytorch-converted`` and ``pytorch-operator`` model cases runs through ``ember.onnx_backend``
(``ember.build(model, BuildConfig(device=...))``, one execution context's ``infer``) and is
compared with the case's reference outputs. The ``real`` cases download zoo models: not run.

- ``_cpu`` cases run everywhere; ``_cuda`` cases are marked ``cuda`` (skipped without a GPU).
- Out-of-scope cases (training, strings, sequences, ...) are skipped with their reason
  (``tests/onnx_backend_exclusions.py``).
- Cases Ember does not pass yet are expected failures with their reason
  (``tests/onnx_backend_refusals.py``, written by ``python tools/gen_onnx_conformance.py
  --refusals``): a refusal must raise an ``EmberError``, and a case that starts passing fails
  the run (strict xfail) until it is taken off the list.

``docs/ONNX_CONFORMANCE.md`` has the per-op table and the totals against ONNX Runtime.
"""
from __future__ import annotations

import contextlib
import io
import unittest
import warnings

import onnx.backend.test
import pytest
from onnx.backend.test.loader import load_model_tests
from onnx_backend_exclusions import exclusion_reason
from onnx_backend_refusals import FAILING, REFUSED

from ember import errors as ember_errors
from ember.errors import EmberError
from ember.onnx_backend import EmberBackend

DEVICES = ("_cpu", "_cuda")


def _base(name: str) -> str:
    for suffix in DEVICES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _mark(name: str, func):
    base = _base(name)
    if name.endswith("_cuda"):
        func = pytest.mark.cuda(func)
    why = exclusion_reason(base)
    if why is not None:
        return unittest.skip(f"out of scope: {why}")(func)
    if base in REFUSED:
        func = pytest.mark.xfail(raises=EmberError, strict=True, reason=f"refused: {REFUSED[base]}")(func)
    elif base in FAILING:
        func = pytest.mark.xfail(strict=True, reason=f"known failure: {FAILING[base]}")(func)
    return func


def _test_cases() -> dict[str, type]:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        suite = onnx.backend.test.BackendTest(EmberBackend, __name__)
        for tc in load_model_tests(kind="real"):  # zoo models: downloaded, so never run here
            suite.exclude(f"^{tc.name}_")
        cases = suite.test_cases
    for case in cases.values():
        for name in [n for n in vars(case) if n.startswith("test_")]:
            setattr(case, name, _mark(name, getattr(case, name)))
    return cases


globals().update(_test_cases())


# ---- the backend itself, beyond the suite -----------------------------------------------------

def _conv_relu(opset: int):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [13, 22, 28])
def test_new_opsets_reach_the_same_fusions(opset):
    """Conv 22 (bfloat16 added, semantics unchanged) + Relu still fuse into one FusedConv, and the
    unnamed nodes' layer takes the name of the first output it absorbed."""
    import numpy as np

    from ember.ir.optype import OpType

    rep = EmberBackend.prepare(_conv_relu(opset), "CPU")
    nodes = rep.engine.plan.graph.nodes
    assert [n.op for n in nodes] == [OpType.FUSED_CONV]
    assert nodes[0].origin == ("c", "y")  # the unnamed Conv and Relu, by their outputs
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(_conv_relu(opset).SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(rep.run([x])[0], ref, rtol=1e-4, atol=1e-5)


def test_run_node_and_refusals():
    import numpy as np
    from onnx import helper

    x = np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 5.0]], np.float32)
    (y,) = EmberBackend.run_node(helper.make_node("Hardmax", ["x"], ["y"]), [x])
    np.testing.assert_array_equal(y, [[0, 1, 0], [1, 0, 0]])
    (nz,) = EmberBackend.run_node(helper.make_node("NonZero", ["x"], ["y"]), [x])
    np.testing.assert_array_equal(nz, np.array(np.nonzero(x)))
    with pytest.raises(ember_errors.UnsupportedOpError, match="TfIdfVectorizer"):
        EmberBackend.run_node(helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode="TF", min_gram_length=1,
                                               max_gram_length=1, max_skip_count=0, ngram_counts=[0],
                                               ngram_indexes=[0], pool_int64s=[1]), [x])
    assert EmberBackend.supports_device("CPU")
    with pytest.raises(ember_errors.DeviceError):
        EmberBackend.prepare(_conv_relu(13), "CUDA:1")
