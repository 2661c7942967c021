"""INT8 CPU benchmark (issue 14): Ember INT8 vs Ember fp32 vs ONNX Runtime fp32 and INT8, one run.

Issue 14's targets, on the 2-core CPU in the same run: Ember INT8 >= 2x Ember fp32 on ResNet-50,
MobileNetV2 and BERT-base at batch 1 and 8, >= 1.0x ONNX Runtime INT8 on every row, with accuracy
at least ONNX Runtime's on the same calibration data.

Per model and batch (fixed shapes, ``zoo.export_onnx``), four runtimes:

- Ember fp32: ``ember.build(path, BuildConfig(device="cpu"))``;
- Ember INT8: ``ember.build(path, BuildConfig(device="cpu", precision="int8", calibrator=...),
  calibration_data=[feeds, ...])``; calibrator ``mse`` for the CNNs, ``minmax`` for BERT
  (``DEFAULT_CALIBRATOR``; ``--calibrator`` overrides). A build that fails records ``{"error": ...}``
  in its row and the run goes on;
- ONNX Runtime fp32: the exported model;
- ONNX Runtime INT8: ``quant_pre_process`` (shape inference + ORT's basic graph optimizations, so
  BatchNorm is folded into the convolutions before Q/DQ pairs are placed), then for the CNNs
  ``quantize_static`` (QDQ, per-channel int8 weights, MinMax calibration; activations QUInt8, ORT's
  advice for x86 CPUs, ``--ort-activation`` overrides) and for BERT ``quantize_dynamic`` (int8
  weights). Quantized models are cached under ``.cache/bench-int8`` (git-ignored), keyed by the
  source model, the settings and a hash of the calibration arrays; the quantization time of the
  run that made the file is kept next to it.

Data: ``--calib-samples`` samples (default 8) drawn once per model with ``zoo.sample_inputs`` and
its own seed, cut into batches of the row's batch size; both runtimes calibrate on exactly these
arrays. ``--eval-samples`` samples (default 32) from another seed measure accuracy; the timed feed
is ``zoo.sample_inputs(name, batch)`` (seed 0) as in ``bench/cpu.py``. Accuracy is each INT8
runtime against its own fp32: top-1 agreement and max relative error of the logits for the CNNs;
mean (and min) cosine of the hidden states over real tokens (attention mask 1) and max relative
error for BERT.

Timing as ``bench/cpu.py``: the same thread count everywhere (``torch.set_num_threads``, ORT
``intra_op_num_threads``), median of ``--iterations`` runs after warm-up, split into up to four
rounds in which the runtimes take turns.

    python bench/int8.py                                   # -> bench/results/int8-<date>.json + markdown
    python bench/int8.py --models resnet-50 --batches 1 --iterations 10
    python bench/int8.py --quick --models mobilenet-v2     # 3 iterations, batch 1, 8 eval samples
    python bench/int8.py --accuracy-only                   # no timing: see bench/int8_accuracy.py
    python bench/int8.py --accuracy-only --models mobilenet-v2 --calib-samples 8,64 --calibrators entropy,mse

``--accuracy-only`` (``bench/int8_accuracy.py``) measures nothing but accuracy, on 512 samples by
default, for every calibrator of ``--calibrators`` against ORT on the same calibration arrays (a
list of ``--calib-samples`` gives one row each): top-1 agreement with its 95% interval, mean and
max relative logit error, mean KL divergence and cosine of the logits, and the paired mismatches
against ORT with McNemar's p-value; MobileNetV2, ResNet-50, GoogLeNet and MobileNetV3-small by
default.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import int8_accuracy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, Runner, max_rel_error, time_ms  # noqa: E402

import common  # noqa: E402  (puts the repository on sys.path)

MODELS = ("resnet-50", "mobilenet-v2", "bert-base")
ACCURACY_MODELS = ("mobilenet-v2", "resnet-50", "googlenet", "mobilenet-v3-small")  # --accuracy-only's default
# Ember's calibrator per model kind (``--calibrator`` overrides). CNNs: MSE, the lowest mean KL
# divergence to fp32 in 8 of 12 rows (MobileNetV2, ResNet-50, GoogLeNet, MobileNetV3-small x 8, 32,
# 128 calibration samples; entropy 3, min-max 1), at least ONNX Runtime's accuracy on every
# one (bench/results/cpu-int8-accuracy-2026-12-06.json); it weighs how far a clipped value lies,
# which entropy's KL divergence does not. Transformers: min-max, as before; every GEMM input is
# calibrated by min-max and smoothed whatever the calibrator
# (``ember.builder.calibration.unclipped_tensors``), so the choice barely matters there.
DEFAULT_CALIBRATOR = {"cnn": "mse", "transformer": "minmax"}
RUNTIMES = ("ember_fp32", "ember_int8", "ort_fp32", "ort_int8")
CALIBRATORS = ("entropy", "minmax", "percentile", "mse")
CALIB_SEED, EVAL_SEED = 1001, 2002  # the timed feed is seed 0, as in bench/cpu.py
CACHE = common.ROOT / ".cache" / "bench-int8"  # /.cache/ is in .gitignore
# What ONNX Runtime's quantize_static docstring advises for x86-64 CPUs, VNNI or not: uint8
# activations, int8 weights (the u8 x s8 dot products of VPMADDUBSW / VPDPBUSD); reduce_range
# (7-bit weights) only on CPUs without VNNI, where VPMADDUBSW's int16 sums can saturate.
ORT_ACTIVATION = "QUInt8"


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Ember INT8 vs Ember fp32 vs ONNX Runtime fp32/INT8 on the CPU")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated zoo models ({', '.join(zoo.names())})")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,8; --accuracy-only: 8, the first used)")
    p.add_argument("--iterations", type=int, default=20, help="timed runs per runtime")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a runtime's timing after this long")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="idle milliseconds before each runtime's block, as bench/cpu.py's (ONNX Runtime's workers "
                        "spin for tens of ms after its block, on the cores the next runtime needs)")
    p.add_argument("--calib-samples", help="calibration samples, rounded up to whole batches (default 8; "
                   "--accuracy-only: a comma-separated list, one row each, default 32)")
    p.add_argument("--eval-samples", type=int, help="accuracy samples, rounded up to whole batches "
                   "(default 32; --accuracy-only: 512)")
    p.add_argument("--calibrator", choices=CALIBRATORS,
                   help="Ember's calibrator for every model (default: mse for CNNs, minmax for BERT)")
    p.add_argument("--accuracy-only", action="store_true",
                   help="no timing: INT8 accuracy of the CNNs on many samples, every calibrator of --calibrators "
                        "against ONNX Runtime (bench/int8_accuracy.py) -> bench/results/cpu-int8-accuracy-<date>.json")
    p.add_argument("--calibrators", default=",".join(CALIBRATORS),
                   help="--accuracy-only: Ember's calibrators to measure, comma-separated (default all)")
    p.add_argument("--ort-activation", choices=("QUInt8", "QInt8"), default=ORT_ACTIVATION,
                   help="activation type of ORT's quantize_static (default QUInt8, ORT's advice for x86)")
    p.add_argument("--cache-dir", default=str(CACHE), help="where ORT's quantized models are kept")
    p.add_argument("--no-cache", action="store_true", help="quantize with ORT again even if a cached model exists")
    p.add_argument("--quick", action="store_true", help="3 iterations, 1 warm-up, batch 1, 8 eval samples")
    p.add_argument("--out", help="result file (default bench/results/int8-<date>.json)")
    args = p.parse_args(argv)
    accuracy_only = args.accuracy_only
    if args.accuracy_only and args.models == ",".join(MODELS):
        args.models = ",".join(ACCURACY_MODELS)
    args.batches = args.batches or (str(int8_accuracy.BATCH) if accuracy_only else "1,8")
    if args.eval_samples is None:
        args.eval_samples = int8_accuracy.EVAL_SAMPLES if accuracy_only else 32
    default_calib = ",".join(map(str, int8_accuracy.CALIB_SAMPLES)) if accuracy_only else "8"
    try:
        args.calib_samples = [int(c) for c in (args.calib_samples or default_calib).split(",") if c.strip()]
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error("--calib-samples and --batches take whole numbers, comma-separated")
    if args.quick:
        args.iterations, args.warmup, args.batches, args.eval_samples = 3, 1, [1], min(args.eval_samples, 8)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.calibrators = [c.strip() for c in args.calibrators.split(",") if c.strip()]
    unknown = [c for c in args.calibrators if c not in CALIBRATORS]
    if unknown or not args.calibrators:
        p.error(f"--calibrators: unknown {unknown}; choose from {', '.join(CALIBRATORS)}")
    counts = [*args.calib_samples, *args.batches, args.eval_samples]
    if not args.calib_samples or not args.batches or min(counts) < 1:
        p.error("--calib-samples, --eval-samples and --batches must be at least 1")
    if not accuracy_only:
        if len(args.calib_samples) > 1:
            p.error("several --calib-samples are for --accuracy-only")
        args.calib_samples = args.calib_samples[0]
    return args


# ---- data ------------------------------------------------------------------------------------

def is_transformer(name: str) -> bool:
    """Token-id inputs: dynamic quantization in ORT, cosine of hidden states as accuracy."""
    return any(i.kind == "token_ids" for i in zoo.get(name).inputs)


def batches_of(name: str, samples: int, batch: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``samples`` (rounded up to whole batches) inputs drawn in one ``sample_inputs`` call with
    ``seed``, cut into feeds of ``batch``: every batch size sees the same leading samples (and BERT
    its mix of full and padded sequences)."""
    total = math.ceil(samples / batch) * batch
    drawn = zoo.sample_inputs(name, total, seed=seed)
    return [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in drawn.items()} for i in range(0, total, batch)]


