"""``ember.backends.cuda.libs.launch`` and ``compiling_ahead``: inside it, Ember's Triton launches only
start their kernel's compile in a thread pool (the tactic timer's precompile) and run nothing;
outside, they launch. The logic runs on the CPU against a stand-in Triton; on a GPU (``cuda``) a
real kernel is compiled ahead, writes nothing there, and then runs right without compiling again."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from ember.backends.cuda import libs


class _Kernel:
    def __init__(self):
        self.launched, self.warmed = [], []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launched.append((grid, args, kw))

    def warmup(self, *args, grid, **kw):
        self.warmed.append((grid, args, kw))


class _AsyncCompileMode:
    entered: list = []

    def __init__(self, pool, ignore_errors=False):
        self.pool, self.ignore_errors = pool, ignore_errors

    def __enter__(self):
        _AsyncCompileMode.entered.append(self)
        return self

    def __exit__(self, *exc):
        return False


class _Triton:
    AsyncCompileMode = _AsyncCompileMode


@pytest.fixture
def fake_triton(monkeypatch):
    monkeypatch.setattr(libs, "triton_modules", lambda: (_Triton, None))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("EMBER_TRITON_PRECOMPILE", raising=False)
    _AsyncCompileMode.entered.clear()


def test_inside_compiling_ahead_a_launch_only_starts_the_compile(fake_triton):
    k = _Kernel()
    with libs.compiling_ahead(workers=3) as ahead:
        assert ahead
        libs.launch(k, (4,), 1, 2, BLOCK=16)
        with libs.compiling_ahead() as nested:  # one level: a nested one changes nothing
            assert not nested
    libs.launch(k, (4,), 5, BLOCK=16)
    assert k.warmed == [((4,), (1, 2), {"BLOCK": 16})]
    assert k.launched == [((4,), (5,), {"BLOCK": 16})]
    mode = _AsyncCompileMode.entered[0]
    assert mode.ignore_errors and mode.pool._max_workers == 3  # a failed compile is left to the real launch


@pytest.mark.parametrize("env", [{"TRITON_INTERPRET": "1"}, {"EMBER_TRITON_PRECOMPILE": "0"}])
def test_compiling_ahead_is_off_under_the_interpreter_or_when_switched_off(fake_triton, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    kernel = _Kernel()
    with libs.compiling_ahead() as ahead:
        libs.launch(kernel, (1,), 7)
    assert not ahead and kernel.launched == [((1,), (7,), {})] and kernel.warmed == []


def test_compiling_ahead_is_off_without_async_compiles(monkeypatch):
    """A Triton before 3.4 (no ``AsyncCompileMode``) or none at all: launches launch."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for modules in [(object(), None), (None, None)]:
        monkeypatch.setattr(libs, "triton_modules", lambda m=modules: m)
        with libs.compiling_ahead() as ahead:
            assert not ahead


@pytest.mark.cuda
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_a_real_kernel_compiled_ahead_writes_nothing_then_runs_right():
    from ember.backends.cuda.libs import triton_gemm

    if not hasattr(triton_gemm.triton, "AsyncCompileMode"):
        pytest.skip("this Triton has no AsyncCompileMode")
    g = torch.Generator(device="cuda").manual_seed(0)
    # a shape no other test compiles: K = 48 and a fresh tile give a specialization of their own
    x = torch.randn(70, 48, device="cuda", dtype=torch.float16, generator=g)
    w = torch.randn(24, 48, device="cuda", dtype=torch.float16, generator=g)
    out = torch.full((70, 24), 7.0, device="cuda", dtype=torch.float16)
    config = triton_gemm.CONFIGS[-1]
    with libs.compiling_ahead() as ahead:
        assert ahead
        triton_gemm.linear(x, w, None, config=config, out=out)
    torch.cuda.synchronize()
    assert bool((out == 7.0).all())  # compiled, not run
    cache = triton_gemm.gemm_epilogue_kernel.device_caches[torch.cuda.current_device()][0]
    compiled = len(cache)
    triton_gemm.linear(x, w, None, config=config, out=out)
    torch.testing.assert_close(out.float(), x.float() @ w.float().T, atol=2e-2, rtol=2e-2)
    assert len(cache) == compiled  # the launch found its kernel compiled
