"""CPU benchmark: Ember vs ONNX Runtime vs PyTorch eager on the zoo models, all in one run.

Each model is exported once per batch size (fixed shapes), built into an Ember CPU engine, and
run by the three runtimes with the same number of threads (default 2: ``torch.set_num_threads``,
ORT ``intra_op_num_threads``). Latency is the median of ``--iterations`` timed runs after
warm-up; the runs are split into up to four rounds in which the runtimes take turns, so that
background load falls on all three alike. Ember's max relative error against ONNX Runtime is
checked on every row. Where Ember is slower than ONNX Runtime, the per-op times of both
(Ember's layer profiler, ORT's own profiler) say where the time goes.

    python bench/cpu.py                                    # -> bench/results/cpu-<date>.json + markdown
    python bench/cpu.py --models resnet-50,googlenet --batches 1 --iterations 20
    python bench/cpu.py --quick                            # 3 iterations, batch 1 (smoke run)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, TorchRunner, max_rel_error, time_ms  # noqa: E402

import common  # noqa: E402  (puts the repository on sys.path)

MODELS = ("resnet-50", "googlenet", "mobilenet-v2", "bert-base")
RUNTIMES = ("ember", "onnxruntime", "torch")


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Ember vs ONNX Runtime vs PyTorch eager on the CPU")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated zoo models ({', '.join(zoo.names())})")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--iterations", type=int, default=20, help="timed runs per runtime")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a runtime's timing after this long")
    p.add_argument("--quick", action="store_true", help="3 iterations, 1 warm-up, batch 1")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op breakdown where Ember is slower")
    p.add_argument("--out", help="result file (default bench/results/cpu-<date>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.batches = 3, 1, "1"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def bench_one(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """One table row: every runtime's latency on one model and batch, and Ember's error."""
    path = zoo.export_onnx(name, batch=batch)
    feeds = zoo.sample_inputs(name, batch)
    t0 = time.perf_counter()
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    build_s = time.perf_counter() - t0
    spec = zoo.get(name)
    with EmberRunner(engine) as ember_runner:
        runners = {"ember": ember_runner, "onnxruntime": OrtRunner(path, threads=args.threads),
                   "torch": TorchRunner(zoo.build_model(name), [i.name for i in spec.inputs], spec.outputs)}
        ours, ref = ember_runner(feeds), runners["onnxruntime"](feeds)
        error = max(max_rel_error(ours[k], ref[k]) for k in ref)
        latency = {label: common.summarize(times) for label, times in _timed_rounds(runners, feeds, args).items()}
        row = {"model": name, "batch": batch, "build_s": round(build_s, 2), "layers": len(engine.plan.layers),
               "onnx_nodes": engine.plan.build_info.get("source_nodes"), "max_rel_error_vs_ort": error,
               "latency_ms": latency}
        if not args.no_profile and latency["ember"]["median"] > latency["onnxruntime"]["median"]:
            row["breakdown"] = breakdown(engine, path, feeds, args.threads)
    _print_row(row)
    return row


def _timed_rounds(runners: dict[str, Any], feeds: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Each runtime's iterations, split in rounds that take turns, so a change of background load
    during the run weighs on every runtime alike; each block starts with its own warm-up run."""
    rounds = max(1, min(4, args.iterations // 3))
    times: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(rounds):
        count = args.iterations // rounds + (1 if r < args.iterations % rounds else 0)
        for label, runner in runners.items():
            warmup = args.warmup if r == 0 else 1
            times[label] += time_ms(runner, feeds, warmup, count, args.max_seconds / rounds)
    return times


def breakdown(engine: Any, path: Path, feeds: dict, threads: int) -> dict[str, Any]:
    """Per-op-kind ms of Ember and ORT, and Ember's most expensive layers."""
    by_kind, top = common.ember_layer_profile(engine, feeds)
    return {"ember_ms_by_kind": _rounded(by_kind), "ort_ms_by_op": _rounded(common.ort_op_times(path, feeds, threads)),
            "ember_top_layers": top}


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}


def _print_row(row: dict[str, Any]) -> None:
    lat = {k: v["median"] for k, v in row["latency_ms"].items()}
    print(f"{row['model']:>13} b{row['batch']:<3} Ember {lat['ember']:8.2f} ms  ORT {lat['onnxruntime']:8.2f} ms  "
          f"torch {lat['torch']:8.2f} ms  err {row['max_rel_error_vs_ort']:.1e}  "
          f"({row['onnx_nodes']} nodes -> {row['layers']} layers, built in {row['build_s']} s)", flush=True)


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: header line with the machine, then one row per model and batch."""
    m = result["machine"]
    v = m["versions"]
    head = (f"{m['date']} · {m['cpu']} · {m['cores']} cores, {m['threads']} threads per runtime · "
            f"fp32 · Ember {v['ember']}, torch {v['torch']}, ONNX Runtime {v['onnxruntime']} · "
            f"median of {result['iterations']} runs after {result['warmup']} warm-up; "
            f"× = peer median / Ember median (>1: Ember is faster)\n")
    rows = []
    for r in result["rows"]:
        lat = {k: v["median"] for k, v in r["latency_ms"].items()}
        rows.append([r["model"], r["batch"], f"{lat['ember']:.2f}", f"{lat['onnxruntime']:.2f}", f"{lat['torch']:.2f}",
                     f"{lat['onnxruntime'] / lat['ember']:.2f}x", f"{lat['torch'] / lat['ember']:.2f}x",
                     f"{r['batch'] * 1000 / lat['ember']:.1f}", f"{r['max_rel_error_vs_ort']:.1e}"])
    cols = ["model", "batch", "Ember ms", "ORT ms", "torch eager ms", "Ember × ORT", "Ember × eager",
            "Ember items/s", "max rel err vs ORT"]
    return head + "\n" + common.markdown_table(cols, rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m not in zoo.names()]
    if unknown:
        print(f"unknown models {unknown}; choose from {', '.join(zoo.names())}", file=sys.stderr)
        return 2
    rows = [bench_one(name, batch, args) for name in args.models for batch in args.batches]
    result = {"suite": "cpu", "machine": common.machine_info(args.threads), "iterations": args.iterations,
              "warmup": args.warmup, "rows": rows}
    path = common.write_result("cpu", result, args.out)
    print(f"\nwrote {path}\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