def data_hash(feeds: Sequence[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha1()
    for feed in feeds:
        for k in sorted(feed):
            h.update(k.encode())
            h.update(str(feed[k].dtype).encode() + str(feed[k].shape).encode())
            h.update(np.ascontiguousarray(feed[k]).tobytes())
    return h.hexdigest()[:12]


# ---- ONNX Runtime INT8 -----------------------------------------------------------------------

def ort_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """What ORT's quantizer is asked for on this model (recorded in the result)."""
    if is_transformer(name):
        return {"method": "quantize_dynamic", "weight_type": "QInt8", "per_channel": False, "reduce_range": False,
                "preprocess": "quant_pre_process"}
    return {"method": "quantize_static", "format": "QDQ", "per_channel": True, "activation_type": args.ort_activation,
            "weight_type": "QInt8", "reduce_range": False, "calibrate_method": "MinMax",
            "preprocess": "quant_pre_process"}


def ort_quantize(name: str, path: Path, calib: Sequence[dict[str, np.ndarray]],
                 args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """ORT's INT8 model of ``path`` (cached) and how it was made: settings, seconds, cached or not."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = ort_settings(name, args)
    static = settings["method"] == "quantize_static"
    key = hashlib.sha1(json.dumps([path.name, settings, onnxruntime.__version__,
                                   data_hash(calib) if static else ""]).encode()).hexdigest()[:12]
    cache = Path(args.cache_dir)
    out, meta_path = cache / f"{path.stem}-int8-{key}.onnx", cache / f"{path.stem}-int8-{key}.json"
    if out.exists() and meta_path.exists() and not args.no_cache:
        return out, {**json.loads(meta_path.read_text()), "cached": True}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self._feeds, None)

        def rewind(self) -> None:
            self._feeds = iter(calib)

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="int8-pre-", dir=cache) as tmp:
        pre = Path(tmp) / "pre.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(path), str(pre))
        t1 = time.perf_counter()
        partial = Path(tmp) / "int8.onnx"
        if static:
            quantize_static(str(pre), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=False, activation_type=getattr(QuantType, args.ort_activation),
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        else:
            quantize_dynamic(str(pre), str(partial), weight_type=QuantType.QInt8)
        t2 = time.perf_counter()
        partial.replace(out)
    meta = {**settings, "preprocess_s": round(t1 - t0, 2), "quantize_s": round(t2 - t1, 2),
            "calibration_batches": len(calib) if static else 0, "file": out.name}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out, {**meta, "cached": False}


# ---- Ember -----------------------------------------------------------------------------------

def ember_int8(path: Path, calib: Sequence[dict[str, np.ndarray]], calibrator: str) -> tuple[Any, float]:
    """Ember's INT8 CPU engine calibrated on ``calib``, and its build time (calibration included)."""
    t0 = time.perf_counter()
    config = ember.BuildConfig(device=ember.Device.CPU, precision=ember.Precision.INT8, calibrator=calibrator)
    engine = ember.build(str(path), config, calibration_data=list(calib), progress=False)
    return engine, time.perf_counter() - t0


def int8_layers(engine: Any) -> Optional[int]:
    """How many of the engine's layers compute in INT8 (None where the plan does not say)."""
    try:
        return sum(1 for layer in engine.plan.layers if str(layer.precision) == "int8")
    except AttributeError:
        return None


# ---- accuracy --------------------------------------------------------------------------------

def outputs_over(runner: Runner, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The runner's outputs over every feed, concatenated along the batch."""
    runs = [runner(feed) for feed in feeds]
    return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}


def accuracy(int8: dict[str, np.ndarray], fp32: dict[str, np.ndarray], feeds: Sequence[dict[str, np.ndarray]],
             transformer: bool) -> dict[str, Any]:
    """INT8 outputs against the same runtime's fp32 outputs on the evaluation samples."""
    err = max(max_rel_error(int8[k], fp32[k]) for k in fp32)
    first = next(iter(fp32))
    a, b = int8[first].astype(np.float64), fp32[first].astype(np.float64)
    if not transformer:
        agree = float(np.mean(a.reshape(len(a), -1).argmax(-1) == b.reshape(len(b), -1).argmax(-1)))
        return {"top1_agreement": agree, "max_rel_error": err, "samples": len(b)}
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    mask = np.concatenate([f["attention_mask"] for f in feeds]).astype(bool) if "attention_mask" in feeds[0] else None
    real = cos[mask] if mask is not None and mask.shape == cos.shape else cos.reshape(-1)
    return {"mean_cosine": float(real.mean()), "min_cosine": float(real.min()), "max_rel_error": err,
            "samples": len(b), "tokens": int(real.size)}


# ---- one row ---------------------------------------------------------------------------------

def _attempt(fn: Callable[[], Any]) -> tuple[Any, Optional[str]]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - a runtime that fails is a row's finding, not the run's end
        return None, f"{type(exc).__name__}: {exc}".strip()[:600]


def bench_one(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """One table row: the four runtimes' latency on one model and batch, and INT8 accuracy."""
    transformer = is_transformer(name)
    calibrator = args.calibrator or DEFAULT_CALIBRATOR["transformer" if transformer else "cnn"]
    path = zoo.export_onnx(name, batch=batch)
    feeds = zoo.sample_inputs(name, batch)
    calib = batches_of(name, args.calib_samples, batch, CALIB_SEED)
    evals = batches_of(name, args.eval_samples, batch, EVAL_SEED)
    row: dict[str, Any] = {"model": name, "batch": batch, "calibration_samples": len(calib) * batch,
                           "calibration_hash": data_hash(calib), "eval_samples": len(evals) * batch}

    def ember_fp32() -> tuple[Any, float]:
        t0 = time.perf_counter()
        engine = ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False)
        return engine, time.perf_counter() - t0

    # Every runtime but ORT fp32 (the reference) may fail; its row then says why and the run goes on.
    runners: dict[str, Runner] = {}
    for label, make in (("ember_fp32", ember_fp32), ("ember_int8", lambda: ember_int8(path, calib, calibrator))):
        built, error = _attempt(make)
        row[label] = {"calibrator": calibrator} if label == "ember_int8" else {}
        if error is None:
            row[label].update(build_s=round(built[1], 2), layers=len(built[0].plan.layers),
                              int8_layers=int8_layers(built[0]))
            runner, error = _attempt(functools.partial(EmberRunner, built[0]))
        if error is None:
            runners[label] = runner
        else:
            row[label]["error"] = error
    runners["ort_fp32"] = OrtRunner(path, threads=args.threads)
    quantized, error = _attempt(lambda: ort_quantize(name, path, calib, args))
    row["ort_int8"] = {**ort_settings(name, args), "error": error} if error else quantized[1]
    if error is None:
        runner, error = _attempt(lambda: OrtRunner(quantized[0], threads=args.threads))
        if error is None:
            runners["ort_int8"] = runner
        else:
            row["ort_int8"]["error"] = error
    try:
        outs: dict[str, dict[str, np.ndarray]] = {}
        for label in list(runners):
            out, error = _attempt(functools.partial(outputs_over, runners[label], evals))
            if error and label == "ort_fp32":
                raise RuntimeError(f"ONNX Runtime fp32 failed on {name} b{batch}: {error}")
            if error:
                row[label]["error"] = f"inference: {error}"
                runners.pop(label).close()
            else:
                outs[label] = out
        if "ember_fp32" in outs:
            row["ember_fp32"]["max_rel_error_vs_ort_fp32"] = max(
                max_rel_error(outs["ember_fp32"][k], outs["ort_fp32"][k]) for k in outs["ort_fp32"])
        row["accuracy"] = {f"{rt}_int8": accuracy(outs[f"{rt}_int8"], outs[f"{rt}_fp32"], evals, transformer)
                           for rt in ("ember", "ort") if f"{rt}_int8" in outs and f"{rt}_fp32" in outs}
        timed = _timed_rounds(runners, feeds, args)
        row["latency_ms"] = {label: common.summarize(times) for label, times in timed.items()}
    finally:
        for runner in runners.values():
            runner.close()
    row["speedup"] = speedups(row["latency_ms"])
    row["targets"] = targets(row, transformer)
    _print_row(row)
    return row


def _timed_rounds(runners: dict[str, Runner], feeds: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """As ``bench/cpu.py``: each runtime's iterations split in up to four rounds that take turns,
    so a change of background load weighs on every runtime alike; each block has its own warm-up."""
    rounds = max(1, min(4, args.iterations // 3))
    times: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(rounds):
        count = args.iterations // rounds + (1 if r < args.iterations % rounds else 0)
        for label, runner in runners.items():
            warmup = args.warmup if r == 0 else 1
            if args.gap_ms > 0:
                time.sleep(args.gap_ms / 1e3)
            times[label] += time_ms(runner, feeds, warmup, count, args.max_seconds / rounds)
    return times


def speedups(latency: dict[str, dict[str, float]]) -> dict[str, Optional[float]]:
    """Ratios of medians (> 1: the first named is faster); None where a runtime is missing."""
    med = {k: v["median"] for k, v in latency.items()}

    def ratio(fast: str, slow: str) -> Optional[float]:
        return round(med[slow] / med[fast], 3) if fast in med and slow in med else None

    return {"ember_int8_vs_ember_fp32": ratio("ember_int8", "ember_fp32"),
            "ember_int8_vs_ort_int8": ratio("ember_int8", "ort_int8"),
            "ort_int8_vs_ort_fp32": ratio("ort_int8", "ort_fp32")}


def targets(row: dict[str, Any], transformer: bool) -> dict[str, Optional[bool]]:
    """Issue 14's three conditions on this row (None where a runtime is missing)."""
    s, acc = row["speedup"], row.get("accuracy", {})
    metric = "mean_cosine" if transformer else "top1_agreement"
    ours, theirs = acc.get("ember_int8", {}).get(metric), acc.get("ort_int8", {}).get(metric)
    return {"int8_2x_fp32": None if s["ember_int8_vs_ember_fp32"] is None else s["ember_int8_vs_ember_fp32"] >= 2.0,
            "int8_ge_ort_int8": None if s["ember_int8_vs_ort_int8"] is None else s["ember_int8_vs_ort_int8"] >= 1.0,
            "accuracy_ge_ort": None if ours is None or theirs is None else ours >= theirs}


# ---- output ----------------------------------------------------------------------------------

def _ms(row: dict[str, Any], label: str) -> str:
    lat = row["latency_ms"].get(label)
    return f"{lat['median']:.2f}" if lat else "error"


def _x(value: Optional[float]) -> str:
    return f"{value:.2f}x" if value is not None else "—"


def _acc(row: dict[str, Any], label: str) -> tuple[str, str]:
    acc = row.get("accuracy", {}).get(label)
    if acc is None:
        return "error", "error"
    if "top1_agreement" in acc:
        return f"{100 * acc['top1_agreement']:.1f}%", f"{acc['max_rel_error']:.1e}"
    return f"{acc['mean_cosine']:.4f}", f"{acc['max_rel_error']:.1e}"


def _print_row(row: dict[str, Any]) -> None:
    s = row["speedup"]
    (ea, ee), (oa, oe) = _acc(row, "ember_int8"), _acc(row, "ort_int8")
    print(f"{row['model']:>13} b{row['batch']:<3} Ember fp32 {_ms(row, 'ember_fp32'):>8}  "
          f"INT8 {_ms(row, 'ember_int8'):>8}  ORT fp32 {_ms(row, 'ort_fp32'):>8}  INT8 {_ms(row, 'ort_int8'):>8} ms  "
          f"INT8 {_x(s['ember_int8_vs_ember_fp32'])} Ember fp32, {_x(s['ember_int8_vs_ort_int8'])} ORT INT8  "
          f"acc Ember {ea} ({ee}) ORT {oa} ({oe})", flush=True)
    for label in ("ember_fp32", "ember_int8", "ort_int8"):
        if "error" in row[label]:
            print(f"{'':>18}{label}: {row[label]['error']}", flush=True)


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: header line with the machine, then one row per model and batch."""
    m, v = result["machine"], result["machine"]["versions"]
    head = (f"{m['date']} · {m['cpu']} · {m['cores']} cores, {m['threads']} threads per runtime · "
            f"Ember {v['ember']}, ONNX Runtime {v['onnxruntime']}, torch {v['torch']} · median of "
            f"{result['iterations']} runs after {result['warmup']} warm-up, runtimes taking turns · "
            f"calibration {result['calib_samples']} samples (seed {CALIB_SEED}), accuracy on "
            f"{result['eval_samples']} others (seed {EVAL_SEED}), each INT8 runtime against its own fp32 · "
            f"ORT INT8: CNNs quantize_static QDQ per-channel MinMax, activations {result['ort_activation']} / "
            f"weights QInt8; BERT quantize_dynamic QInt8 · agreement: CNN top-1 agreement, BERT mean "
            f"cosine of hidden states over real tokens · × = slower median / Ember INT8 median\n")
    rows = []
    for r in result["rows"]:
        s = r["speedup"]
        (ea, ee), (oa, oe) = _acc(r, "ember_int8"), _acc(r, "ort_int8")
        rows.append([r["model"], r["batch"], _ms(r, "ember_fp32"), _ms(r, "ember_int8"), _ms(r, "ort_fp32"),
                     _ms(r, "ort_int8"), _x(s["ember_int8_vs_ember_fp32"]), _x(s["ember_int8_vs_ort_int8"]),
                     ea, oa, ee, oe, r["ember_int8"].get("calibrator", "")])
    cols = ["model", "batch", "Ember fp32 ms", "Ember INT8 ms", "ORT fp32 ms", "ORT INT8 ms", "INT8 × Ember fp32",
            "INT8 × ORT INT8", "Ember INT8 agreement", "ORT INT8 agreement", "Ember INT8 max rel err",
            "ORT INT8 max rel err", "Ember calibrator"]
    return head + "\n" + common.markdown_table(cols, rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m not in zoo.names()]
    if unknown:
        print(f"unknown models {unknown}; choose from {', '.join(zoo.names())}", file=sys.stderr)
        return 2
    if args.accuracy_only:
        int8_accuracy.main(sys.modules[__name__], args)
        return 0
    rows = [bench_one(name, batch, args) for name in args.models for batch in args.batches]
    result = {"suite": "int8", "machine": common.machine_info(args.threads), "iterations": args.iterations,
              "warmup": args.warmup, "gap_ms": args.gap_ms, "calib_samples": args.calib_samples,
              "eval_samples": args.eval_samples,
              "seeds": {"timing": 0, "calibration": CALIB_SEED, "evaluation": EVAL_SEED},
              "ort_activation": args.ort_activation,
              "ort_activation_why": ("quantize_static's docstring (ORT 1.32) advises QUInt8 activations with QInt8 "
                                     "weights on x86-64 CPUs, with or without VNNI (u8 x s8 dot products); "
                                     "reduce_range only without VNNI. Its default (QInt8) suits ARM and GPUs."),
              "rows": rows}
    path = common.write_result("int8", result, args.out)
    print(f"\nwrote {path}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
