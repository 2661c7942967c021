"""Fixtures of the CPU kernel tests; the oracle helpers live in ``cpukit`` (a unique module
name, so importing them never picks up another folder's ``conftest``)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import pytest
from cpukit import check_op

from ember.backends.cpu import native


@pytest.fixture
def check() -> Callable[..., dict]:
    return check_op


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---- Ember's compiled CPU extension (``ember.backends.cpu.native``): the persistent-tactic tests


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The library looked for afresh, no outcome left behind for the next test (the persistent
    tactics' test files use it on every test: ``pytest.mark.usefixtures``)."""
    monkeypatch.delenv(native.SWITCH_ENV, raising=False)
    native.reset()
    yield
    native.reset()


@pytest.fixture
def ext(fresh_native: None) -> Any:
    """The built extension; a skip that says why where the machine lacks something it needs, a
    failure where its source does not compile (a skip there hid a broken build behind 141 skips)."""
    mod = native.extension()
    if mod is None and native.compile_failed():
        pytest.fail(f"Ember's oneDNN extension does not compile: {native.unavailable_reason()}")
    if mod is None:
        pytest.skip(f"oneDNN extension unavailable: {native.unavailable_reason()}")
    return mod
