"""GPU benchmark suite: ResNet-50, GoogLeNet, MobileNetV2 and BERT-base (seq 128) in fp16 at
batch 1 and 128, Ember against PyTorch eager, torch.compile (default, reduce-overhead) and ONNX
Runtime, all measured in the same process; plus ResNet-50's build time with tuning, cold and
with a warm timing cache.

    python bench/gpu.py                                   # everything -> bench/results/gpu-<date>.json
    python bench/gpu.py --models resnet-50 --batches 1 --out /tmp/r.json
    python bench/gpu.py --merge a.json b.json --out bench/results/gpu-2026-11-25.json --markdown

``--merge``: a later file's row for the same model and batch replaces an earlier one.
``--markdown`` prints the BENCHMARKS.md table of a (merged) result file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet-50", "googlenet", "mobilenet-v2", "bert-base")
PEER_ORDER = ("torch", "torch.compile", "torch.compile(reduce-overhead)", "onnxruntime")


def run_suite(models, batches, peers, iterations: int, precision: str,
              accuracy_target: float | None = None) -> dict:
    from ember.tools.bench import BenchOptions, bench, format_report

    runs = []
    for model in models:
        for batch in batches:
            opts = BenchOptions(model, "cuda", precision, batch, iterations=iterations,
                                warmup=10, peers=tuple(peers), peer_budget_s=15.0,
                                accuracy_target=accuracy_target)
            t0 = time.perf_counter()
            report = bench(opts)
            report["wall_s"] = round(time.perf_counter() - t0, 1)
            print(format_report(report), flush=True)
            runs.append(report)
    return {"suite": "gpu", "date": dt.date.today().isoformat(), "runs": runs}


_BUILD_ONCE = """
import json, sys, time
import ember
path, cache, batch, precision = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cfg = ember.BuildConfig(device="cuda", precision=precision, shapes={"input": (batch, 3, 224, 224)},
                        timing_cache=cache, tactic_tuning=True)
t0 = time.perf_counter()
engine = ember.build(path, cfg, progress=False)
info = {k: engine.plan.build_info.get(k) for k in ("layers_timed", "timing_cache_hits", "phases")}
print("BUILD " + json.dumps({"s": round(time.perf_counter() - t0, 2), "info": info}, default=str))
"""


def build_times(model: str = "resnet-50", batch: int = 128, precision: str = "fp16") -> dict:
    """Build seconds with tactic tuning, each build in a fresh process (CUDA start-up, cuDNN's
    algorithm and plan choices paid as a user pays them): timing cache and cuDNN plan file
    (``$EMBER_CACHE/cudnn-plans.json``) empty, then both warm from the first build."""
    import os
    import subprocess

    from ember import zoo

    path = zoo.export_onnx(model, batch=batch, dynamic_batch=True)
    out = {"model": model, "batch": batch, "precision": precision, "fresh_process": True}
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "timing.json")
        env = dict(os.environ, EMBER_CACHE=tmp,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for label in ("cold_cache_s", "warm_cache_s"):
            proc = subprocess.run([sys.executable, "-c", _BUILD_ONCE, str(path), cache, str(batch), precision],
                                  env=env, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BUILD ")), None)
            if proc.returncode != 0 or line is None:
                raise RuntimeError(f"the {label[:-2]} build failed:\n{proc.stderr[-2000:]}")
            result = json.loads(line[len("BUILD "):])
            out[label] = result["s"]
            out[label.replace("_s", "_info")] = result["info"]
    print(f"build {model} b{batch} {precision} (fresh processes): cold {out['cold_cache_s']} s, "
          f"warm {out['warm_cache_s']} s")
    return out


def markdown(result: dict) -> str:
    """The table for BENCHMARKS.md: one row per model and batch, every peer's median."""
    runs = result["runs"]
    first = runs[0]
    v, d = first["versions"], first["device"]
    head = (f"Device: {d.get('name')} · date {result['date']} · torch {v['torch']} · CUDA {v['cuda']} · "
            f"cuDNN {v['cudnn']} · Triton {v['triton']} · ONNX Runtime {v['onnxruntime']} "
            f"({_ort_provider(runs)}) · precision {first['config']['precision']} · median GPU time per "
            f"batch (CUDA events, inputs on the device) → items/s; Ember × = peer median / Ember median.\n")
    cols = ["model", "batch", "Ember ms", "Ember items/s"] + [f"{p} ms" for p in PEER_ORDER] + \
        ["best peer", "Ember × best", "max rel err vs ORT fp32"]
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in runs:
        e = r["ember"]
        row = [r["model"], str(r["config"]["batch"]), f"{e['compute_ms']['median']:.3f}", f"{e['throughput']:.0f}"]
        best_name, best = None, None
        for p in PEER_ORDER:
            peer = r["peers"].get(p)
            if not peer or "error" in peer:
                row.append("—")
                continue
            m = peer["compute_ms"]["median"]
            row.append(f"{m:.3f}")
            if best is None or m < best:
                best_name, best = p, m
        row.append(best_name or "—")
        row.append(f"{best / e['compute_ms']['median']:.2f}×" if best else "—")
        err = r.get("accuracy", {}).get("max_rel_error")
        row.append(f"{err:.1e}" if err is not None else "—")
        lines.append("| " + " | ".join(row) + " |")
    b = result.get("build")
    if b:
        lines.append(f"\nBuild of {b['model']} (batch {b['batch']}, {b['precision']}, tactic tuning on): "
                     f"{b['cold_cache_s']} s with an empty timing cache, {b['warm_cache_s']} s with it warm.")
    return "\n".join(lines)


def _ort_provider(runs) -> str:
    for r in runs:
        p = r["peers"].get("onnxruntime", {})
        if "provider" in p:
            return p["provider"]
    return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--peers", default="torch,torch-compile,onnxruntime")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--accuracy-target", type=float, default=None,
                    help="build every engine with this accuracy target (max relative error vs fp32)")
    ap.add_argument("--build-times", action="store_true", help="also time ResNet-50's build, cold/warm cache")
    ap.add_argument("--out", help="result JSON (default bench/results/gpu-<date>.json)")
    ap.add_argument("--merge", nargs="+", help="merge these result files instead of running")
    ap.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md table")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "bench" / "results" / f"gpu-{dt.date.today().isoformat()}.json")
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        latest: dict[tuple, dict] = {}  # a later file's row for a model and batch replaces an earlier one
        for r in (r for p in parts for r in p["runs"]):
            latest[(r["model"], r["config"]["batch"])] = r
        result = {"suite": "gpu", "date": parts[0]["date"], "runs": list(latest.values())}
        for p in parts:
            if p.get("build"):
                result["build"] = p["build"]
    else:
        result = run_suite([m for m in args.models.split(",") if m], [int(b) for b in args.batches.split(",")],
                           [p for p in args.peers.split(",") if p and p != "none"], args.iterations,
                           args.precision, args.accuracy_target)
        if args.build_times:
            result["build"] = build_times()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1, default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if args.markdown:
        print(markdown(result))


if __name__ == "__main__":
    main()
