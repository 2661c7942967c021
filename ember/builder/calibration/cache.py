"""The calibration cache: TensorRT's calibration-table text format, read and written.

The first line names the tool, its version and the calibrator; each further line is
``tensor_name: <scale>``, the scale as the 8 hex digits of its float32 bits, big-endian
(``struct.pack(">f", scale).hex()``: 1.0 is ``3f800000``), as TensorRT writes them::

    TRT-8600-EntropyCalibration2
    input: 3c010204
    conv1_out: 3d7a2b8c

Ember writes ``EMBER-<version>-<calibrator>`` headers (``EntropyCalibration2``,
``MinMaxCalibration``, ``PercentileCalibration(99.99)``, ``MSECalibration``) and reads
TensorRT's too, so a cache from TensorRT or another tool using the format is usable. Tensor names
may hold spaces and colons (TensorRT's ``(Unnamed Layer* 3) [Convolution]_output``); the scale
is what follows the last colon.

>>> float_to_hex(1.0), hex_to_float("3f800000")
('3f800000', 1.0)
"""
from __future__ import annotations

import math
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ember._version import __version__
from ember.builder.calibration.calibrators import Calibrator
from ember.errors import BuildError

#: TensorRT's calibrator names (and Ember's for the calibrators TensorRT lacks) -> Ember's.
ALGORITHMS: dict[str, Calibrator | None] = {
    "EntropyCalibration2": Calibrator.ENTROPY,
    "EntropyCalibration": Calibrator.ENTROPY,
    "MinMaxCalibration": Calibrator.MINMAX,
    "PercentileCalibration": Calibrator.PERCENTILE,
    "MSECalibration": Calibrator.MSE,
    "LegacyCalibration": None,  # TensorRT's quantile/regression calibrator: Ember has none
}
#: The name Ember writes for each of its calibrators.
HEADER_NAMES: dict[Calibrator, str] = {
    Calibrator.ENTROPY: "EntropyCalibration2",
    Calibrator.MINMAX: "MinMaxCalibration",
    Calibrator.PERCENTILE: "PercentileCalibration",
    Calibrator.MSE: "MSECalibration",
}

