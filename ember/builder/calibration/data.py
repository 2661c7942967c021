"""Calibration data: feed dicts from an iterable, an ``.npz`` file or a folder of them, checked.

``calibration_batches(source, specs)`` yields one ``{input name: array}`` feed dict per batch,
each validated against the engine's input specs (``ember.runtime.inputs.validate_inputs``): a
wrong name, shape or dtype is an ``InputError`` that names it and the file or batch at fault.
``source`` is

- an iterable of feed dicts (numpy arrays or torch tensors), used as given;
- an ``.npz`` file whose arrays are named after the inputs and stacked along the batch axis
  (axis 0), split into batches of the engine's batch size (or of ``batch_size``; an engine with
  a dynamic batch takes up to 32 samples a batch, within its profile). Where the batch size is
  fixed, samples that do not fill a last batch are left out;
- a folder: every ``*.npz`` file in it, in name order;
- a dict of stacked arrays: like an ``.npz`` file (so one feed dict is one batch).

>>> np.savez("calib.npz", input=images)  # images: float32[N, 3, 224, 224]  # doctest: +SKIP
>>> for feeds in calibration_batches("calib.npz", engine.inputs):           # doctest: +SKIP
...     pass
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ember.errors import InputError
from ember.plan.plan import TensorSpec
from ember.runtime.inputs import validate_inputs

#: What calibration data can be (see the module's docstring).
CalibrationData = Union[Iterable[Mapping[str, Any]], Mapping[str, Any], str, os.PathLike[str]]

#: Samples a batch for an engine whose batch dim is dynamic (within its profile).
DYNAMIC_BATCH = 32


def what_to_pass(specs: Sequence[TensorSpec]) -> str:
    """The sentence saying what calibration data to give for an engine with these inputs."""
    names = ", ".join(f"'{s.name}' ({s.dtype.value}{s.range_text()})" for s in specs)
    return (f"give an iterable of {{input name: array}} dicts, an .npz file whose arrays are named after "
            f"the engine's inputs ({names}) and stacked along the batch axis, or a folder of such files")


def calibration_batches(source: CalibrationData, specs: Sequence[TensorSpec],
                        batch_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Yields the validated feed dicts of ``source`` (see the module's docstring); an
    ``InputError`` names the input and the file or batch at fault, or says what to pass when
    there is no data at all. Files are read as the batches are used."""
    specs = list(specs)
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"calibration batch_size {batch_size!r} must be 1 or more")
    count = 0
    for where, batch in _batches(source, specs, None if batch_size is None else int(batch_size)):
        try:
            validate_inputs(specs, batch)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        count += 1
        yield dict(batch)
    if not count:
        raise InputError(f"the calibration data is empty; {what_to_pass(specs)}")


def _batches(source: CalibrationData, specs: Sequence[TensorSpec],
             batch_size: int | None) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise InputError(f"calibration folder {str(path)!r} holds no .npz files; {what_to_pass(specs)}")
            for f in files:
                yield from _split(_read_npz(f, specs), specs, batch_size, f"calibration file {str(f)!r}")
        elif path.is_file():
            yield from _split(_read_npz(path, specs), specs, batch_size, f"calibration file {str(path)!r}")
        else:
            raise InputError(f"calibration data {str(path)!r} does not exist; {what_to_pass(specs)}")
    elif isinstance(source, Mapping):
        yield from _split(source, specs, batch_size, "the calibration arrays")
    elif isinstance(source, (bytes, bytearray, np.ndarray, torch.Tensor)) or not isinstance(source, Iterable):
        raise InputError(f"calibration data is a {type(source).__name__}; {what_to_pass(specs)}")
    else:
        for i, batch in enumerate(source):
            if not isinstance(batch, Mapping):
                raise InputError(f"calibration batch {i} is a {type(batch).__name__}; each batch is a dict "
                                 f"of input name -> array")
            yield f"calibration batch {i}", batch


def _read_npz(path: Path, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"calibration file {str(path)!r} cannot be read as an .npz file ({e}); "
                         f"{what_to_pass(specs)}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"calibration file {str(path)!r} holds one unnamed array, not an .npz of arrays "
                         f"named after the inputs; save it with np.savez(path, <input name>=array, ...)")
    with loaded:
        try:
            return {name: loaded[name] for name in loaded.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"calibration file {str(path)!r} is damaged or holds objects ({e})") from None


def _batch_size(specs: Sequence[TensorSpec], arrays: Mapping[str, Any],
                given: int | None) -> tuple[int, bool, int]:
    """(samples a batch, whether that size is fixed by the engine, fewest samples a batch)."""
    fixed = {s.shape[0] for s in specs if s.name in arrays and s.shape and isinstance(s.shape[0], int)}
    dynamic = [s for s in specs if s.name in arrays and s.shape and not isinstance(s.shape[0], int)]
    lo = max((s.min[0] for s in dynamic if s.min), default=1)
    if given is not None:
        return given, bool(fixed), lo
    if fixed:
        return min(int(d) for d in fixed), True, lo
    his = [s.max[0] for s in dynamic if s.max and s.max[0] is not None]
    hi = min([DYNAMIC_BATCH, *[h for h in his if h is not None]])
    return max(hi, lo), False, lo


def _split(arrays: Mapping[str, Any], specs: Sequence[TensorSpec], batch_size: int | None,
           where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not arrays:
        raise InputError(f"{where} holds no arrays; {what_to_pass(specs)}")
    samples: dict[str, int] = {}
    for name, a in arrays.items():
        shape = getattr(a, "shape", None)
        if shape is None:
            raise InputError(f"{where}: input {name!r} is a {type(a).__name__}; give a numpy array or a "
                             f"torch tensor with the samples stacked along axis 0")
        if not len(shape):
            raise InputError(f"{where}: input {name!r} is a scalar; stack the samples along axis 0")
        samples[name] = int(shape[0])
    if len(set(samples.values())) > 1:
        counts = ", ".join(f"{k}: {v}" for k, v in samples.items())
        raise InputError(f"{where}: the arrays hold different numbers of samples along axis 0 ({counts}); "
                         f"each input needs one entry per sample")
    n = next(iter(samples.values()))
    size, fixed, fewest = _batch_size(specs, arrays, batch_size)
    if fixed and 0 < n < size:
        raise InputError(f"{where} holds {n} samples, fewer than the engine's batch size {size}; give at "
                         f"least {size}")
    for start in range(0, n, size):
        stop = min(start + size, n)
        if stop - start < (size if fixed else fewest):
            break  # a last partial batch the engine cannot take
        yield (f"{where}, batch {start // size} (samples {start}..{stop - 1})",
               {k: a[start:stop] for k, a in arrays.items()})
