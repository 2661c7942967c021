"""Build to an accuracy target: half-precision (GPU, or CPU bf16 / fp16) or INT8 layers fall back to
fp32 until the engine's outputs are within ``BuildConfig.accuracy_target`` of an fp32 build of the
same model.

INT8 layers fall back the most damaging first: the order of ``ember.builder.int8.layer_errors``
(the error each INT8 layer adds on its own, on the calibration batch), which is what Polygraphy's
``debug precision`` finds by hand; the search below is the same. Half-precision layers fall back
from one end of the network, for the reasons that follow.

Why from one end: in a CNN the rounding error a half-precision layer adds grows through every
layer after it. On MobileNetV2 at batch 128 (H100, fp16) the error relative to each layer's own
range goes from 8e-4 after the first convolution to 0.14 before the head, so the first few layers
own most of what reaches the output: keeping only the first 3 of 66 layers in fp32 takes the
output's max relative error from 1.2e-2 to 7.7e-3, where keeping all 17 depthwise convolutions
in fp32 changes nothing (``bench/gpu_accuracy.py``). In a post-LN transformer it is the other way:
each LayerNorm damps what came before, and the last blocks own the error (BERT-base bf16 on the
CPU, batch 1: 128 of its 168 first half layers in fp32 moved the error from 6.0e-3 to 5.8e-3).
So with 8 or more half layers the search first keeps an eighth of them in fp32 from each end and
goes on from the end whose eighth helped more (``order`` "execution" or "reverse" in the build
info); then 2, 4, ... times as many (from 1 without that probe) until the target is met, and
bisects for the fewest that meet it.

The measure is that of ``ember bench`` and ``ember compare``: ``max|ours - ref| / max|ref|`` over
every output, on calibration inputs (``accuracy_inputs``, else random ones drawn as ``ember run
--random`` does, at each input's profile opt shape). Every trial is a full build (tactic timings
come from a timing cache shared by the trials); the result and the layers kept in fp32 are in
``plan.build_info["accuracy"]``.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ember.backends.tensors import max_relative_error
from ember.errors import BuildError
from ember.plan.config import BuildConfig, Device, Precision
from ember.runtime.engine import Engine

log = logging.getLogger("ember.build")

REDUCED = (Precision.FP16, Precision.BF16, Precision.TF32)
#: Half-precision builds with at least this many reduced layers first try an eighth of them in fp32
#: from each end of the network and search from the end that helped more (``meet_target``).
PROBE_MIN_LAYERS = 8


def applies(config: BuildConfig) -> bool:
    """Whether ``config.accuracy_target`` has anything to do: a GPU build below fp32 (half, tf32,
    INT8, FP8), or a CPU build with INT8 or half-precision (bf16 / fp16) layers."""
    if config.accuracy_target is None:
        return False
    if config.device is Device.CPU:
        asked = {config.precision, *config.layer_precisions.values()}
        return bool(asked & {Precision.INT8, Precision.BF16, Precision.FP16})
    return config.precision in REDUCED or config.precision.is_quantized


def max_output_error(ours: Mapping[str, Any], ref: Mapping[str, np.ndarray]) -> float:
    """The largest ``max|ours - ref| / max|ref|`` over the outputs (``inf`` on NaN/Inf)."""
    return max((max_relative_error(np.asarray(ours[k], np.float64), v) for k, v in ref.items()),
               default=0.0)


def calibration_inputs(engine: Engine, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``engine`` at its profiles' opt shapes (as ``ember run --random``)."""
    from ember.runtime.example_inputs import (
        engine_input_specs,
        graph_int_ranges,
        random_inputs,
        resolve_shapes,
    )

    specs = engine_input_specs(engine)
    shapes = resolve_shapes(specs, {}, dynamic="opt")
    return random_inputs(specs, shapes, seed, int_ranges=graph_int_ranges(engine.plan.graph))


