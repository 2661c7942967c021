"""Checks the inputs given to ``ExecutionContext.infer`` against the engine's input specs.

Every failure is an ``InputError`` that names the input, what was given and what is expected.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ember.backends.tensors import from_torch_dtype
from ember.errors import InputError
from ember.ir.dtype import DType
from ember.ir.types import format_shape
from ember.plan.plan import TensorSpec


def _listing(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"'{s.name}' ({s.dtype.value}{s.range_text()})" for s in specs)


def _check_names(specs: Sequence[TensorSpec], given: Mapping[str, Any]) -> None:
    names = {s.name for s in specs}
    unknown = [k for k in given if k not in names]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}; the engine's inputs are {_listing(specs)}")
    missing = [s for s in specs if s.name not in given]
    if missing:
        s = missing[0]
        raise InputError(f"missing input '{s.name}' ({s.dtype.value}{s.range_text()}); the engine's "
                         f"inputs are {_listing(specs)}")


def _dtype_of(spec: TensorSpec, value: Any) -> DType:
    if isinstance(value, np.ndarray):
        try:
            return DType.from_numpy(value.dtype)
        except TypeError:
            pass
    elif isinstance(value, torch.Tensor):
        try:
            return from_torch_dtype(value.dtype)
        except TypeError:
            pass
    else:
        raise InputError(f"input '{spec.name}' is a {type(value).__name__}; give a numpy array or "
                         f"a torch tensor of {spec.dtype.value}{spec.range_text()}")
    raise InputError(f"input '{spec.name}' has dtype {value.dtype}, which Ember does not support; "
                     f"the engine expects {spec.dtype.value}")


def _check_one(spec: TensorSpec, value: Any, symbols: dict[str, tuple[int, str]]) -> None:
    dtype = _dtype_of(spec, value)
    if dtype != spec.dtype:
        how = (f".to(torch.{spec.dtype.value})" if isinstance(value, torch.Tensor)
               else f".astype(np.{spec.dtype.value})")
        raise InputError(f"input '{spec.name}' has dtype {dtype.value} but the engine expects "
                         f"{spec.dtype.value}; convert it with {how}")
    shape = tuple(int(d) for d in value.shape)
    if len(shape) != len(spec.shape):
        raise InputError(f"input '{spec.name}' has shape {format_shape(shape)} (rank {len(shape)}) but "
                         f"the engine expects rank {len(spec.shape)}: {spec.range_text()}")
    for axis, (d, want, lo, hi) in enumerate(zip(shape, spec.shape, spec.min, spec.max)):
        if isinstance(want, int):
            if d != want:
                raise InputError(f"input '{spec.name}' has shape {format_shape(shape)} but the engine "
                                 f"expects {spec.range_text()} (dim {axis} must be {want}); rebuild "
                                 f"with --shapes or a profile to accept other shapes")
            continue
        if d < lo or (hi is not None and d > hi):
            raise InputError(f"input '{spec.name}' has shape {format_shape(shape)} but the engine's "
                             f"profile allows {spec.range_text()}; rebuild with a wider "
                             f"--{'max' if hi is not None and d > hi else 'min'}-shapes")
        seen = symbols.setdefault(want, (d, spec.name))
        if seen[0] != d:
            raise InputError(f"input '{spec.name}' has dim {axis} ('{want}') = {d} but input "
                             f"'{seen[1]}' gives '{want}' = {seen[0]}; dims named '{want}' must agree")


def validate_inputs(specs: Sequence[TensorSpec], given: Any) -> None:
    """Raises ``InputError`` unless ``given`` matches ``specs`` (names, dtypes, ranks, dims)."""
    if not isinstance(given, Mapping):
        raise InputError(f"infer() takes a dict of input name -> array, got a {type(given).__name__}; "
                         f"the engine's inputs are {_listing(specs)}")
    _check_names(specs, given)
    symbols: dict[str, tuple[int, str]] = {}
    for spec in specs:
        _check_one(spec, given[spec.name], symbols)
