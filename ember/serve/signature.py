"""The tensors a served model takes and returns, and the check of a request against them.

The signature joins the engine's specs with the config: the config may list the inputs and
outputs (then they must agree with the engine) and may fix dims the engine leaves dynamic.
With ``max_batch_size > 0`` the engine's first dim is the batch dim and the served ``dims``
leave it out, as in Triton's model config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ember.serve.config import ModelConfig, TensorConfig
from ember.serve.datatypes import from_numpy
from ember.serve.errors import BadRequestError, ModelConfigError


@dataclass(frozen=True)
class ServedTensor:
    """One served input or output; ``dims`` exclude the batch dim, -1 marks a dynamic dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    symbols: tuple[Optional[str], ...]
    min: tuple[int, ...]
    max: tuple[Optional[int], ...]

    def describe(self) -> str:
        dims = ", ".join(str(d) if d != -1 else f"{lo}..{'' if hi is None else hi}"
                         for d, lo, hi in zip(self.dims, self.min, self.max))
        return f"'{self.name}' ({self.datatype} [{dims}])"


@dataclass(frozen=True)
class Signature:
    """A model's served inputs and outputs and its ``max_batch_size`` (0: no batch dim)."""

    model: str
    max_batch_size: int
    inputs: tuple[ServedTensor, ...]
    outputs: tuple[ServedTensor, ...]

    def full_shape(self, t: ServedTensor) -> list[int]:
        """The shape clients see in metadata: ``[-1, *dims]`` when the model batches."""
        return ([-1] if self.max_batch_size > 0 else []) + list(t.dims)

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def _listing(self) -> str:
        return ", ".join(t.describe() for t in self.inputs)

    def check(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Validates a request's tensors; returns its batch size (1 for a model without batching).

        Raises ``BadRequestError`` naming the input and what the model expects.
        """
        known = {t.name for t in self.inputs}
        for name in feeds:
            if name not in known:
                raise BadRequestError(f"model '{self.model}' has no input '{name}'; its inputs are "
                                      f"{self._listing()}")
        for t in self.inputs:
            if t.name not in feeds:
                raise BadRequestError(f"input {t.describe()} of model '{self.model}' is missing; "
                                      f"its inputs are {self._listing()}")
        batch = self._check_batch(feeds)
        symbols: dict[str, tuple[int, str]] = {}
        for t in self.inputs:
            self._check_one(t, feeds[t.name], symbols)
        return batch

    def _check_batch(self, feeds: Mapping[str, np.ndarray]) -> int:
        if self.max_batch_size == 0:
            return 1
        sizes = {}
        for t in self.inputs:
            shape = feeds[t.name].shape
            if len(shape) == 0:
                raise BadRequestError(f"input '{t.name}' is a scalar but model '{self.model}' batches "
                                      f"(max_batch_size {self.max_batch_size}); give shape "
                                      f"[batch, {', '.join(map(str, t.dims))}]")
            sizes[t.name] = shape[0]
        if len(set(sizes.values())) > 1:
            raise BadRequestError(f"inputs of model '{self.model}' disagree on the batch size (dim 0): "
                                  f"{sizes}; give every input the same batch size")
        batch = next(iter(sizes.values()))
        if batch < 1:
            raise BadRequestError(f"batch size {batch} (dim 0 of the inputs) is empty; model "
                                  f"'{self.model}' needs 1..{self.max_batch_size}")
        if batch > self.max_batch_size:
            raise BadRequestError(f"batch size {batch} exceeds max_batch_size {self.max_batch_size} of "
                                  f"model '{self.model}'; split the request into batches of at most "
                                  f"{self.max_batch_size}")
        return batch

    def _check_one(self, t: ServedTensor, value: np.ndarray, symbols: dict) -> None:
        got = from_numpy(value.dtype) if value.dtype in _KNOWN else str(value.dtype)
        if got != t.datatype:
            raise BadRequestError(f"input '{t.name}' has datatype {got} but model '{self.model}' "
                                  f"expects {t.datatype}")
        shape = tuple(value.shape)[1:] if self.max_batch_size > 0 else tuple(value.shape)
        shown = list(value.shape)
        if len(shape) != len(t.dims):
            raise BadRequestError(f"input '{t.name}' has shape {shown} but model '{self.model}' expects "
                                  f"{self.full_shape(t)} (rank {len(self.full_shape(t))})")
        for axis, (d, want, lo, hi, sym) in enumerate(zip(shape, t.dims, t.min, t.max, t.symbols)):
            where = axis + (1 if self.max_batch_size > 0 else 0)
            if want != -1 and d != want:
                raise BadRequestError(f"input '{t.name}' has shape {shown} but model '{self.model}' "
                                      f"expects {self.full_shape(t)} (dim {where} must be {want})")
            if d < lo or (hi is not None and d > hi):
                raise BadRequestError(f"input '{t.name}' has shape {shown}; dim {where} of model "
                                      f"'{self.model}' must lie in {lo}..{'' if hi is None else hi}")
            if sym is not None:
                seen = symbols.setdefault(sym, (d, t.name))
                if seen[0] != d:
                    raise BadRequestError(f"input '{t.name}' dim {where} is {d} but input '{seen[1]}' "
                                          f"gives {seen[0]} for the same dim '{sym}'; they must agree")


_KNOWN = {np.dtype(x) for x in (np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8,
                                np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)}


def _spec_dtype(spec: Any, model: str) -> str:
    dtype = spec.dtype
    if hasattr(dtype, "to_numpy"):
        try:
            dtype = dtype.to_numpy()
        except TypeError as exc:
            raise ModelConfigError(f"model '{model}': tensor '{spec.name}' is {dtype.value}, which the "
                                   f"KServe protocol cannot carry; rebuild it with a float32 or "
                                   f"float16 interface") from exc
    return from_numpy(np.dtype(dtype))


def _spec_dims(spec: Any) -> tuple[list[Any], list[int], list[Optional[int]]]:
    shape = list(spec.shape)
    mins = list(getattr(spec, "min", ()) or ())
    maxs = list(getattr(spec, "max", ()) or ())
    dims, lo, hi = [], [], []
    for i, d in enumerate(shape):
        fixed = isinstance(d, (int, np.integer)) and d >= 0
        dims.append(int(d) if fixed else (str(d) if d not in (None, -1) else f"{spec.name}:{i}"))
        lo.append(int(mins[i]) if i < len(mins) else (int(d) if fixed else 1))
        hi.append((None if maxs[i] is None else int(maxs[i])) if i < len(maxs) else (int(d) if fixed else None))
    return dims, lo, hi


def _serve_tensor(spec: Any, declared: Optional[TensorConfig], config: ModelConfig,
                  kind: str) -> ServedTensor:
    name = spec.name
    where = f"{config.source}: {kind} '{name}'"
    datatype = _spec_dtype(spec, config.name)
    if declared is not None and declared.datatype is not None and declared.datatype != datatype:
        raise ModelConfigError(f"{where} is {declared.datatype} in the config but {datatype} in the engine")
    dims, lo, hi = _spec_dims(spec)
    if config.max_batch_size > 0:
        batch_one = bool(dims) and dims[0] == 1 and config.max_batch_size == 1   # a batch-1 engine
        if not dims or (isinstance(dims[0], int) and not batch_one):
            raise ModelConfigError(f"{where} has shape {dims} with no dynamic batch dim, but "
                                   f"max_batch_size is {config.max_batch_size}; rebuild the engine with a "
                                   f"profile over dim 0 or set max_batch_size: 0")
        if kind == "input" and hi[0] is not None and hi[0] < config.max_batch_size:
            raise ModelConfigError(f"{where}: the engine accepts batches up to {hi[0]} but max_batch_size "
                                   f"is {config.max_batch_size}; rebuild with a larger profile or lower it")
        dims, lo, hi = dims[1:], lo[1:], hi[1:]
    served = [d if isinstance(d, int) else -1 for d in dims]
    if declared is not None and declared.dims is not None:
        if len(declared.dims) != len(served):
            raise ModelConfigError(f"{where} has shape {list(declared.dims)} in the config but "
                                   f"{served} in the engine (without the batch dim)")
        for axis, (c, e) in enumerate(zip(declared.dims, served)):
            if e != -1 and c != -1 and c != e:
                raise ModelConfigError(f"{where} dim {axis} is {c} in the config but {e} in the engine")
            if e == -1 and c != -1:
                served[axis], lo[axis], hi[axis] = c, c, c
    if declared is not None and declared.profile is not None:
        lo = [max(a, b) for a, b in zip(lo, declared.profile[0])]
        hi = [b if a is None else min(a, b) for a, b in zip(hi, declared.profile[2])]
    symbols = tuple(d if isinstance(d, str) and s == -1 else None for d, s in zip(dims, served))
    return ServedTensor(name, datatype, tuple(served), symbols, tuple(lo), tuple(hi))


def _serve_all(specs: Sequence[Any], declared: Optional[tuple[TensorConfig, ...]],
               config: ModelConfig, kind: str) -> tuple[ServedTensor, ...]:
    by_name = {t.name: t for t in declared or ()}
    names = [s.name for s in specs]
    if declared is not None:
        missing = [n for n in names if n not in by_name]
        unknown = [n for n in by_name if n not in names]
        if missing or unknown:
            raise ModelConfigError(f"{config.source}: the config's {kind}s {sorted(by_name)} differ from "
                                   f"the engine's {names}; list every {kind} with its engine name, or none")
    return tuple(_serve_tensor(s, by_name.get(s.name), config, kind) for s in specs)


def resolve_signature(config: ModelConfig, engine: Any) -> Signature:
    """Joins an engine's specs (a ``ModelEngine``'s inputs and outputs) with the config;
    ``ModelConfigError`` where they disagree."""
    return Signature(model=config.name, max_batch_size=config.max_batch_size,
                     inputs=_serve_all(engine.inputs, config.inputs, config, "input"),
                     outputs=_serve_all(engine.outputs, config.outputs, config, "output"))
