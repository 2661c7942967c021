"""Calibrators: a clipping threshold per tensor from its observer, and symmetric INT8 scales.

Symmetric INT8 (zero point 0, values in [-127, 127]): ``scale = threshold / 127``. The
threshold comes from the tensor's ``TensorObserver``:

- ``minmax``: the largest ``|x|`` seen; nothing is clipped (the usual choice for transformers);
- ``percentile``: the given percentile of ``|x|`` (99.99 by default), interpolated in its bin;
- ``entropy``: the threshold whose 128-level quantized distribution is closest to the observed
  one in KL divergence (TensorRT's entropy calibration, "8-bit Inference with TensorRT",
  GTC 2017), the classic default for CNNs; values past the threshold are folded into its last
  bin. Exact zeros (half of a ReLU's output) are exact at any scale: they count as one level
  of their own in both distributions rather than being merged into the first group, where
  spreading them would favour small thresholds; without them, a distribution of a few spikes
  (an image of 17 grey levels) would collapse into one spike at the first threshold tried;
- ``mse``: the threshold minimizing the expected squared quantization error over the
  histogram: rounding noise ``scale**2 / 12`` for each value inside, the squared distance to
  the threshold for each value clipped.

No threshold exceeds the largest ``|x|`` seen. Weights get one scale per output channel
(``weight_scales``).

>>> import torch
>>> from ember.builder.calibration.observers import TensorObserver
>>> obs = TensorObserver("x"); obs.update(torch.tensor([-2.54, 1.0]))
>>> activation_record(obs, "minmax").scale
(0.019999999552965164,)
"""
from __future__ import annotations

import enum

import numpy as np

from ember.builder.calibration.observers import TensorObserver
from ember.errors import BuildError
from ember.plan.records import QuantDType, QuantRecord

#: The largest INT8 magnitude of symmetric quantization.
QMAX = 127
#: Smallest scale given (a tensor that was all zeros): float32's epsilon, as PyTorch's observers.
MIN_SCALE = float(np.finfo(np.float32).eps)
#: Default percentile of the ``percentile`` calibrator.
DEFAULT_PERCENTILE = 99.99
#: Levels of the quantized distribution the entropy calibrator compares (|q| in 0..127).
ENTROPY_LEVELS = 128
#: The largest fraction of a tensor's values the entropy calibrator may clip.
MAX_CLIPPED = 0.01


class Calibrator(enum.StrEnum):
    """How activation thresholds are chosen (see the module's docstring)."""

    ENTROPY = "entropy"
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"


def to_calibrator(value: Calibrator | str) -> Calibrator:
    """``value`` as a ``Calibrator``; a ``BuildError`` listing the calibrators otherwise."""
    try:
        return Calibrator(value)
    except ValueError:
        names = ", ".join(c.value for c in Calibrator)
        raise BuildError(f"unknown calibrator {value!r}; use one of {names}") from None


def check_percentile(percentile: float) -> float:
    """``percentile`` as a float in (0, 100]; a ``BuildError`` otherwise."""
    p = float(percentile)
    if not 0 < p <= 100:
        raise BuildError(f"percentile {percentile!r} must be in (0, 100], such as 99.99")
    return p


def minmax_threshold(obs: TensorObserver) -> float:
    """The largest ``|x|`` seen."""
    return obs.amax


