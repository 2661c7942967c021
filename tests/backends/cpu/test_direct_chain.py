"""A CPU program that is one chain from its input to its output (a MobileNet's shape) runs an array
straight through the chain (``CPUExecutor.infer_direct``): no inference mode, no step loop. The same
results as the generic path, bitwise; NaN or infinite inputs, other layouts, read-only arrays and
torch inputs take the generic path (NaN in, NaN out); programs of more than the chain have no such path."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_chain_heads import HW, OUT, N, _classifier, _engine, _model, _pool_flatten


@pytest.fixture
def one_chain(ext: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    engine = _engine(_model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT]), monkeypatch)
    return engine, engine.create_context()


def _generic(ctx: Any, feeds: dict) -> dict:
    program = ctx.executor.program
    kept, program.direct = program.direct, None
    try:
        return ctx.infer(feeds)
    finally:
        program.direct = kept


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])  # blocked: the chain's first layer reads NCHW
def test_an_array_runs_straight_through_the_chain_with_the_generic_paths_results(ext: Any, layout: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    ctx = _engine(_model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT]), monkeypatch, layout=layout).create_context()
    program = ctx.executor.program
    assert program.direct is not None and (program.direct.input, program.direct.output) == ("x", "y")
    x = np.random.default_rng(3).standard_normal((N, 3, HW, HW)).astype(np.float32)
    assert ctx.executor.infer_direct({"x": x}) is not None  # the path is taken
    got, want = ctx.infer({"x": x}), _generic(ctx, {"x": x})
    assert isinstance(got["y"], np.ndarray) and got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["y"], want["y"])
    assert ctx.runs == 2


@pytest.mark.parametrize("case", ["nan", "inf", "not contiguous", "read-only", "torch"])
def test_what_the_chain_cannot_take_as_it_is_goes_the_generic_way(one_chain: tuple, case: str) -> None:
    engine, ctx = one_chain
    x = np.random.default_rng(4).standard_normal((N, 3, HW, HW)).astype(np.float32)
    if case == "nan":
        x[0, 1, 2, 3] = np.nan
    elif case == "inf":
        x[1, 0, 0, 0] = np.inf
    elif case == "not contiguous":
        x = np.asfortranarray(x)
    elif case == "read-only":
        x.flags.writeable = False
    feed: Any = torch.from_numpy(x.copy()) if case == "torch" else x
    assert ctx.executor.infer_direct({"x": feed}) is None
    got = ctx.infer({"x": feed})
    want = _generic(ctx, {"x": feed})
    a, b = (np.asarray(got["y"]), np.asarray(want["y"]))
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.nan_to_num(a), np.nan_to_num(b))
    if case == "nan":  # the NaN image's logits are NaN, the other image's are not
        assert np.isnan(a[0]).all() and not np.isnan(a[1]).any()
    if case == "torch":
        assert isinstance(got["y"], torch.Tensor)


def test_a_program_of_more_than_one_chain_has_no_direct_path(ext: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import helper

    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    # a Softmax after the classifier: a step outside the chain
    c_nodes[-1].output[0] = "logits"
    model = _model(p_nodes + c_nodes + [helper.make_node("Softmax", ["logits"], ["y"], axis=1)],
                   p_inits + c_inits, [N, OUT])
    engine = _engine(model, monkeypatch)
    with engine.create_context() as ctx:
        assert ctx.executor.program.direct is None
        x = np.random.default_rng(5).standard_normal((N, 3, HW, HW)).astype(np.float32)
        assert ctx.executor.infer_direct({"x": x}) is None
        y = ctx.infer({"x": x})["y"]
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)


def _unaligned(x: np.ndarray) -> np.ndarray:
    raw = np.empty(x.nbytes + 1, np.uint8)
    out = raw[1:].view(np.float32).reshape(x.shape)
    out[...] = x
    return out


@pytest.mark.parametrize("case", ["big-endian", "unaligned", "read-only", "nan", "float64"])
def test_the_native_entry_runs_nothing_on_an_array_it_does_not_take_as_it_is(one_chain: tuple, case: str) -> None:
    """``run_array`` returns None, before running, for what the chain cannot read where it lies;
    the context's results stay those of the generic path."""
    engine, ctx = one_chain
    x = np.random.default_rng(6).standard_normal((N, 3, HW, HW)).astype(np.float32)
    odd = {"big-endian": lambda: x.astype(">f4"), "unaligned": lambda: _unaligned(x),
           "float64": lambda: x.astype(np.float64),
           "read-only": lambda: np.frombuffer(x.tobytes(), np.float32).reshape(x.shape),
           "nan": lambda: np.where(np.arange(x.size).reshape(x.shape) == 7, np.float32(np.nan), x)}[case]()
    if case == "unaligned":
        assert not odd.flags.aligned
    assert ctx.executor.program.direct.run(odd) is None
    if case in ("unaligned", "nan"):  # arrays the engine's input checks accept
        got, want = ctx.infer({"x": odd})["y"], _generic(ctx, {"x": np.ascontiguousarray(odd)})["y"]
        np.testing.assert_array_equal(got, want)


def test_the_native_entrys_output_is_the_callers_to_keep(one_chain: tuple) -> None:
    """The array a run returns owns its memory: later runs (whose buffers are pooled) leave it be."""
    engine, ctx = one_chain
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((N, 3, HW, HW)).astype(np.float32) for _ in range(3)]
    first = ctx.infer({"x": xs[0]})["y"]
    kept = first.copy()
    for x in xs[1:]:
        ctx.infer({"x": x})
    np.testing.assert_array_equal(first, kept)
    first[...] = 0  # writeable, and no later run reads it
    np.testing.assert_array_equal(ctx.infer({"x": xs[0]})["y"], kept)


def test_a_chain_that_fails_on_the_direct_path_loses_it_and_the_generic_path_answers(one_chain: tuple) -> None:
    """A native failure is not retried on every run: the program drops its direct path and the
    generic one answers, now and after."""
    from ember.backends.cpu.program import DirectChain

    engine, ctx = one_chain
    program = ctx.executor.program
    x = np.random.default_rng(8).standard_normal((N, 3, HW, HW)).astype(np.float32)
    want = _generic(ctx, {"x": x})["y"]
    calls = []

    def failing(array: np.ndarray) -> np.ndarray:
        calls.append(1)
        raise RuntimeError("the primitive could not run")

    program.direct = DirectChain(program.direct.input, program.direct.output, failing)
    np.testing.assert_array_equal(ctx.infer({"x": x})["y"], want)
    assert program.direct is None and calls == [1]
    np.testing.assert_array_equal(ctx.infer({"x": x})["y"], want)
    assert calls == [1]
