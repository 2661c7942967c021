"""What the optimizer does to each zoo model: ONNX nodes -> Ember layers, and CPU time before/after.

    .venv/bin/python bench/optimizer.py [--models resnet-50,bert-base] [--iterations 20]

For every model, in one run, with the same inputs and 2 threads, three engines are built:

- ``raw``: the imported graph as is (no pass at all);
- ``no-fuse``: ``BuildConfig(optimize=False)``: cleanup and folding (constants, shapes, BatchNorm);
- ``full``: the whole pipeline (fusion, layout, precision);

and ONNX Runtime (CPU, all graph optimizations) runs next to them as the reference point. Every
engine's output is checked against ONNX Runtime before it is timed. Results (medians of wall-clock
ms after warm-up) go to ``bench/results/optimizer-<date>.json``; a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
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
from ember.zoo.runners import EmberRunner, OrtRunner, max_rel_error, time_ms  # noqa: E402

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


def measure(engine, feeds, ref, iterations: int) -> dict:
    with EmberRunner(engine) as runner:
        out = runner(feeds)
        err = max(max_rel_error(out[k], ref[k]) for k in ref)
        times = time_ms(runner, feeds, warmup=3, iterations=iterations, max_seconds=30)
    return {"layers": len(engine.plan.layers), "median_ms": round(statistics.median(times), 3),
            "max_rel_error_vs_ort": float(f"{err:.3g}"), "runs": len(times)}


def bench_model(name: str, iterations: int) -> dict:
    path, feeds = model_and_inputs(name)
    proto = onnx.load(str(path))
    with OrtRunner(path, threads=2) as ort_runner:
        ref = ort_runner(feeds)
        ort_ms = statistics.median(time_ms(ort_runner, feeds, warmup=3, iterations=iterations, max_seconds=30))
    shapes = fixed_shapes(path, feeds)
    row = {"model": name, "onnx_nodes": len(proto.graph.node), "onnx_runtime_ms": round(ort_ms, 3)}
    with no_passes():
        row["raw"] = measure(ember.build(str(path), ember.BuildConfig(shapes=shapes)), feeds, ref, iterations)
    row["no-fuse"] = measure(ember.build(str(path), ember.BuildConfig(shapes=shapes, optimize=False)),
                             feeds, ref, iterations)
    full = ember.build(str(path), ember.BuildConfig(shapes=shapes))
    row["full"] = measure(full, feeds, ref, iterations)
    row["fired"] = _fired(full.plan.graph.meta.get("pass_stats", []))
    row["speedup_full_vs_raw"] = round(row["raw"]["median_ms"] / row["full"]["median_ms"], 2)
    return row


def _fired(stats: list) -> dict[str, int]:
    total: dict[str, int] = {}
    for record in stats:
        for rule, n in record["fired"].items():
            total[rule] = total.get(rule, 0) + n
    return total


def table(rows: list[dict]) -> str:
    lines = ["| model | ONNX nodes | Ember layers (raw / no-fuse / full) | CPU ms raw | no-fuse | full | "
             "full vs raw | ONNX Runtime ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['onnx_nodes']} | {r['raw']['layers']} / {r['no-fuse']['layers']} / "
                     f"{r['full']['layers']} | {r['raw']['median_ms']:.2f} | {r['no-fuse']['median_ms']:.2f} | "
                     f"{r['full']['median_ms']:.2f} | {r['speedup_full_vs_raw']:.2f}x | "
                     f"{r['onnx_runtime_ms']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", help="result file (default bench/results/optimizer-<date>.json)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
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
              "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
