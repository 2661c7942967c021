"""``ember bench``: what ``trtexec`` reports, with the peers measured in the same process.

    ember bench resnet50.onnx --device cuda --precision fp16 --batch 128 --peers torch,torch-compile,onnxruntime
    ember bench model.ember --iterations 200 --json report.json
    ember bench resnet-50 --device cpu          # a zoo model by name (exported on the fly)

Ember is timed three ways: GPU compute (CUDA events around one engine run on inputs already on
the device: the number compared with the peers), the end-to-end ``infer`` call on host arrays
(wall clock), and that call's split into host-to-device copy / compute / device-to-host copy.
Peers run on the same inputs (see ``bench_peers``); each gets Ember's speed-up
``peer median / Ember median``. With onnxruntime importable, Ember's outputs are checked against
ONNX Runtime fp32 (max relative error). On ``--device cpu`` every time is wall clock.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ember.backends.tensors import max_relative_error, numpy_to_torch
from ember.errors import InputError, ModelLoadError
from ember.runtime import example_inputs as inputs
from ember.tools.args import parse_shapes
from ember.tools.bench_stats import LatencyStats, measure, wall_clock

HELP = "benchmark a model or engine against PyTorch, torch.compile and ONNX Runtime"


@dataclass
class BenchOptions:
    model: str
    device: str = "cuda"
    precision: str = "fp16"
    batch: Optional[int] = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    iterations: int = 100
    warmup: int = 10
    peers: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime")
    timing_cache: Optional[str] = None
    cuda_graphs: bool = True
    tuning: bool = True
    peer_budget_s: float = 20.0
    accuracy_target: Optional[float] = None
    frontend_options: dict[str, Any] = field(default_factory=dict)  # e.g. Caffe's weights=


@dataclass
class Source:
    onnx_path: Optional[str]
    engine_path: Optional[str]
    zoo_name: Optional[str]
    feeds: dict[str, np.ndarray]
    graph: Any = None  # a model of another format (Caffe, TensorFlow, ...), imported: Ember alone


# ---- inputs ------------------------------------------------------------------------------------
def resolve_source(opts: BenchOptions) -> Source:
    """The model file(s) and the inputs to run: a zoo name, an .onnx file or an .ember engine."""
    path = Path(opts.model)
    if not path.exists():
        from ember import zoo

        if opts.model not in zoo.names():
            raise ModelLoadError(f"{opts.model} is neither a file nor a zoo model; give an .onnx or "
                                 f".ember path, or one of: {', '.join(zoo.names())}")
        batch = opts.batch or 1
        onnx_path = zoo.export_onnx(opts.model, batch=batch, dynamic_batch=True)
        return Source(str(onnx_path), None, opts.model, zoo.sample_inputs(opts.model, batch))
    if path.suffix.lower() == ".ember":
        from ember.runtime.engine import Engine

        engine = Engine.load(path, compile=False)
        feeds = _make_feeds(inputs.engine_input_specs(engine), opts, inputs.graph_int_ranges(engine.plan.graph))
        return Source(None, str(path), None, feeds)
    from ember.frontends import detect

    if path.is_dir() or detect(path).name != "onnx" or opts.frontend_options:
        # another format (a Caffe prototxt with --weights, a SavedModel, a Keras file): imported
        # once; Ember runs alone (the peers read ONNX files)
        from ember.frontends import load

        graph = load(path, shapes=dict(opts.shapes) or None, **opts.frontend_options)  # e.g. a deploy batch of 10
        feeds = _make_feeds(inputs.graph_input_specs(graph), opts, inputs.graph_int_ranges(graph))
        return Source(None, None, None, feeds, graph)
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    feeds = _make_feeds(inputs.onnx_input_specs(model), opts, inputs.onnx_int_ranges(model))
    return Source(str(path), None, None, feeds)


def _make_feeds(specs: list[inputs.InputSpec], opts: BenchOptions,
                int_ranges: dict[str, int]) -> dict[str, np.ndarray]:
    """Random inputs (seed 0): ``--shapes`` first, ``--batch`` for axis 0 (a dynamic one: 1 without
    it), a profile's opt size for other dynamic dims of an engine, else an error naming the input."""
    shapes = inputs.resolve_shapes(specs, opts.shapes, dynamic="opt", batch=opts.batch, dynamic_batch=1)
    return inputs.random_inputs(specs, shapes, seed=0, int_ranges=int_ranges)


