"""Probe (issue 20): where a cold CUDA build's time goes, by category, from cProfile.

Builds one zoo model at one batch in one precision (INT8 / FP8: calibrated with minmax on one
batch, as ``bench/probes/engine_layers.py``), with every cache cold (a fresh ``EMBER_CACHE``, Triton
cache and timing cache), under cProfile, then a second time warm. Prints the wall times and the
profile's time by category (random inputs, cuDNN plan builds, Triton compiles, waits on the GPU,
reference convolutions, calibration), then the functions with the most time of their own.

    python bench/probes/build_time.py --model resnet-50 --batch 256 --precision int8 --out DIR
"""
from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

# every cache cold: set before ember and Triton read them
_TMP = tempfile.mkdtemp(prefix="ember-build-time-")
os.environ["EMBER_CACHE"] = os.path.join(_TMP, "ember")
os.environ["TRITON_CACHE_DIR"] = os.path.join(_TMP, "triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ember  # noqa: E402
from ember import zoo  # noqa: E402

#: category -> substrings of "file:line(function)" whose cumulative time it takes (the first match
#: wins; cumulative times of nested entries are not added twice: only the outermost match counts)
CATEGORIES = {
    "random inputs (tensors.random_tensor)": ("random_tensor",),
    "cuDNN plan builds": ("_build_plan_at",),
    # tottime lands in Triton's code generator, its LLVM calls and the ptxas subprocess it waits on
    "Triton compiles": ("/triton/", "libtriton", "posix.waitpid"),
    "waits on the GPU (synchronize)": ("Event.synchronize", "cuda/__init__.py:", "synchronize"),
    "reference/fallback convolutions (torch.conv2d)": ("torch.conv2d", "cudnn_convolution"),
    "max_relative_error": ("max_relative_error",),
    "calibration": ("calibrat",),
}


def categorize(stats: pstats.Stats) -> dict[str, float]:
    """Own (tottime) seconds of every function, summed by the category its name matches."""
    out = {k: 0.0 for k in CATEGORIES}
    out["other"] = 0.0
    for (file, line, func), (_, _, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = f"{file}:{line}({func})"
        for cat, keys in CATEGORIES.items():
            if any(k in name for k in keys):
                out[cat] += tt
                break
        else:
            out["other"] += tt
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet-50")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("ember.backends.cuda.tuning").setLevel(logging.INFO)  # what was compiled ahead, and how long
    path = zoo.export_onnx(args.model, batch=args.batch)
    calib = [zoo.sample_inputs(args.model, args.batch, seed=1000)]
    kw: dict = {}
    cfg = dict(device="cuda", precision=args.precision, timing_cache=os.path.join(_TMP, "timing.json"))
    if args.precision in ("int8", "fp8"):
        cfg.update(calibrator="minmax", calibration_cache=os.path.join(_TMP, "model.calib"))
        kw["calibration_data"] = calib
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    engine = ember.build(path, ember.BuildConfig(**cfg), progress=False, **kw)
    prof.disable()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    ember.build(path, ember.BuildConfig(**cfg), progress=False)
    warm = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    cats = categorize(stats)
    row = {"model": args.model, "batch": args.batch, "precision": args.precision, "cold_s": round(cold, 1),
           "warm_s": round(warm, 1), "by_category_s": cats, "layers_timed": engine.plan.build_info.get("layers_timed")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(str(out / f"build-{args.model}-{args.precision}.prof"))
    with open(out / f"build-{args.model}-{args.precision}-top.txt", "w") as f:
        ps = pstats.Stats(prof, stream=f)
        ps.sort_stats("tottime").print_stats(40)
        ps.sort_stats("cumulative").print_stats(60)
    (out / f"build-{args.model}-{args.precision}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
