"""``ember profile``: per-layer times, in the style of TensorRT's layer profiler.

    ember profile resnet50.onnx --device cuda --precision fp16 --batch 32 --json prof.json --trace prof.trace.json

Each layer (fused layers show every source node they stand for, joined by " + ") is timed with
CUDA events around its kernel, CUDA graphs off and one stream (so the times add up); on the CPU
as the engine runs it, chains of convolutions timed step by step inside their one call. The
table shows the median over ``--iterations`` runs, the mean, and each layer's share of the total.
``--trace`` writes one run as a Chrome trace (chrome://tracing, Perfetto).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ember.backends.tensors import numpy_to_torch
from ember.tools.args import parse_shapes

HELP = "time every layer of a model or engine (CUDA events per layer, graphs off)"


@dataclass
class LayerTime:
    index: int
    name: str
    display_name: str
    op: str
    tactic: str
    precision: str
    samples: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))


def profile_engine(engine: Any, feeds: dict[str, np.ndarray], iterations: int = 20, warmup: int = 3
                   ) -> tuple[list[LayerTime], list[tuple[float, float]]]:
    """Per-layer times of ``engine`` on ``feeds``; also one run's (start, duration) per layer in
    ms from the run's start, for the trace."""
    plan = engine.plan
    layers = [LayerTime(i, lay.name, " + ".join(lay.origin) or lay.name, lay.kind, lay.tactic or "default",
                        lay.precision, []) for i, lay in enumerate(plan.layers)]
    notes: list[str] = []
    timeline: list[tuple[float, float]] = []
    run_once = _cuda_profiler(engine, feeds) if plan.config.device == "cuda" else _cpu_profiler(engine, feeds, notes)
    for it in range(warmup + iterations):
        starts, durs = run_once()
        if it >= warmup:
            for lay, d in zip(layers, durs):
                lay.samples.append(d)
            timeline = list(zip(starts, durs))
    for lay, note in zip(layers, notes):  # where a CPU layer ran: in a chain, a dw pair, a head
        if note:
            lay.tactic = f"{lay.tactic} ({note})"
    return layers, timeline


def _cuda_profiler(engine: Any, feeds: dict[str, np.ndarray]) -> Callable[[], tuple[list[float], list[float]]]:
    """One eager run of the engine's compiled program (``Engine.compile()``, shared by every
    context) per call, on one stream of its own, with CUDA events around each layer: no CUDA
    graph, so each layer's time is its own, and one stream, so the times add up."""
    program = engine.compile()
    dev = {k: numpy_to_torch(v, program.device) for k, v in feeds.items()}
    stream = torch.cuda.Stream(program.device)
    n = len(program.steps)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    base = torch.cuda.Event(enable_timing=True)

    def hook(step: Any, when: str) -> None:
        (starts if when == "start" else ends)[step.index].record()

    def run_once() -> tuple[list[float], list[float]]:
        with torch.inference_mode(), torch.cuda.stream(stream):
            base.record()
            program.forward(dev, [stream], hook)
        stream.synchronize()
        return ([base.elapsed_time(s) for s in starts], [s.elapsed_time(e) for s, e in zip(starts, ends)])

    return run_once


def _cpu_profiler(engine: Any, feeds: dict[str, np.ndarray],
                  notes: list[str]) -> Callable[[], tuple[list[float], list[float]]]:
    """One run of the CPU program per call, as the engine runs it (``CPUProgram.timed_run``):
    chains of persistent convolutions in one call each, timed per step inside it; ``notes``
    receives what each layer ran in ("chained", "dw pair", "chain head", or nothing)."""
    program = engine.compile()
    dev = {k: numpy_to_torch(v, program.device) for k, v in feeds.items()}

    def run_once() -> tuple[list[float], list[float]]:
        starts, durs, said = program.timed_run(dev)
        notes[:] = said
        return starts, durs

    return run_once


def format_table(layers: list[LayerTime], top: Optional[int] = None) -> str:
    """TensorRT-profiler-style table: layer, op, tactic, precision, median ms, mean ms, share."""
    total = sum(lay.median for lay in layers) or 1.0
    rows = sorted(layers, key=lambda lay: -lay.median)[:top] if top else layers
    w = min(60, max((len(lay.display_name) for lay in rows), default=5))
    lines = [f"{'Layer':{w}s} {'Op':17s} {'Tactic':30s} {'Prec':5s} {'ms':>8s} {'avg ms':>8s} {'%':>6s}"]
    for lay in rows:
        name = lay.display_name if len(lay.display_name) <= w else lay.display_name[:w - 3] + "..."
        lines.append(f"{name:{w}s} {lay.op:17s} {lay.tactic[:30]:30s} {lay.precision:5s} "
                     f"{lay.median:8.4f} {lay.mean:8.4f} {100 * lay.median / total:6.2f}")
    lines.append(f"{'Total (' + str(len(layers)) + ' layers)':{w}s} {'':17s} {'':30s} {'':5s} {total:8.4f}")
    return "\n".join(lines)


def to_json(layers: list[LayerTime], model: str, device: str) -> dict:
    total = sum(lay.median for lay in layers)
    return {"model": model, "device": device, "total_ms": round(total, 5),
            "iterations": len(layers[0].samples) if layers else 0,
            "layers": [{"index": lay.index, "name": lay.name, "display_name": lay.display_name,
                        "op": lay.op, "tactic": lay.tactic, "precision": lay.precision,
                        "median_ms": round(lay.median, 5), "mean_ms": round(lay.mean, 5),
                        "share": round(lay.median / total, 5) if total else 0.0} for lay in layers]}


def chrome_trace(layers: list[LayerTime], timeline: list[tuple[float, float]], device: str) -> dict:
    """One run as Chrome trace events (microseconds)."""
    events = [{"name": lay.display_name, "cat": lay.op, "ph": "X", "ts": round(start * 1e3, 3),
               "dur": round(dur * 1e3, 3), "pid": device, "tid": "layers",
               "args": {"layer": lay.name, "tactic": lay.tactic, "precision": lay.precision}}
              for lay, (start, dur) in zip(layers, timeline)]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember profile``."""
    p.add_argument("model", help="model file (.onnx, a Caffe .prototxt with --weights, a SavedModel folder, "
                                 ".keras/.h5/.pb), .ember engine, or a zoo model name")
    p.add_argument("--weights", metavar="FILE", help="the weights of a model whose file holds none (Caffe's "
                                                     ".caffemodel); such models run without peers")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16"), default=None)
    p.add_argument("--batch", type=int)
    p.add_argument("--shapes", action="append", metavar="NAME:DIMS,...")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, help="show only the N slowest layers")
    p.add_argument("--json", metavar="FILE", help="write per-layer times as JSON")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace of one run")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember profile``."""
    from ember.tools.bench import BenchOptions, build_engine, resolve_source

    opts = BenchOptions(args.model, args.device, args.precision or ("fp16" if args.device == "cuda" else "fp32"),
                        args.batch, parse_shapes(args.shapes), peers=(),
                        frontend_options={"weights": args.weights} if args.weights else {})
    src = resolve_source(opts)
    engine, _ = build_engine(src, opts)
    layers, timeline = profile_engine(engine, src.feeds, args.iterations, args.warmup)
    print(format_table(layers, args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(layers, args.model, args.device), indent=1))
    if args.trace:
        Path(args.trace).write_text(json.dumps(chrome_trace(layers, timeline, args.device)))
    return 0