def _outputs(engine: Engine, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with engine.create_context() as ctx:
        out = ctx.infer(dict(feeds))
    return {k: np.asarray(v.float().cpu() if hasattr(v, "cpu") else v, np.float64) for k, v in out.items()}


def reduced_layers(engine: Engine) -> list[str]:
    """Names of the layers that compute below fp32 (half precision, tf32 or int8), in execution
    order; not the conversions a CPU build planned between precisions (``ember.passes.cpu_half``:
    they follow their readers, and a rebuild names them anew)."""
    from ember.passes.cpu_half import is_conversion

    return [layer.name for layer in engine.plan.layers
            if (layer.precision in REDUCED or layer.precision.is_quantized)
            and not is_conversion(getattr(layer, "rule", ""))]


def by_damage(engine: Engine, reference: Engine, candidates: list[str],
              feeds: Mapping[str, np.ndarray]) -> list[str]:
    """The INT8 ``candidates`` ordered by the error each adds on its own, the most damaging
    first (``ember.builder.int8.layer_errors``); other layers keep their order after them."""
    from ember.builder.int8 import layer_errors

    worst = [e.layer for e in layer_errors(engine, reference, [feeds])]
    rank = {name: i for i, name in enumerate(worst)}
    return sorted(candidates, key=lambda n: (rank.get(n, len(rank)), candidates.index(n)))


def meet_target(engine: Engine, config: BuildConfig, build_fn: Callable[[BuildConfig], Engine],
                feeds: Mapping[str, np.ndarray] | None = None) -> Engine:
    """The engine with the fewest layers back in fp32 that meets ``config.accuracy_target``
    (``engine`` itself when it already does): a prefix of the INT8 layers by damage, or of the half
    layers from the end of the network that owns the error. ``build_fn(config)`` builds the same
    model with ``config``."""
    t0 = time.perf_counter()
    if config.accuracy_target is None:
        raise BuildError("meet_target needs a config with an accuracy_target (see accuracy.applies)")
    target = float(config.accuracy_target)
    feeds = dict(feeds) if feeds is not None else calibration_inputs(engine)
    ref_config = replace(config, precision=Precision.FP32, layer_precisions={}, accuracy_target=None,
                         tactic_tuning=False)
    ref_engine = build_fn(ref_config)
    reference = _outputs(ref_engine, feeds)
    first = max_output_error(_outputs(engine, feeds), reference)
    candidates = reduced_layers(engine)
    int8_layers = any(layer.precision is Precision.INT8 for layer in engine.plan.layers)
    if int8_layers:
        candidates = by_damage(engine, ref_engine, candidates, feeds)
    trials: list[dict[str, Any]] = [{"fp32_layers": 0, "error": first}]
    # (engine, fp32 layers from the search's end, its error)
    best: tuple[Engine, int, float] | None = (engine, 0, first) if first <= target else None
    order = "damage" if int8_layers else "execution"

    def trial(k: int, names: list[str]) -> tuple[Engine, float]:
        table = {**config.layer_precisions, **{name: Precision.FP32 for name in names[:k]}}
        built = build_fn(replace(config, layer_precisions=table, accuracy_target=None))
        err = max_output_error(_outputs(built, feeds), reference)
        trials.append({"fp32_layers": k, "error": err, **({"from": "end"} if names is tail_order else {})})
        log.info("accuracy target %.1e: %d layers in fp32 -> max relative error %.2e", target, k, err)
        return built, err

    tail_order = candidates[::-1]  # the last layers first
    lo, k = 0, 1  # lo: the most layers known to miss the target; k: the next count to try
    if best is None and not int8_layers and len(candidates) >= PROBE_MIN_LAYERS:
        # which end owns the error (the module docstring): an eighth of the half layers from each
        k0 = max(1, len(candidates) // 8)
        head, head_err = trial(k0, candidates)
        tail, tail_err = trial(k0, tail_order)
        if tail_err < head_err:
            candidates, order, head, head_err = tail_order, "reverse", tail, tail_err
        if head_err <= target:
            best = (head, k0, head_err)
        else:
            lo, k = k0, min(2 * k0, len(candidates))
    if best is None and candidates and lo < len(candidates):
        while best is None:
            built, err = trial(k, candidates)
            if err <= target:
                best = (built, k, err)
            elif k == len(candidates):
                break
            else:
                lo, k = k, min(2 * k, len(candidates))
    while best is not None and best[1] - lo > 1:  # the fewest layers that still meet it
        mid = (lo + best[1]) // 2
        built, err = trial(mid, candidates)
        if err <= target:
            best = (built, mid, err)
        else:
            lo = mid
    met = best is not None
    if best is None:
        warnings.warn(f"accuracy target {target:.1e} not reached even with every layer in fp32 "
                      f"(max relative error {trials[-1]['error']:.2e} against an fp32 build); the "
                      f"{config.precision} engine is kept as it is ({first:.2e})", stacklevel=3)
        best = (engine, 0, first)
    chosen, best_k, best_err = best
    info = {"target": target, "met": met, "error": best_err,
            "error_before": first, "fp32_layers": candidates[:best_k], "trials": trials,
            "order": order,
            "calibration_shapes": {k: list(v.shape) for k, v in feeds.items()},
            "seconds": round(time.perf_counter() - t0, 2)}
    chosen.plan.config = replace(chosen.plan.config, accuracy_target=target)
    chosen.plan.build_info["accuracy"] = info
    return chosen


def describe(info: Mapping[str, Any]) -> str:
    """One line on what a build's accuracy target did (``plan.build_info["accuracy"]``)."""
    kept = len(info["fp32_layers"])
    if not info["met"]:
        return (f"accuracy target {info['target']:.1e} not reached (max relative error "
                f"{info['error_before']:.2e} vs an fp32 build); precisions left as the rules give them")
    if not kept:
        return (f"accuracy target {info['target']:.1e} met as built: max relative error "
                f"{info['error']:.2e} vs an fp32 build")
    which = {"damage": "most damaging", "reverse": "last"}.get(info.get("order", ""), "first")
    return (f"accuracy target {info['target']:.1e}: the {which} {kept} layers kept in fp32, max relative "
            f"error {info['error_before']:.2e} -> {info['error']:.2e} vs an fp32 build "
            f"({len(info['trials']) - 1} trial builds, {info['seconds']:.0f} s)")