_HEADER = re.compile(r"^(?P<tool>[A-Za-z][A-Za-z0-9_]*)-(?P<version>[^-\s]+)-(?P<algo>[A-Za-z0-9_]+)"
                     r"(?:\((?P<param>[^()\s]*)\))?$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


def float_to_hex(value: float) -> str:
    """The 8 hex digits of ``value`` as a big-endian float32."""
    return struct.pack(">f", value).hex()


def hex_to_float(digits: str) -> float:
    """The float32 whose big-endian bits are the 8 hex ``digits``."""
    value: float = struct.unpack(">f", bytes.fromhex(digits))[0]
    return value


@dataclass(frozen=True)
class CalibrationCache:
    """A calibration cache's content: its header and ``scales`` (tensor name -> scale, in file
    order). ``calibrator`` is ``None`` for a calibrator Ember does not implement."""

    header: str
    tool: str
    version: str
    algorithm: str
    calibrator: Calibrator | None
    percentile: float | None
    scales: Mapping[str, float] = field(default_factory=dict)

    def mismatch(self, calibrator: Calibrator, percentile: float, tensors: Sequence[str]) -> str | None:
        """Why these scales cannot stand for a calibration of ``tensors`` by ``calibrator``
        (another calibrator, another percentile, tensors it lacks: another model), or ``None``.
        Names the cache has beyond ``tensors`` are ignored (TensorRT's name tensors that
        Ember's fusions remove)."""
        if self.calibrator is None:
            return f"it was written by {self.algorithm}, a calibrator Ember does not implement"
        if self.calibrator is not calibrator:
            return f"it was written by the {self.calibrator.value} calibrator, not {calibrator.value}"
        if calibrator is Calibrator.PERCENTILE and self.percentile is not None and self.percentile != percentile:
            return f"it holds the {self.percentile:g}th percentile, not the {percentile:g}th"
        missing = [t for t in tensors if t not in self.scales]
        if missing:
            sample = ", ".join(repr(t) for t in missing[:3])
            return (f"it has no scale for {len(missing)} of the engine's {len(tensors)} tensors "
                    f"({sample}{', ...' if len(missing) > 3 else ''}): it is for another model")
        return None


def header_line(calibrator: Calibrator, percentile: float | None = None) -> str:
    """The header Ember writes: ``EMBER-0.1.0-EntropyCalibration2``; the percentile calibrator
    adds its percentile: ``EMBER-0.1.0-PercentileCalibration(99.99)``."""
    name = HEADER_NAMES[calibrator]
    if calibrator is Calibrator.PERCENTILE and percentile is not None:
        name += f"({percentile!r})"
    return f"EMBER-{__version__.replace('-', '_')}-{name}"


def _damaged(path: Path, line: int, why: str) -> BuildError:
    return BuildError(f"calibration cache {str(path)!r}, line {line}: {why}; fix the file or delete it "
                      f"to calibrate afresh")


def _parse_header(path: Path, text: str) -> tuple[str, str, str, Calibrator | None, float | None]:
    m = _HEADER.match(text)
    if m is None:
        raise _damaged(path, 1, f"the header {text[:60]!r} is not TOOL-VERSION-CALIBRATOR "
                                f"(such as TRT-8600-EntropyCalibration2)")
    algo, param = m["algo"], m["param"]
    if algo not in ALGORITHMS:
        raise _damaged(path, 1, f"unknown calibrator {algo!r} in the header; known: {', '.join(ALGORITHMS)}")
    percentile = None
    if param is not None:
        try:
            percentile = float(param)
        except ValueError:
            raise _damaged(path, 1, f"the header's parameter {param!r} is not a number") from None
    return m["tool"], m["version"], algo, ALGORITHMS[algo], percentile


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    """Reads a calibration cache; a ``BuildError`` naming the file and line if it is damaged."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise BuildError(f"cannot read calibration cache {str(p)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise BuildError(f"calibration cache {str(p)!r} is not a text file; fix the file or delete it "
                         f"to calibrate afresh") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise _damaged(p, 1, "the file has no header line")
    header = lines[0].strip()
    tool, version, algo, calibrator, percentile = _parse_header(p, header)
    scales: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        name, sep, digits = line.rpartition(":")
        name, digits = name.strip(), digits.strip()
        if not sep or not name:
            raise _damaged(p, number, f"{line[:60]!r} is not 'tensor_name: <8 hex digits>'")
        if not _HEX.match(digits):
            raise _damaged(p, number, f"the scale of {name!r} is {digits[:20]!r}, not 8 hex digits")
        value = hex_to_float(digits)
        if not (math.isfinite(value) and value >= 0):
            raise _damaged(p, number, f"the scale of {name!r} is {value}, not a finite scale >= 0")
        if name in first_seen:
            raise _damaged(p, number, f"tensor {name!r} appears again (first on line {first_seen[name]})")
        first_seen[name] = number
        scales[name] = value
    return CalibrationCache(header, tool, version, algo, calibrator, percentile, scales)


def write_cache(path: str | os.PathLike[str], calibrator: Calibrator, scales: Mapping[str, float],
                percentile: float | None = None) -> None:
    """Writes ``scales`` (tensor name -> scale, stored as float32) under Ember's header; the file
    is replaced whole (written beside it, then renamed), so a reader never sees half of it."""
    p = Path(path)
    bad = [n for n in scales if not n or "\n" in n or "\r" in n]
    if bad:
        raise BuildError(f"tensor names {bad!r} cannot be written to a calibration cache (one name a line)")
    body = [header_line(calibrator, percentile if calibrator is Calibrator.PERCENTILE else None)]
    body += [f"{name}: {float_to_hex(scale)}" for name, scale in scales.items()]
    tmp: str | None = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(body) + "\n")
        os.replace(tmp, p)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"cannot write calibration cache {str(p)!r}: {e.strerror or e}") from None


def channels_path(path: str | os.PathLike[str]) -> Path:
    """The side file of a calibration cache holding per-channel maxima (``<cache>.channels.npz``)."""
    p = Path(path)
    return p.with_name(p.name + ".channels.npz")


def write_channel_max(path: str | os.PathLike[str], channel_max: Mapping[str, Sequence[float]]) -> None:
    """Writes the per-channel maxima beside the cache ``path`` (removes a stale side file when
    there are none); written beside it, then renamed."""
    side = channels_path(path)
    if not channel_max:
        side.unlink(missing_ok=True)
        return
    tmp = side.with_name(side.name + ".tmp.npz")
    try:
        names = list(channel_max)
        arrays: dict[str, np.ndarray] = {f"t{i}": np.asarray(channel_max[n], np.float32) for i, n in enumerate(names)}
        arrays["names"] = np.array(names)
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, side)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot write calibration side file {str(side)!r}: {e.strerror or e}") from None


def read_channel_max(path: str | os.PathLike[str], tensors: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """The per-channel maxima of ``tensors`` the side file of cache ``path`` holds (those it has;
    none without a side file, as for another tool's cache); a damaged side file is a ``BuildError``."""
    side = channels_path(path)
    if not tensors or not side.exists():
        return {}
    try:
        with np.load(side, allow_pickle=False) as f:
            names = [str(n) for n in f["names"]]
            found = {n: tuple(float(v) for v in f[f"t{i}"].reshape(-1)) for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BuildError(f"calibration side file {str(side)!r} is damaged ({e}); delete it and the cache "
                         f"to calibrate afresh") from None
    return {n: found[n] for n in tensors if n in found}
