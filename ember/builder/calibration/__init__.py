"""Post-training calibration: INT8 activation scales from running the fp32 engine on data.

``calibrate(engine, data)`` runs an fp32 engine (CPU or CUDA) over the calibration batches once,
observing every graph input and intermediate float tensor (``observers``), picks a clipping
threshold per tensor with the chosen calibrator (``calibrators``: entropy, minmax, percentile,
mse; the inputs of GEMMs and of convolutions over one pixel, and channel-gated feature maps,
are never clipped: min-max, ``unclipped_tensors``) and returns a ``QuantizationPlan`` of
symmetric per-tensor INT8 ``QuantRecord``s (``scale = threshold / 127``, zero point 0,
``source="calibration:<calibrator>"``), named as the tensors of the engine's optimized graph.
With ``cache``, a cache that fits the engine and the calibrator is used instead of data, and a
fresh calibration is written to it (``cache``: TensorRT's calibration-table format).
Per-channel weight scales: ``weight_scales``.

>>> engine = ember.build("model.onnx", ember.BuildConfig(device="cpu"))            # doctest: +SKIP
>>> plan = calibrate(engine, "calib.npz", calibrator="entropy", cache="model.calib")  # doctest: +SKIP
>>> plan.get("conv1_out").scale                                                    # doctest: +SKIP
(0.0123,)

The records say how each tensor is quantized; ``ember.passes.int8`` makes the INT8 layers
from them (and smooths a GEMM whose input has min-max scales and per-channel maxima).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from ember.builder.calibration.cache import (
    CalibrationCache,
    read_cache,
    read_channel_max,
    write_cache,
    write_channel_max,
)
from ember.builder.calibration.calibrators import (
    DEFAULT_PERCENTILE,
    Calibrator,
    activation_record,
    check_percentile,
    scale_of,
    scale_record,
    threshold,
    to_calibrator,
    weight_scales,
)
from ember.builder.calibration.data import CalibrationData, calibration_batches, what_to_pass
from ember.builder.calibration.observers import (
    DEFAULT_BINS,
    TensorObserver,
    calibration_tensors,
    observe_engine,
    unclipped_tensors,
)
from ember.builder.progress import BuildProgress
from ember.errors import BuildError
from ember.plan.records import QuantizationPlan
from ember.runtime.engine import Engine

__all__ = [
    "DEFAULT_BINS", "DEFAULT_PERCENTILE", "CalibrationCache", "CalibrationData", "CalibrationWarning",
    "Calibrator", "TensorObserver", "activation_record", "calibrate", "calibration_batches",
    "calibration_tensors", "observe_engine", "read_cache", "threshold", "unclipped_tensors", "weight_scales",
    "write_cache",
]


class CalibrationWarning(UserWarning):
    """A calibration cache that could not be used, or tensors with NaN/inf values."""


def calibrate(engine: Engine, data: CalibrationData | None = None,
              calibrator: Calibrator | str = Calibrator.ENTROPY, percentile: float = DEFAULT_PERCENTILE,
              cache: str | os.PathLike[str] | None = None, tensors: Iterable[str] | None = None,
              progress: bool | BuildProgress | None = None, *,
              batch_size: int | None = None, channels: Iterable[str] = (),
              unclipped: Iterable[str] | None = None) -> QuantizationPlan:
    """Per-tensor INT8 activation scales of ``engine`` (an fp32 CPU or CUDA engine) from ``data``.

    ``data``: calibration batches (``calibration_batches``: feed dicts, an ``.npz`` file or a
    folder of them); not needed when ``cache`` holds a usable calibration.
    ``calibrator``: ``entropy`` | ``minmax`` | ``percentile`` | ``mse``; ``percentile``: the
    percentile calibrator's (0, 100].
    ``cache``: a calibration cache file. If it exists and has a scale for every tensor and was
    written by the same calibrator, its scales are returned and nothing runs; a cache for
    another model or calibrator gives a ``CalibrationWarning`` and a fresh calibration, which
    is then written to it. A damaged cache is a ``BuildError`` naming the file and line.
    ``tensors``: calibrate only these (names of the engine's graph); default: every float graph
    input and layer output. ``progress``: show a bar (``None``: when stderr is a terminal), or a
    running ``BuildProgress`` to show it on. ``batch_size``: samples a batch for ``.npz`` data.
    ``channels``: tensors (of those calibrated) whose largest ``|x|`` per channel of the last dim
    is measured too (``QuantizationPlan.channel_max``: GEMM inputs, for smoothing); a cache keeps
    them in a side file, ``<cache>.channels.npz``, which other tools' caches do not have (their
    GEMM inputs are then not smoothed).
    ``unclipped``: tensors calibrated by min-max whatever ``calibrator`` is (their records say
    ``calibration:minmax``); default (``None``): ``unclipped_tensors`` of the engine's graph,
    the inputs of GEMMs and of convolutions over one pixel and channel-gated feature maps,
    whose largest values are the same few features in every sample; ``()``: none. A cache
    keeps their min-max scales; read back from a cache Ember wrote, they are min-max records
    again (another tool's scales keep the cache's calibrator).

    >>> plan = calibrate(engine, [{"input": x} for x in batches], "minmax")   # doctest: +SKIP
    """
    method = to_calibrator(calibrator)
    pct = check_percentile(percentile)
    names = calibration_tensors(engine.plan.graph, tensors)
    per_channel = [n for n in dict.fromkeys(channels) if n in set(names)]
    whole = set(unclipped_tensors(engine.plan.graph, names) if unclipped is None else unclipped) & set(names)

    def method_of(name: str) -> Calibrator:
        return Calibrator.MINMAX if name in whole else method

    if cache is not None and Path(cache).exists():
        cached = read_cache(cache)
        why = cached.mismatch(method, pct, names)
        if why is None:
            ours = cached.tool == "EMBER"
            return QuantizationPlan({n: scale_record(n, cached.scales[n], method_of(n) if ours else method)
                                     for n in names}, read_channel_max(cache, per_channel))
        warnings.warn(f"calibration cache {str(cache)!r} is not used: {why}; calibrating afresh",
                      CalibrationWarning, stacklevel=2)
    if data is None:
        where = f" and the cache {str(cache)!r} cannot be used" if cache is not None else ""
        raise BuildError(f"calibration needs data: none was given{where}; {what_to_pass(engine.inputs)}")
    batches = calibration_batches(data, engine.inputs, batch_size)
    shown: contextlib.AbstractContextManager[BuildProgress] = (
        contextlib.nullcontext(progress) if isinstance(progress, BuildProgress) else BuildProgress(progress))
    with shown as prog:
        observers = observe_engine(engine, batches, names, prog, channels=per_channel)
    _warn_nonfinite(observers.values())
    scales = {n: scale_of(threshold(observers[n], method_of(n), pct)) for n in names}
    channel_max = {n: tuple(float(v) for v in cm) for n in per_channel
                   if (cm := observers[n].channel_amax) is not None}
    if cache is not None:
        write_cache(cache, method, scales, pct)
        write_channel_max(cache, channel_max)
    return QuantizationPlan({n: scale_record(n, s, method_of(n)) for n, s in scales.items()}, channel_max)


def _warn_nonfinite(observers: Iterable[TensorObserver]) -> None:
    bad = [o for o in observers if o.nonfinite or not o.count]
    if not bad:
        return
    parts = [f"'{o.name}' ({o.nonfinite} NaN/inf{', no finite value' if not o.count else ''})" for o in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(f"calibration ignored NaN/inf values of {', '.join(parts)}{more}; tensors with no finite "
                  f"value get the smallest scale", CalibrationWarning, stacklevel=3)