# ---- Ember ---------------------------------------------------------------------------------------
def build_engine(src: Source, opts: BenchOptions) -> tuple[Any, Optional[float]]:
    """Builds (or loads) the engine; returns it and the build seconds (``None`` when loaded)."""
    import time

    import ember
    from ember.plan.config import BUILDABLE_PRECISIONS, to_enum

    if src.engine_path:
        return ember.load(src.engine_path), None
    shapes = {k: tuple(v.shape) for k, v in src.feeds.items()}
    # to_enum as BuildConfig itself would: the same error for a device or precision it lacks
    device = to_enum(ember.Device, opts.device, "device")
    precision = to_enum(ember.Precision, opts.precision, "precision", BUILDABLE_PRECISIONS)
    config = ember.BuildConfig(device=device, precision=precision, shapes=shapes,
                               timing_cache=opts.timing_cache, cuda_graphs=opts.cuda_graphs,
                               tactic_tuning=opts.tuning, accuracy_target=opts.accuracy_target)
    t0 = time.perf_counter()
    engine = ember.build(src.graph if src.graph is not None else src.onnx_path, config, progress=False)
    return engine, time.perf_counter() - t0


def measure_ember(engine: Any, feeds: dict[str, np.ndarray], opts: BenchOptions) -> tuple[dict, dict]:
    """Ember's timings and its outputs (numpy) on ``feeds``."""
    if engine.plan.config.device == "cuda":
        return _measure_cuda(engine, feeds, opts)
    with engine.create_context() as ctx:
        outs = ctx.infer(feeds)
        samples = wall_clock(lambda: ctx.infer(feeds), opts.iterations, opts.warmup)
    stats = LatencyStats.of(samples)
    return {"compute_ms": stats.to_json(), "end_to_end_ms": stats.to_json()}, outs


def _measure_cuda(engine: Any, feeds: dict[str, np.ndarray], opts: BenchOptions) -> tuple[dict, dict]:
    """Three timings of a CUDA engine through its context's public executor (the runtime's
    ``ExecutionContext.executor``, a ``CudaExecutor``): ``infer`` end to end with its H2D /
    compute / D2H split (``last_timing``), and compute alone on inputs already in the executor's
    own buffers (``input_buffer`` + ``run_device``: no copy at all)."""
    with engine.create_context() as ctx:
        executor = ctx.executor
        outs = executor.infer(feeds)
        h2d, comp, d2h = [], [], []

        def e2e() -> None:
            executor.infer(feeds)
            t = executor.last_timing()
            h2d.append(t.h2d_ms)
            comp.append(t.compute_ms)
            d2h.append(t.d2h_ms)

        end_to_end = wall_clock(e2e, opts.iterations, opts.warmup)
        bufs = {}
        for name, v in feeds.items():
            bufs[name] = executor.input_buffer(feeds, name)
            bufs[name].copy_(numpy_to_torch(v, torch.device("cpu")))
        compute = measure(lambda: executor.run_device(bufs), "cuda", opts.iterations, opts.warmup)
        result = {
            "compute_ms": LatencyStats.of(compute).to_json(),
            "end_to_end_ms": LatencyStats.of(end_to_end).to_json(),
            "split_ms": {"h2d": LatencyStats.of(h2d).median, "compute": LatencyStats.of(comp).median,
                         "d2h": LatencyStats.of(d2h).median},
            "cuda_graphs": bool(executor.captures), "fallback": list(executor.fallback_reason.values()),
            "streams": engine.compile().num_streams,
            "device_memory": executor.memory(), "arena": executor.arena_report(),
        }
    return result, outs


# ---- the whole benchmark -------------------------------------------------------------------------
def bench(opts: BenchOptions) -> dict:
    """Runs the benchmark and returns the JSON-able report."""
    src = resolve_source(opts)
    batch = next(iter(src.feeds.values())).shape[0] if src.feeds else 1
    engine, build_s = build_engine(src, opts)
    ember_stats, ember_outs = measure_ember(engine, src.feeds, opts)
    median = ember_stats["compute_ms"]["median"]
    report: dict[str, Any] = {
        "model": opts.model, "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": _device_info(opts.device), "versions": _versions(),
        "config": {"precision": opts.precision, "batch": batch, "iterations": opts.iterations,
                   "warmup": opts.warmup, "cuda_graphs": opts.cuda_graphs, "tuning": opts.tuning,
                   "accuracy_target": opts.accuracy_target,
                   "shapes": {k: list(v.shape) for k, v in src.feeds.items()}},
        "build": {"seconds": None if build_s is None else round(build_s, 3),
                  "layers": len(engine.plan.layers), "tactics": _tactic_counts(engine.plan.layers),
                  "info": {k: v for k, v in engine.plan.build_info.items() if k != "passes"}},
        "ember": {**ember_stats, "throughput": round(batch * 1e3 / median, 2)},
        "peers": {},
    }
    if src.onnx_path:
        report["accuracy"], reference = _accuracy(src, ember_outs)
        report["peers"] = _run_peers(src, engine, opts, median, batch, reference)
    return report


