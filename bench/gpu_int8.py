"""GPU INT8 benchmark (issue 20): Ember INT8 against Ember fp16 (and fp32 for accuracy) on CUDA, in
one process, with build times.

Per model and batch (fixed shapes, ``zoo.export_onnx``):

- Ember fp32 (the accuracy reference) and Ember fp16: ``BuildConfig(device="cuda", precision=...)``;
- Ember INT8: ``BuildConfig(device="cuda", precision="int8", calibrator=..., calibration_cache=...)``
  with ``calibration_data`` = ``--calib-samples`` samples of ``zoo.sample_inputs`` (their own
  seeds), entropy for the CNNs and minmax for BERT. Its build time is the whole INT8 build (the fp32
  calibration build, the calibration and the INT8 build with tactic timing); a second build with the
  calibration cache and timing cache warm gives the warm time.

Timing: wall-clock milliseconds per ``infer`` on inputs already on the GPU (``EmberRunner``: the
context's captured CUDA graph, synchronized), median of ``--iterations`` after warm-up, the
runtimes taking turns in rounds. Accuracy against the fp32 engine on ``--eval-samples`` other
samples: top-1 agreement and max relative error of the logits (CNNs); mean and min cosine of the
hidden states over real tokens (BERT). The zoo's weights are random (no hub downloads here), so
the agreement is on random weights and inputs.

    python bench/gpu_int8.py                                # -> bench/results/gpu-int8-<date>.json
    python bench/gpu_int8.py --models resnet-50 --batches 256 --out /tmp/r.json
    python bench/gpu_int8.py --models bert-base --batches 128 --quantized int8 fp8
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.runners import EmberRunner, max_rel_error, time_ms  # noqa: E402

DEFAULT_BATCHES = {"resnet-50": (1, 256), "bert-base": (1, 128), "mobilenet-v2": (1, 128)}
CALIBRATOR = {"bert-base": "minmax"}


def _samples(name: str, batch: int, count: int, seed0: int) -> list[dict[str, np.ndarray]]:
    return [zoo.sample_inputs(name, batch, seed=seed0 + i) for i in range(max(1, count))]


def _accuracy(name: str, q: EmberRunner, f: EmberRunner, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    agree = total = 0
    errs, cos = [], []
    for feed in feeds:
        a = {k: np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v, dtype=np.float32)
             for k, v in q(feed).items()}
        b = {k: np.asarray(v.detach().cpu().float() if hasattr(v, "detach") else v, dtype=np.float32)
             for k, v in f(feed).items()}
        out = next(iter(b))
        errs.append(max_rel_error(a[out], b[out]))
        if name.startswith("bert"):
            mask = feed.get("attention_mask")
            x, y = a[out].reshape(-1, a[out].shape[-1]), b[out].reshape(-1, b[out].shape[-1])
            keep = np.ones(len(x), bool) if mask is None else np.asarray(mask).reshape(-1).astype(bool)
            c = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-30)
            cos += list(c[keep])
        else:
            agree += int((a[out].argmax(-1) == b[out].argmax(-1)).sum())
            total += a[out].shape[0]
    res: dict[str, Any] = {"max_rel_error": round(max(errs), 5)}
    if cos:
        res.update(mean_cosine=round(float(np.mean(cos)), 5), min_cosine=round(float(np.min(cos)), 5))
    else:
        res.update(top1_agreement=round(agree / max(total, 1), 4), samples=total)
    return res


def bench_row(name: str, batch: int, iterations: int, calib_samples: int, eval_samples: int,
              quantized: tuple[str, ...] = ("int8",)) -> dict[str, Any]:
    path = zoo.export_onnx(name, batch=batch)
    calib = _samples(name, batch, max(1, calib_samples // batch) if batch > 1 else calib_samples, 1000)
    evals = _samples(name, batch, max(1, eval_samples // batch) if batch > 1 else eval_samples, 2000)
    row: dict[str, Any] = {"model": name, "batch": batch}
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "fp16"):
            t0 = time.perf_counter()
            engines[prec] = ember.build(path, ember.BuildConfig(device="cuda", precision=prec), progress=False)
            row[f"build_{prec}_s"] = round(time.perf_counter() - t0, 1)
        for q in quantized:
            cfg = ember.BuildConfig(device="cuda", precision=q, calibrator=CALIBRATOR.get(name, "entropy"),
                                    calibration_cache=str(Path(tmp) / f"model-{q}.calib"),
                                    timing_cache=str(Path(tmp) / f"timing-{q}.json"))
            t0 = time.perf_counter()
            engines[q] = ember.build(path, cfg, calibration_data=calib, progress=False)
            row[f"build_{q}_cold_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            ember.build(path, cfg, progress=False)  # calibration cache and timing cache warm
            row[f"build_{q}_warm_s"] = round(time.perf_counter() - t0, 1)
            layers = engines[q].plan.layers
            row[f"{q}_layers"] = sum(1 for lay in layers if str(lay.precision) == q)
            if q == "fp8":
                row["fp8_gemm_layers"] = sum(1 for lay in layers if lay.tactic == "cublaslt_fp8")
            row["layers"] = len(layers)
    runners = {k: EmberRunner(e) for k, e in engines.items()}
    feed = zoo.sample_inputs(name, batch, seed=0)
    times: dict[str, list[float]] = {k: [] for k in runners}
    rounds = 4
    for _ in range(rounds):
        for k, r in runners.items():
            times[k] += time_ms(r, feed, warmup=5, iterations=max(3, iterations // rounds))
    for k, ts in times.items():
        row[f"{k}_ms"] = round(statistics.median(ts), 4)
        row[f"{k}_items_per_s"] = round(batch * 1000.0 / statistics.median(ts), 1)
    for q in quantized:
        row[f"{q}_vs_fp16"] = round(row["fp16_ms"] / row[f"{q}_ms"], 3)
        row[f"accuracy_{q}_vs_fp32"] = _accuracy(name, runners[q], runners["fp32"], evals)
    row["accuracy_fp16_vs_fp32"] = _accuracy(name, runners["fp16"], runners["fp32"], evals)
    for r in runners.values():
        r.close()
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_BATCHES))
    p.add_argument("--batches", nargs="+", type=int)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--quantized", nargs="+", choices=("int8", "fp8"), default=["int8"],
                   help="the quantized precisions measured beside fp16 (fp8: GPUs with FP8 tensor cores)")
    p.add_argument("--out")
    args = p.parse_args()
    import torch

    rows = []
    for name in args.models:
        for batch in args.batches or DEFAULT_BATCHES.get(name, (1,)):
            try:
                rows.append(bench_row(name, batch, args.iterations, args.calib_samples, args.eval_samples,
                                      tuple(args.quantized)))
            except Exception as e:  # noqa: BLE001 - a failed row is recorded and the table goes on
                rows.append({"model": name, "batch": batch, "error": f"{type(e).__name__}: {e}"[:2000]})
                print(json.dumps(rows[-1]), flush=True)
    result = {"suite": "gpu-int8", "date": dt.date.today().isoformat(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
              "torch": torch.__version__, "rows": rows}
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"gpu-int8-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'model':<12} {'batch':>5} {'prec':>5} {'fp16 ms':>9} {'q ms':>9} {'x fp16':>7} {'items/s':>9}  accuracy")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<12} {r['batch']:>5}  ERROR {r['error'][:100]}")
            continue
        for q in args.quantized:
            print(f"{r['model']:<12} {r['batch']:>5} {q:>5} {r['fp16_ms']:>9.3f} {r[f'{q}_ms']:>9.3f} "
                  f"{r[f'{q}_vs_fp16']:>7.2f} {r[f'{q}_items_per_s']:>9.0f}  {r[f'accuracy_{q}_vs_fp32']}  "
                  f"build {r[f'build_{q}_cold_s']}/{r[f'build_{q}_warm_s']} s")


if __name__ == "__main__":
    main()
