"""The device arena against the graph pool, on one build: ``python bench/arena_ab.py``.

For each model and batch it builds one fp16 engine with tactic tuning (tactics timed as the
arena runs them) and runs it in two execution contexts: with the arena (every intermediate at
its planned offset) and without it (intermediates in the CUDA graph's private pool, the design
before the arena). Both replay one CUDA graph on inputs already in the engine's buffers; GPU
time is the median of CUDA-event-timed replays, measured alternately in the same process. It
reports the arena's planned bytes, the layers that could not write in place (copied), the pool
bytes of both, and that both give the same outputs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(model: str, batch: int, iterations: int, cache: str) -> dict:
    import torch

    import ember
    from ember.backends.cuda.exec.executor import CudaExecutor
    from ember.backends.cuda.exec.program import program_from_plan
    from ember.backends.tensors import numpy_to_torch
    from ember.tools.bench import BenchOptions, resolve_source
    from ember.tools.bench_stats import measure

    opts = BenchOptions(model, "cuda", "fp16", batch)
    src = resolve_source(opts)
    shapes = {k: tuple(v.shape) for k, v in src.feeds.items()}
    t0 = time.perf_counter()
    engine = ember.build(src.onnx_path, ember.BuildConfig(device="cuda", precision="fp16", shapes=shapes,
                                                          timing_cache=cache), progress=False)
    build_s = time.perf_counter() - t0
    tactics: dict[str, int] = {}
    for layer in engine.plan.layers:
        tactics[layer.tactic] = tactics.get(layer.tactic, 0) + 1
    # two executors made here, not through contexts: this A/B switches the arena off in one program
    executors, bufs, outs = {}, {}, {}
    for arena in (True, False):
        program = program_from_plan(engine.plan)
        program.use_arena = arena
        executor = executors[arena] = CudaExecutor(program)
        bufs[arena] = {}
        for name, v in src.feeds.items():
            bufs[arena][name] = executor.input_buffer(src.feeds, name)
            bufs[arena][name].copy_(numpy_to_torch(v, torch.device("cpu")))
        outs[arena] = {k: v.float().clone() for k, v in executor.run_device(bufs[arena]).items()}
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(5):  # alternate, so drift hits both alike
        for arena in (True, False):
            times[arena] += measure(lambda a=arena: executors[a].run_device(bufs[a]), "cuda", iterations // 5, 3)
    diff = max(float((outs[True][k] - outs[False][k]).abs().max() / outs[False][k].abs().max().clamp(min=1e-6))
               for k in outs[True])
    mem_a, mem_p = executors[True].memory(), executors[False].memory()
    report = executors[True].arena_report() or {}
    row = {"model": model, "batch": batch, "build_s": round(build_s, 1),
           "arena_ms": round(statistics.median(times[True]), 4), "pool_ms": round(statistics.median(times[False]), 4),
           "arena_bytes": mem_a["arena"], "arena_planned": mem_a["arena_planned"],
           "arena_unshared": mem_a["arena_unshared"], "arena_scratch_pool": mem_a["graph_pool"],
           "pool_only_bytes": mem_p["graph_pool"], "placed": report.get("placed"),
           "views": report.get("views"), "written": report.get("written"), "copied": report.get("copied"),
           "copied_layers": report.get("copied_layers"), "max_rel_diff": diff, "tactics": tactics}
    row["arena_vs_pool"] = round(row["pool_ms"] / row["arena_ms"], 3)
    row["copied_timings"] = _timings(engine, cache, report.get("copied_layers") or [])
    for e in executors.values():
        e.close()
    del engine
    torch.cuda.empty_cache()
    return row


def _timings(engine, cache: str, names: list[str]) -> dict:
    """The tactic timings (ms, from the timing cache) of the layers that were copied into place:
    why the builder chose a tactic that cannot write there."""
    from ember.builder.tactics import layer_signature

    try:
        entries = json.loads(Path(cache).read_text()).get("entries", {})
    except (OSError, ValueError):
        return {}
    graph, prec = engine.plan.graph, {layer.name: layer.precision for layer in engine.plan.layers}
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for name in names[:12]:
        node = nodes.get(name)
        if node is not None:
            signature = layer_signature(node, graph, prec.get(name, "fp16"))
            out[name] = {"op": node.op.value, "tactics": entries.get(signature)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet-50,googlenet,mobilenet-v2,bert-base")
    p.add_argument("--batches", default="1,128")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "timing.json")
        for model in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                row = run(model, batch, args.iterations, cache)
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"suite": "arena_ab", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    mb = 1 << 20
    print(f"\n{'model':14} {'b':>4} {'arena ms':>9} {'pool ms':>9} {'x':>6} {'arena MB':>9} {'pool MB':>8} "
          f"{'scratch MB':>10} {'copied':>6} {'diff':>8}")
    for r in rows:
        print(f"{r['model']:14} {r['batch']:>4} {r['arena_ms']:>9.3f} {r['pool_ms']:>9.3f} {r['arena_vs_pool']:>6.3f} "
              f"{r['arena_bytes'] / mb:>9.1f} {r['pool_only_bytes'] / mb:>8.1f} {r['arena_scratch_pool'] / mb:>10.1f} "
              f"{r['copied']!s:>6} {r['max_rel_diff']:>8.1e}")


if __name__ == "__main__":
    main()
