"""Fixtures of the CPU kernel tests; the oracle helpers live in ``cpukit`` (a unique module
name, so importing them never picks up another folder's ``conftest``)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from cpukit import check_op


@pytest.fixture
def check() -> Callable[..., dict]:
    return check_op


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