def percentile_threshold(obs: TensorObserver, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile`` of ``|x|`` (zeros included), interpolated linearly inside its bin."""
    p = check_percentile(percentile)
    total = int(obs.hist.sum())
    if not total or obs.range == 0.0:
        return obs.amax
    cdf = np.cumsum(obs.hist)
    target = total * p / 100.0
    k = int(np.searchsorted(cdf, target))
    k = min(k, obs.bins - 1)
    before = float(cdf[k - 1]) if k else 0.0
    inside = float(obs.hist[k])
    frac = (target - before) / inside if inside else 1.0
    return min((k + min(max(frac, 0.0), 1.0)) * obs.bin_width, obs.amax)


def entropy_threshold(obs: TensorObserver, levels: int = ENTROPY_LEVELS) -> float:
    """The threshold minimizing KL(P || Q) (see the module's docstring).

    For each candidate ``i`` bins (``levels`` to all): P is the histogram's first ``i`` bins
    with everything beyond added to the last; Q merges those ``i`` bins into ``levels`` groups
    and spreads each group's count evenly over the bins that are non-empty in P; the exact
    zeros are one more level, the same in both. The threshold is the upper edge of the best
    candidate's last bin."""
    hist = obs.nonzero_hist().astype(np.float64)
    n = obs.bins
    if obs.range == 0.0 or not hist.any() or n <= levels:
        return obs.amax
    kl = entropy_divergences(hist, float(obs.zeros), levels)
    best_i = levels + int(np.argmin(kl))  # the first of equal divergences: the smallest threshold
    return min(best_i * obs.bin_width, obs.amax)


def entropy_divergences(hist: np.ndarray, zeros: float = 0.0, levels: int = ENTROPY_LEVELS) -> np.ndarray:
    """KL(P || Q) of every candidate ``i`` in ``levels .. len(hist)`` (``entropy_threshold``),
    all at once from prefix sums: within a group every non-empty bin of Q holds the same value,
    so ``sum p log q`` is, per group, ``log(q) * sum p``; ``inf`` where P has mass Q lacks."""
    n = len(hist)
    i = np.arange(levels, n + 1)
    width = (i // levels)[:, None]
    starts = np.arange(levels)[None, :] * width                                   # [candidates, levels]
    ends = np.concatenate([starts[:, 1:], i[:, None]], axis=1)                    # the last group ends at i
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    cnonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    xlogx = np.where(hist > 0, hist * np.log(np.where(hist > 0, hist, 1.0)), 0.0)
    clogs = np.concatenate([[0.0], np.cumsum(xlogx)])
    outliers = csum[n] - csum[i]
    last = hist[i - 1] + outliers                                                 # P's last bin
    merged = csum[ends] - csum[starts]                                            # Q's mass per group
    members = (cnonzero[ends] - cnonzero[starts]).astype(np.float64)              # non-empty bins of P
    members[:, -1] += (hist[i - 1] == 0) & (outliers > 0)
    p_mass = merged.copy()
    p_mass[:, -1] += outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(np.where(merged > 0, merged / np.maximum(members, 1), 1.0))
        plogq = np.sum(np.where(p_mass > 0, p_mass * log_q, 0.0), axis=1)
        plogp = clogs[i - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)
        p_total, q_total = csum[n] + zeros, csum[i] + zeros
        kl = (plogp - plogq) / p_total + np.log(q_total / p_total)
    lacking = np.any((p_mass > 0) & (merged <= 0), axis=1) | (csum[i] <= 0)
    # A threshold below most of the values makes P all one bin, which Q matches exactly (KL 0):
    # a tensor whose values all lie away from zero would be clipped to its smallest value.
    lacking |= outliers > MAX_CLIPPED * (csum[n] + zeros)
    return np.where(lacking, np.inf, kl)


def mse_threshold(obs: TensorObserver) -> float:
    """The threshold minimizing the expected squared error of symmetric INT8 quantization over
    the histogram (candidates: every bin's upper edge, and the largest ``|x|``)."""
    hist = obs.nonzero_hist().astype(np.float64)  # zeros are exact at every scale
    if obs.range == 0.0 or not hist.any():
        return obs.amax
    w = obs.bin_width
    centers = (np.arange(obs.bins) + 0.5) * w
    candidates = np.unique(np.minimum(np.arange(1, obs.bins + 1) * w, obs.amax))
    # sums over the bins whose centre lies past each candidate: count, sum c, sum c^2
    past = np.searchsorted(centers, candidates, side="right")
    n_out, c1, c2 = (_suffix_sums(hist)[past], _suffix_sums(hist * centers)[past],
                     _suffix_sums(hist * centers**2)[past])
    n_in = hist.sum() - n_out
    scale = candidates / QMAX
    clipped = c2 - 2 * candidates * c1 + candidates**2 * n_out + n_out * w * w / 12
    error = n_in * scale**2 / 12 + clipped
    return float(candidates[int(np.argmin(error))])


def _suffix_sums(v: np.ndarray) -> np.ndarray:
    """``out[i] = v[i:].sum()``, with ``out[len(v)] = 0``."""
    return np.concatenate([np.cumsum(v[::-1])[::-1], [0.0]])


def threshold(obs: TensorObserver, calibrator: Calibrator | str,
              percentile: float = DEFAULT_PERCENTILE) -> float:
    """The clipping threshold of ``obs`` by ``calibrator``."""
    method = to_calibrator(calibrator)
    if method is Calibrator.MINMAX:
        return minmax_threshold(obs)
    if method is Calibrator.PERCENTILE:
        return percentile_threshold(obs, percentile)
    if method is Calibrator.ENTROPY:
        return entropy_threshold(obs)
    return mse_threshold(obs)


def scale_of(threshold: float) -> float:
    """The symmetric INT8 scale of a threshold, as a float32 value (so that a calibration cache
    stores it exactly): ``threshold / 127``, at least ``MIN_SCALE``."""
    return float(np.float32(max(threshold / QMAX, MIN_SCALE)))


def source_of(calibrator: Calibrator | str) -> str:
    """The ``QuantRecord.source`` of scales from ``calibrator``: ``"calibration:entropy"``..."""
    return f"calibration:{to_calibrator(calibrator).value}"


def scale_record(tensor: str, scale: float, calibrator: Calibrator | str) -> QuantRecord:
    """The per-tensor symmetric INT8 record of ``tensor`` with ``scale``."""
    return QuantRecord(tensor, QuantDType.INT8, (max(float(scale), MIN_SCALE),), (0,), None,
                       source_of(calibrator))


def activation_record(obs: TensorObserver, calibrator: Calibrator | str = Calibrator.ENTROPY,
                      percentile: float = DEFAULT_PERCENTILE) -> QuantRecord:
    """The per-tensor symmetric INT8 record of the observed tensor."""
    return scale_record(obs.name, scale_of(threshold(obs, calibrator, percentile)), calibrator)


def weight_scales(array: np.ndarray, axis: int | None = 0, tensor: str = "") -> QuantRecord:
    """Per-channel symmetric INT8 scales of a weight: one per index along ``axis`` (the output
    channels: 0 for conv weights ``[out, in, kh, kw]``), ``max |w|`` over the channel / 127;
    ``axis=None``: one scale for the whole weight.

    >>> w = np.array([[1.27, -0.5], [0.0, 0.0]], dtype=np.float32)
    >>> r = weight_scales(w, axis=0, tensor="conv.w")
    >>> round(r.scale[0], 6), r.scale[1] == MIN_SCALE, r.axis, r.zero_point
    (0.01, True, 0, (0, 0))
    """
    w = np.asarray(array)
    if axis is None:
        amax = np.abs(w.astype(np.float64)).max(initial=0.0)
        if not np.isfinite(amax):
            raise BuildError(f"weight {tensor!r} holds NaN or inf values; it cannot be quantized")
        return QuantRecord(tensor, QuantDType.INT8, (scale_of(float(amax)),), (0,), None,
                           source_of(Calibrator.MINMAX))
    if not w.ndim:
        raise BuildError(f"weight {tensor!r} is a scalar; per-channel scales need an axis")
    if not -w.ndim <= axis < w.ndim:
        raise BuildError(f"weight {tensor!r} has rank {w.ndim}, it has no axis {axis}")
    axis = axis % w.ndim
    if not w.shape[axis]:
        raise BuildError(f"weight {tensor!r} has no channels along axis {axis}")
    others = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.abs(w.astype(np.float64)).max(axis=others) if others else np.abs(w.astype(np.float64))
    if not np.all(np.isfinite(amax)):
        raise BuildError(f"weight {tensor!r} holds NaN or inf values; it cannot be quantized")
    scales = tuple(scale_of(float(a)) for a in np.atleast_1d(amax))
    return QuantRecord(tensor, QuantDType.INT8, scales, (0,) * len(scales), axis, source_of(Calibrator.MINMAX))