def _run_peers(src: Source, engine, opts: BenchOptions, ember_median: float, batch: int,
               reference: Optional[dict] = None) -> dict:
    from ember.tools import bench_peers

    assert src.onnx_path is not None  # bench() compares peers for an ONNX source only
    results: dict[str, Any] = {}
    wanted = list(opts.peers)
    found: list = []
    torch_names = [p for p in wanted if p in ("torch", "torch-compile")]
    if torch_names:
        graph = None if src.zoo_name else _plain_graph(src)
        try:
            found += bench_peers.torch_peers(torch_names, zoo_name=src.zoo_name, graph=graph,
                                             feeds=src.feeds, device=opts.device,
                                             precision=opts.precision,
                                             output_names=list(engine.plan.graph.outputs))
        except Exception as e:  # noqa: BLE001
            found.append(("torch", f"{type(e).__name__}: {str(e)[:300]}"))
    if "onnxruntime" in wanted:
        try:
            found.append(bench_peers.onnxruntime_peer(src.onnx_path, src.feeds, opts.device))
        except Exception as e:  # noqa: BLE001
            found.append(("onnxruntime", f"{type(e).__name__}: {str(e)[:300]}"))
    for peer in found:
        if isinstance(peer, tuple):
            results[peer[0]] = {"error": peer[1]}
            continue
        samples = measure(peer.call, peer.device, opts.iterations, min(opts.warmup, 3),
                          budget_s=opts.peer_budget_s)
        stats = LatencyStats.of(samples)
        results[peer.name] = {"compute_ms": stats.to_json(), "throughput": round(batch * 1e3 / stats.median, 2),
                              "ember_speedup": float(f"{stats.median / ember_median:.4g}"), **peer.info}
        if reference:  # the peer's own accuracy against the same oracle, for comparison
            try:
                outs = peer.outputs()
                errs = [max_relative_error(outs[k], v) for k, v in reference.items() if k in outs]
                results[peer.name]["max_rel_error"] = max(errs, default=None)
            except Exception as e:  # noqa: BLE001
                results[peer.name]["max_rel_error_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return results


def _tactic_counts(layers) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lay in layers:
        key = f"{lay.kind}:{lay.tactic or 'default'}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _plain_graph(src: Source):
    from ember.builder.build import import_model
    from ember.builder.shapes import apply_input_shapes, resolve_input_shapes
    from ember.plan.config import BuildConfig

    graph = import_model(src.onnx_path, {k: tuple(v.shape) for k, v in src.feeds.items()})
    cfg = BuildConfig(shapes={k: tuple(v.shape) for k, v in src.feeds.items()})
    return apply_input_shapes(graph, resolve_input_shapes(graph, cfg))


def _accuracy(src: Source, ember_outs: dict) -> tuple[dict, Optional[dict]]:
    assert src.onnx_path is not None  # bench() checks accuracy for an ONNX source only
    try:
        from ember.tools.bench_peers import reference_outputs

        ref = reference_outputs(src.onnx_path, src.feeds)
    except Exception as e:  # noqa: BLE001 - no oracle: say so
        return {"reference": "onnxruntime fp32 (CPU)", "error": f"{type(e).__name__}: {str(e)[:200]}"}, None
    errs = {k: max_relative_error(_np(ember_outs[k]), v) for k, v in ref.items() if k in ember_outs}
    return {"reference": "onnxruntime fp32 (CPU)", "max_rel_error": max(errs.values(), default=None),
            "per_output": errs}, ref


def _np(v: Any) -> np.ndarray:
    return v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _device_info(device: str) -> dict:
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": p.name, "sms": p.multi_processor_count,
                "memory_gb": round(p.total_memory / 2**30, 1)}
    from ember.runtime.device import fingerprint

    return dict(fingerprint("cpu"), cores=torch.get_num_threads())


