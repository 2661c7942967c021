"""What the optimizer does to each zoo model: ONNX nodes -> Ember layers, and CPU time before/after.

    .venv/bin/python bench/optimizer.py [--models resnet-50,bert-base] [--iterations 20]

For every model, in one run, with the same inputs and 2 threads, three engines are built:

- ``raw``: the imported graph as is (no pass at all);
- ``no-fuse``: ``BuildConfig(optimize=False)``: cleanup and folding (constants, shapes, BatchNorm);
- ``full``: the whole pipeline (fusion, layout, precision);

and ONNX Runtime (CPU, all graph optimizations) runs next to them as the reference point. Every
engine's output is checked against ONNX Runtime before it is timed. The four are timed in
alternating rounds (so a change in machine load hits all of them alike). Results (medians of wall-clock
ms and of process CPU ms per inference, after warm-up; the machine may be shared, and CPU time is
what other processes disturb least) go to ``bench/results/optimizer-<date>.json``; a Markdown table is
printed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.passes import pipeline  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, max_rel_error  # noqa: E402

MODELS = ("resnet-50", "googlenet", "mobilenet-v2", "mobilenet-v3-small", "bert-base", "minilm")


@contextlib.contextmanager
def no_passes() -> Iterator[None]:
    """Builds skip the pass pipeline entirely (the ``raw`` row)."""
    original = pipeline.pipeline_passes
    pipeline.pipeline_passes = lambda config=None: []
    try:
        yield
    finally:
        pipeline.pipeline_passes = original


def model_and_inputs(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    if name == "minilm":
        from ember.zoo import minilm

        path = minilm.export_onnx()
        feeds = minilm.tokenize(minilm.load_tokenizer(), ["Ember builds engines from ONNX models."] * 1)
        return path, {k: np.asarray(v) for k, v in feeds.items()}
    return zoo.export_onnx(name, batch=1), zoo.sample_inputs(name, batch=1)


def fixed_shapes(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(feeds[i.name].shape) for i in onnx.load(str(path), load_external_data=False).graph.input
            if i.name in feeds}


def check(engine, feeds, ref) -> dict:
    with EmberRunner(engine) as runner:
        out = runner(feeds)
    err = max(max_rel_error(out[k], ref[k]) for k in ref)
    return {"layers": len(engine.plan.layers), "max_rel_error_vs_ort": float(f"{err:.3g}")}


def _timed(runner, prepared, iterations: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(iterations):
        w0, c0 = time.perf_counter(), time.process_time()
        runner.run(prepared)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def interleaved(runners: dict, feeds, iterations: int, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """Median (wall ms, process CPU ms) per runner, timed in alternating rounds so a change in
    machine load hits all alike. CPU time (both threads' work) is what contention disturbs least."""
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in runners}
    prepared = {k: r.prepare(feeds) for k, r in runners.items()}
    for k, r in runners.items():
        _timed(r, prepared[k], 2)
    per_round = max(1, iterations // rounds)
    for _ in range(rounds):
        for name, runner in runners.items():
            wall, cpu = _timed(runner, prepared[name], per_round)
            times[name][0].extend(wall)
            times[name][1].extend(cpu)
    return {k: (round(statistics.median(w), 3), round(statistics.median(c), 3)) for k, (w, c) in times.items()}


def bench_model(name: str, iterations: int) -> dict:
    path, feeds = model_and_inputs(name)
    proto = onnx.load(str(path))
    shapes = fixed_shapes(path, feeds)
    engines = {}
    with no_passes():
        engines["raw"] = ember.build(str(path), ember.BuildConfig(shapes=shapes))
    engines["no-fuse"] = ember.build(str(path), ember.BuildConfig(shapes=shapes, optimize=False))
    engines["full"] = ember.build(str(path), ember.BuildConfig(shapes=shapes))
    row: dict = {"model": name, "onnx_nodes": len(proto.graph.node)}
    with contextlib.ExitStack() as stack:
        ort_runner = stack.enter_context(OrtRunner(path, threads=2))
        ref = ort_runner(feeds)
        for key, engine in engines.items():
            row[key] = check(engine, feeds, ref)
        runners = {key: stack.enter_context(EmberRunner(e)) for key, e in engines.items()}
        runners["onnxruntime"] = ort_runner
        medians = interleaved(runners, feeds, iterations)
    for key in engines:
        row[key]["median_ms"], row[key]["median_cpu_ms"] = medians[key]
    row["onnx_runtime_ms"], row["onnx_runtime_cpu_ms"] = medians["onnxruntime"]
    row["fired"] = _fired(engines["full"].plan.build_info.get("passes") or [])
    row["speedup_full_vs_raw"] = round(row["raw"]["median_ms"] / row["full"]["median_ms"], 2)
    row["cpu_time_ratio_full_vs_raw"] = round(row["raw"]["median_cpu_ms"] / row["full"]["median_cpu_ms"], 2)
    return row


def _fired(stats: list) -> dict[str, int]:
    total: dict[str, int] = {}
    for record in stats:
        for rule, n in record["fired"].items():
            total[rule] = total.get(rule, 0) + n
    return total


def table(rows: list[dict]) -> str:
    lines = ["| model | ONNX nodes | Ember layers (raw / no-fuse / full) | CPU time ms raw / no-fuse / full | "
             "full vs raw | wall ms raw / no-fuse / full | ONNX Runtime wall ms (CPU ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = " / ".join(f"{r[k]['median_cpu_ms']:.1f}" for k in ("raw", "no-fuse", "full"))
        wall = " / ".join(f"{r[k]['median_ms']:.1f}" for k in ("raw", "no-fuse", "full"))
        lines.append(f"| {r['model']} | {r['onnx_nodes']} | {r['raw']['layers']} / {r['no-fuse']['layers']} / "
                     f"{r['full']['layers']} | {cpu} | {r['cpu_time_ratio_full_vs_raw']:.2f}x | {wall} | "
                     f"{r['onnx_runtime_ms']:.1f} ({r['onnx_runtime_cpu_ms']:.1f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", help="result file (default bench/results/optimizer-<date>.json)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    load_before = os.getloadavg()
    for name in filter(None, args.models.split(",")):
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(name, args.iterations))
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"optimizer-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"suite": "optimizer", "date": date, "device": "cpu", "threads": torch.get_num_threads(),
              "batch": 1, "precision": "fp32", "machine": platform.processor() or platform.machine(),
              "versions": {"ember": ember.__version__, "torch": torch.__version__,
                           "onnxruntime": __import__("onnxruntime").__version__},
              "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
              "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
