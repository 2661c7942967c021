"""Calibrators on distributions with known answers, per-channel weight scales, the observer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.builder.calibration import Calibrator, TensorObserver, activation_record, threshold, weight_scales
from ember.builder.calibration.calibrators import MIN_SCALE, QMAX, percentile_threshold, scale_of, to_calibrator
from ember.errors import BuildError
from ember.plan.records import QuantDType


def observed(*arrays: np.ndarray, bins: int = 2048) -> TensorObserver:
    obs = TensorObserver("t", bins)
    for a in arrays:
        obs.update(torch.from_numpy(np.asarray(a, dtype=np.float32)))
    return obs


def sample_mse(x: np.ndarray, t: float) -> float:
    """Mean squared error of symmetric int8 quantization of x with threshold t."""
    s = t / QMAX
    return float(np.mean((x - np.clip(np.round(x / s), -QMAX, QMAX) * s) ** 2))


RNG = np.random.default_rng(0)
GAUSS = RNG.standard_normal(400_000)
HEAVY = np.concatenate([RNG.standard_normal(400_000), [60.0, -45.0, 52.0]])  # a few far outliers


# ---- observer ----------------------------------------------------------------------------------
def test_observer_running_min_max_and_counts():
    obs = observed([1.0, -2.0, 0.0], [3.0, 0.0])
    assert (obs.min, obs.max, obs.amax, obs.count, obs.zeros, obs.nonfinite) == (-2.0, 3.0, 3.0, 5, 2, 0)
    # the first batch set the range to 2; 3.0 grew it by the whole factor 2, to 4
    assert obs.range == 4.0 and obs.hist.sum() == 5 and obs.hist[0] == 2 and obs.hist[1536] == 1


def test_observer_ignores_nan_and_inf_with_a_count():
    obs = observed([1.0, np.nan, np.inf, -np.inf, -0.5])
    assert (obs.min, obs.max, obs.count, obs.nonfinite) == (-0.5, 1.0, 2, 3)
    assert obs.hist.sum() == 2
    obs.update(torch.tensor([np.nan]))
    assert obs.nonfinite == 4 and obs.count == 2


def test_observer_grows_its_range_by_merging_bins_exactly():
    obs = observed(np.linspace(0, 1, 1001), bins=100)
    before = obs.hist.copy()
    obs.update(torch.tensor([2.5]))  # range 1 -> 3: every 3 old bins become one
    assert obs.range == pytest.approx(3.0) and obs.hist.sum() == 1002
    expected = np.bincount(np.arange(100) // 3, weights=before, minlength=100)
    expected[int(2.5 / 3 * 100)] += 1
    assert np.array_equal(obs.hist, expected)
    # the merged histogram equals one built at the final range from the start, bin for bin
    direct = np.histogram(np.concatenate([np.linspace(0, 1, 1001), [2.5]]), bins=100, range=(0, 3))[0]
    assert np.abs(obs.hist - direct).sum() <= 2  # values on a bin edge may fall either side


def test_observer_of_zeros_then_values():
    obs = observed(np.zeros(10), [4.0])
    assert obs.range == 4.0 and obs.hist[0] == 10 and obs.hist[-1] == 1 and obs.zeros == 10


# ---- calibrators --------------------------------------------------------------------------------
def test_minmax_is_max_abs_over_127():
    obs = observed([0.5, -3.0], [2.0])
    assert threshold(obs, "minmax") == 3.0
    rec = activation_record(obs, "minmax")
    assert rec.scale == (float(np.float32(3.0 / 127)),) and rec.zero_point == (0,) and rec.axis is None
    assert rec.dtype is QuantDType.INT8 and rec.source == "calibration:minmax"


@pytest.mark.parametrize("p", [99.99, 99.0, 90.0, 50.0])
def test_percentile_of_a_known_distribution(p):
    x = RNG.uniform(-1, 1, 500_000)
    obs = observed(x)
    want = np.percentile(np.abs(x), p)
    assert percentile_threshold(obs, p) == pytest.approx(want, abs=2 * obs.bin_width)


def test_percentile_100_is_the_max_and_bad_percentiles_are_refused():
    obs = observed(GAUSS)
    assert threshold(obs, "percentile", 100) == pytest.approx(np.abs(GAUSS).max(), rel=1e-6)
    for bad in (0, -1, 100.5):
        with pytest.raises(BuildError, match="percentile"):
            threshold(obs, "percentile", bad)


def test_entropy_clips_a_heavy_tailed_distribution_below_its_max():
    obs = observed(HEAVY)
    t = threshold(obs, "entropy")
    assert 3.0 < t < 20.0 < obs.amax  # the outliers at ~50 are clipped, the gaussian body kept


def test_entropy_keeps_a_uniform_distribution_whole():
    obs = observed(RNG.uniform(-1, 1, 400_000))
    assert threshold(obs, "entropy") == pytest.approx(1.0, abs=0.03)


def test_mse_threshold_is_the_sample_mse_optimum():
    for x in (GAUSS, HEAVY):
        obs = observed(x)
        t = threshold(obs, "mse")
        grid = np.linspace(1.0, np.abs(x).max(), 400)
        best = min(sample_mse(x, g) for g in grid)
        assert sample_mse(x, t) <= best * 1.03
    # between: below the max of a heavy tail (clips the outliers), above the gaussian body
    assert 3.0 < threshold(observed(HEAVY), "mse") < np.abs(HEAVY).max()


@pytest.mark.parametrize("calibrator", list(Calibrator))
def test_no_threshold_above_the_max_and_scales_positive(calibrator):
    for x in (GAUSS, HEAVY, RNG.uniform(0, 5, 10_000), np.array([0.0, 0.0]), np.array([7.0])):
        obs = observed(x)
        t = threshold(obs, calibrator)
        assert 0 <= t <= obs.amax
        assert activation_record(obs, calibrator).scale[0] > 0


def test_scale_of_is_float32_and_never_zero():
    assert scale_of(0.0) == MIN_SCALE
    assert scale_of(1.0) == float(np.float32(1 / 127))


def test_unknown_calibrator():
    with pytest.raises(BuildError, match="unknown calibrator 'kl'.*entropy, minmax, percentile, mse"):
        to_calibrator("kl")


# ---- weights ------------------------------------------------------------------------------------
def test_per_output_channel_weight_scales():
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0
    rec = weight_scales(w, axis=0, tensor="conv.w")
    want = np.abs(w).reshape(4, -1).max(axis=1) / 127
    assert rec.axis == 0 and rec.per_channel and rec.zero_point == (0, 0, 0, 0) and rec.tensor == "conv.w"
    assert np.allclose(rec.scale, np.where(want > 0, want, MIN_SCALE), rtol=1e-6)
    assert rec.scale[2] == MIN_SCALE
    # a gemm weight [in, out] has its output channels on axis 1 (-1 counts from the end)
    g = RNG.standard_normal((5, 7)).astype(np.float32)
    assert weight_scales(g, axis=-1).axis == 1 and len(weight_scales(g, axis=-1).scale) == 7


def test_weight_scales_errors():
    with pytest.raises(BuildError, match="no axis 4"):
        weight_scales(np.ones((2, 2)), axis=4, tensor="w")
    with pytest.raises(BuildError, match="NaN or inf"):
        weight_scales(np.array([[1.0, np.nan]]), axis=0, tensor="w")


def test_entropy_of_a_few_spikes_with_zeros_does_not_collapse():
    # an image of 17 grey levels, half of it 0: the first candidates hold a single spike, which
    # matches its quantized self exactly unless the zeros count as a level of their own
    x = RNG.integers(0, 17, 50_000) / 16.0
    x[: 25_000] = 0
    assert threshold(observed(x), "entropy") >= 0.9


def test_entropy_of_relu_output_keeps_most_of_the_range():
    x = np.maximum(RNG.standard_normal(400_000), 0)  # half exact zeros
    t = threshold(observed(x), "entropy")
    assert 2.5 < t <= x.max()


def reference_entropy_threshold(obs: TensorObserver, levels: int = 128) -> float:
    """The entropy calibrator written as the loop of the GTC 2017 slides, one candidate at a time."""
    hist = obs.nonzero_hist().astype(np.float64)
    zeros = float(obs.zeros)
    best_i, best_kl = obs.bins, np.inf
    for i in range(levels, obs.bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = p > 0
        group = np.minimum(np.arange(i) // (i // levels), levels - 1)
        merged = np.bincount(group, weights=hist[:i], minlength=levels)
        members = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, merged[group] / np.maximum(members[group], 1), 0.0)
        if np.any(nonzero & (q <= 0)) or q.sum() <= 0:
            continue
        pt, qt = p.sum() + zeros, q.sum() + zeros
        kl = np.sum(p[nonzero] / pt * np.log((p[nonzero] / pt) / (q[nonzero] / qt)))
        kl += zeros / pt * np.log(qt / pt) if zeros else 0.0
        if kl < best_kl - 1e-12:
            best_i, best_kl = i, kl
    return min(best_i * obs.bin_width, obs.amax)


@pytest.mark.parametrize("data", ["gauss", "heavy", "relu", "spikes", "uniform"])
def test_entropy_matches_the_candidate_by_candidate_loop(data):
    x = {"gauss": GAUSS[:50_000], "heavy": HEAVY[-50_000:], "relu": np.maximum(GAUSS[:50_000], 0),
         "spikes": np.repeat(RNG.integers(0, 17, 500) / 16.0, 20),
         "uniform": RNG.uniform(-1, 1, 50_000)}[data]
    obs = observed(x)
    assert threshold(obs, "entropy") == pytest.approx(reference_entropy_threshold(obs), abs=obs.bin_width * 1.01)


def test_per_tensor_weight_scale():
    w = np.array([[0.5, -2.54], [1.0, 0.0]], dtype=np.float32)
    r = weight_scales(w, axis=None, tensor="fc.w")
    assert r.axis is None and r.zero_point == (0,) and r.scale == pytest.approx((2.54 / QMAX,))
    with pytest.raises(BuildError, match="'fc.w' holds NaN"):
        weight_scales(np.array([1.0, np.nan]), axis=None, tensor="fc.w")