def _versions() -> dict:
    import ember

    v = {"ember": ember.__version__, "torch": torch.__version__, "python": platform.python_version(),
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for mod in ("triton", "onnxruntime", "onnx"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed
            v[mod] = None
    return v


# ---- text --------------------------------------------------------------------------------------
def format_report(r: dict) -> str:
    """The report as a short text table (what the CLI prints)."""
    e = r["ember"]
    c = e["compute_ms"]
    lines = [f"{r['model']}  device={r['device'].get('name', r['device'].get('type'))}  "
             f"precision={r['config']['precision']}  batch={r['config']['batch']}"]
    if r["build"]["seconds"] is not None:
        lines.append(f"build: {r['build']['seconds']:.2f} s, {r['build']['layers']} layers")
    if "accuracy" in r["build"]["info"]:
        from ember.builder.accuracy import describe

        lines.append(describe(r["build"]["info"]["accuracy"]))
    lines.append(f"Ember compute: min {c['min']:.3f}  mean {c['mean']:.3f}  median {c['median']:.3f}  "
                 f"p90 {c['p90']:.3f}  p95 {c['p95']:.3f}  p99 {c['p99']:.3f} ms   "
                 f"throughput {e['throughput']:.1f}/s")
    if "split_ms" in e:
        s = e["split_ms"]
        lines.append(f"infer(): median {e['end_to_end_ms']['median']:.3f} ms  = H2D {s['h2d']:.3f} + "
                     f"GPU {s['compute']:.3f} + D2H {s['d2h']:.3f} ms (CUDA graphs: {e['cuda_graphs']})")
    if "accuracy" in r and r["accuracy"].get("max_rel_error") is not None:
        lines.append(f"max rel error vs {r['accuracy']['reference']}: {r['accuracy']['max_rel_error']:.2e}")
    lines.append(f"{'peer':34s} {'median ms':>10s} {'items/s':>10s} {'Ember x':>8s} {'rel err':>8s}")
    for name, p in r["peers"].items():
        if "error" in p:
            lines.append(f"{name:34s} failed: {p['error'][:80]}")
        else:
            err = p.get("max_rel_error")
            lines.append(f"{name:34s} {p['compute_ms']['median']:10.3f} {p['throughput']:10.1f} "
                         f"{p['ember_speedup']:8.2f} {'' if err is None else format(err, '8.1e')}")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember bench``."""
    p.add_argument("model", help="model file (.onnx, a Caffe .prototxt with --weights, a SavedModel folder, "
                                 ".keras/.h5/.pb), .ember engine, or a zoo model name")
    p.add_argument("--weights", metavar="FILE", help="the weights of a model whose file holds none (Caffe's "
                                                     ".caffemodel); such models run without peers")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16"), default=None,
                   help="default fp16 on cuda, fp32 on cpu")
    p.add_argument("--batch", type=int, help="batch size (dim 0 of every input)")
    p.add_argument("--shapes", action="append", metavar="NAME:DIMS,...", help="input shapes")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--peers", default="torch,torch-compile,onnxruntime",
                   help="comma-separated: torch, torch-compile, onnxruntime (or 'none')")
    p.add_argument("--timing-cache", metavar="FILE")
    p.add_argument("--no-graphs", action="store_true", help="run without CUDA graphs")
    p.add_argument("--no-tuning", action="store_true", help="keep default tactics")
    p.add_argument("--accuracy-target", type=float, metavar="MAX_REL_ERR",
                   help="build with this accuracy target (see ember build --accuracy-target)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember bench``."""
    peers = tuple(p for p in args.peers.split(",") if p and p != "none")
    bad = [p for p in peers if p not in ("torch", "torch-compile", "onnxruntime")]
    if bad:
        raise InputError(f"--peers {bad[0]!r} is not a peer; use torch, torch-compile, onnxruntime or none")
    opts = BenchOptions(args.model, args.device, args.precision or ("fp16" if args.device == "cuda" else "fp32"),
                        args.batch, parse_shapes(args.shapes), args.iterations, args.warmup, peers,
                        args.timing_cache, not args.no_graphs, not args.no_tuning,
                        accuracy_target=args.accuracy_target,
                        frontend_options={"weights": args.weights} if args.weights else {})
    report = bench(opts)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0
