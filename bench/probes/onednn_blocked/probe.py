"""Probe (issue 19): would keeping fp32 activations in oneDNN's blocked layout (nChw16c) between
convolutions close Ember's gap to ONNX Runtime on ResNet-50 and MobileNetV2?

    .venv/bin/python bench/probes/onednn_blocked/probe.py [--models resnet-50,mobilenet-v2] [--batches 1,8] \\
        [--threads 2,1] [--rounds 4] [--iterations 5] [--max-isa avx512_core] [--out FILE]

For each model and batch, the zoo's ONNX export is built by ``ember.build`` (fp32, CPU: BatchNorm
folded, ReLU / ReLU6 / residual add fused), and its convolution chain up to the classifier is
rebuilt three times as persistent oneDNN primitives (``blocked_net.cpp``, via ``net.py``), one
per activation layout: ``nhwc`` (what Ember runs), ``any`` (oneDNN picks) and ``blocked``
(nChw16c, what ONNX Runtime's NCHWc kernels use), with MaxPool / GlobalAveragePool as oneDNN
pooling and the reorders each layout needs. Every chain's output is checked against Ember's
GlobalAveragePool output. Then, at each thread count, five things take turns in ``--rounds``
rounds of ``--iterations`` runs: Ember's engine, ONNX Runtime on the same file (2 threads:
``intra_op_num_threads``), and the three chains (timed in C++, each op's time inside the chain
kept). After the rounds: each chain op alone (hot), and ONNX Runtime's profiler per op type.

``--max-isa`` sets ``ONEDNN_MAX_CPU_ISA`` for this process (oneDNN reads it once, at its first
primitive): run the script twice to compare. The load average is recorded around every row.
"""
# ruff: noqa: I001  (``common`` and ``net`` are sibling modules put on sys.path here; ruff cannot
# classify them, and --max-isa must reach the environment before torch is imported)
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1]


def _early_isa(argv: Sequence[str]) -> None:
    """``--max-isa`` must reach the environment before any oneDNN (PyTorch's or ours) initializes."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--max-isa=") else (argv[i + 1] if a == "--max-isa" and
                                                                          i + 1 < len(argv) else None)
        if value:
            os.environ["ONEDNN_MAX_CPU_ISA"] = value.upper()
            os.environ["DNNL_MAX_CPU_ISA"] = value.upper()


_early_isa(sys.argv[1:])
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cpu.features import cpu_features  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, max_rel_error, time_ms  # noqa: E402

import common  # type: ignore[import-not-found]  # noqa: E402
import net as netmod  # noqa: E402

LAYOUTS = netmod.LAYOUTS


def load() -> dict[str, Any]:
    one, five, _ = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "time": time.strftime("%H:%M:%S")}


def med(v: Sequence[float]) -> float:
    return float(statistics.median(v)) if v else float("nan")


def ember_gap_output(engine: Any, feeds: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """The tensor ``name`` (the chain's end) as Ember's engine computes it."""
    program: Any = engine.compile()
    seen: dict[str, torch.Tensor] = {}
    program.run({k: torch.from_numpy(v) for k, v in feeds.items()},
                observe=lambda n, t: seen.__setitem__(n, t.clone()) if n == name else None)
    if name not in seen:
        raise netmod.ProbeError(f"Ember's run did not produce {name!r}")
    return seen[name].contiguous()


def ort_nodes(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> list[dict[str, Any]]:
    """ONNX Runtime's profiler per node (first run dropped): op, weight and output shapes, median us."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(nodes) // (runs + 1)
    by_name: dict[str, dict[str, Any]] = {}
    for e in nodes[per_run:]:
        a = e["args"]
        d = by_name.setdefault(e["name"], {"op": a.get("op_name", "?"), "us": [],
                                           "inputs": [next(iter(t.values())) for t in a.get("input_type_shape", [])],
                                           "output": [next(iter(t.values())) for t in a.get("output_type_shape", [])]})
        d["us"].append(e["dur"])
    return [{"name": k, "op": v["op"], "inputs": v["inputs"], "output": v["output"][0] if v["output"] else [],
             "us": med(v["us"])} for k, v in by_name.items()]


def conv_match(nodes: list[dict[str, Any]], weights: list[tuple[int, ...]], chains: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """ORT's Conv nodes and the chains' convolutions summed per (weight shape, output shape)."""
    groups: dict[str, dict[str, Any]] = {}

    def key(w: Sequence[int], out: Sequence[int]) -> str:
        return f"w{'x'.join(map(str, w))} -> {'x'.join(map(str, out))}"

    for n in nodes:
        if n["op"] in ("Conv", "FusedConv") and len(n["inputs"]) > 1:
            g = groups.setdefault(key(n["inputs"][1], n["output"]), {"ort_us": 0.0, "ort_n": 0})
            g["ort_us"] += n["us"]
            g["ort_n"] += 1
    for lay, summary in chains.items():
        convs = [o for o in summary["ops"] if o["kind"] == "conv"]
        for w, o in zip(weights, convs):
            out = [int(d) for d in o["dst_dims"].strip("x").split("x")]
            g = groups.setdefault(key(w, out), {"ort_us": 0.0, "ort_n": 0})
            g[f"{lay}_us"] = g.get(f"{lay}_us", 0.0) + o["chain_us"]
            g[f"{lay}_n"] = g.get(f"{lay}_n", 0) + 1
            g[f"{lay}_impl"] = o["impl"]
    return [{"shape": k, **{kk: (round(vv, 1) if isinstance(vv, float) else vv) for kk, vv in v.items()}}
            for k, v in groups.items()]


def chain_summary(net: Any, per_op: list[list[float]], totals: list[float], iso: list[list[float]]
                  ) -> dict[str, Any]:
    """Per op (median ns -> us in the chain, alone) and sums by op kind."""
    ops = []
    by_kind: dict[str, dict[str, float]] = {}
    for info, chain_ns, alone_ns in zip(net.info(), per_op, iso):
        row = {"name": info["name"], "kind": info["kind"], "impl": info["impl"], "src": info["src"],
               "dst": info["dst"], "src_dims": info["src_dims"], "dst_dims": info["dst_dims"],
               "gflop": float(info["gflop"]),
               "chain_us": round(med(chain_ns) / 1e3, 1), "alone_us": round(med(alone_ns) / 1e3, 1)}
        ops.append(row)
        k = by_kind.setdefault(info["kind"], {"count": 0, "chain_ms": 0.0, "alone_ms": 0.0})
        k["count"] += 1
        k["chain_ms"] += row["chain_us"] / 1e3
        k["alone_ms"] += row["alone_us"] / 1e3
    for k in by_kind.values():
        k["chain_ms"], k["alone_ms"] = round(k["chain_ms"], 3), round(k["alone_ms"], 3)
    ms = [t / 1e6 for t in totals]
    return {"total_ms": {"median": round(med(ms), 3), "min": round(min(ms), 3), "n": len(ms)},
            "by_kind": by_kind, "arena_mib": round(net.arena_bytes() / 2**20, 1), "ops": ops}


def build_all(ext: Any, path: Path, feeds: dict[str, np.ndarray], name: str, batch: int
              ) -> tuple[Any, dict[str, netmod.Chain], dict[str, float]]:
    """Ember's engine and the three chains, made at the current thread count (oneDNN fixes a
    primitive's thread partitioning when it is created), each chain checked against Ember."""
    engine = ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False)
    chains = {lay: netmod.from_plan(ext, engine, lay) for lay in LAYOUTS}
    x = torch.from_numpy(feeds[next(iter(feeds))])
    ref = ember_gap_output(engine, feeds, chains["nhwc"].output)
    errors = {}
    for lay, c in chains.items():
        c.net.set_input(x)
        errors[lay] = float(max_rel_error(c.net.run().numpy().reshape(-1), ref.numpy().reshape(-1)))
        if errors[lay] > 1e-4:
            raise netmod.ProbeError(f"{name} b{batch}: the {lay} chain's output differs from Ember's by "
                                    f"{errors[lay]:.2e} (relative); the chain is not the model's")
    return engine, chains, errors


def impl_search(ext: Any, engine: Any, x: torch.Tensor, iterations: int, rounds: int) -> dict[str, Any]:
    """Per layout (nhwc, blocked): each convolution on every implementation oneDNN offers for it
    (``ref`` ones left out), timed inside the chain; then the chain with each layer's fastest one,
    taking turns with oneDNN's default choice."""
    out: dict[str, Any] = {}
    nets: dict[str, Any] = {}
    for lay in ("nhwc", "blocked"):
        base = netmod.from_plan(ext, engine, lay)
        base.net.set_input(x)
        want = base.net.run()
        # "#k <name>" for each candidate worth timing on an AVX-512 CPU (not ref / avx2 / sse41)
        cands = {op["name"]: [f"#{k} {c}" for k, c in enumerate(op["candidates"].split(";"))
                              if not (c.startswith("ref") or "avx2" in c or "sse41" in c)]
                 for op in base.net.info() if op["kind"] == "conv"}
        tried: dict[str, dict[str, float]] = {name: {} for name in cands}
        for k in range(max(len(c) for c in cands.values())):
            pick = {name: c[k] for name, c in cands.items() if k < len(c)}
            trial = netmod.from_plan(ext, engine, lay, {n: c.split(" ")[0] for n, c in pick.items()})
            trial.net.set_input(x)
            got = trial.net.run()
            err = float((got - want).abs().max() / want.abs().max())
            if err > 1e-4:
                raise netmod.ProbeError(f"{lay}, implementation set {k}: output differs by {err:.2e}")
            _, per_op = trial.net.time_chain(iterations, 1)
            for info, times in zip(trial.net.info(), per_op):
                if info["name"] in pick:
                    tried[info["name"]][pick[info["name"]]] = round(med(times) / 1e3, 1)
        best = {name: min(t, key=lambda i: t[i]) for name, t in tried.items() if t}
        chosen = netmod.from_plan(ext, engine, lay, {n: c.split(" ")[0] for n, c in best.items()})
        chosen.net.set_input(x)
        nets[f"{lay}_default"], nets[f"{lay}_best"] = base.net, chosen.net
        changed = {name: f"{cands[name][0]} -> {impl}" for name, impl in best.items() if impl != cands[name][0]}
        out[lay] = {"candidates_us": tried, "changed": changed}
    totals: dict[str, list[float]] = {label: [] for label in nets}
    for _ in range(rounds):
        for label, n in nets.items():
            totals[label] += [t / 1e6 for t in n.time_chain(iterations, 1)[0]]
    out["chain_ms"] = {label: {"median": round(med(v), 3), "min": round(min(v), 3)} for label, v in totals.items()}
    return out


def arena_check(ext: Any, engine: Any, x: torch.Tensor, feeds: dict[str, np.ndarray], iterations: int,
                rounds: int) -> dict[str, Any]:
    """Ember's engine and the nhwc / blocked chains with the arena (buffers reused) and without it
    (a buffer per tensor, as a run that allocates every output afresh touches new memory), in turns."""
    nets = {}
    for lay in ("nhwc", "blocked"):
        for reuse in (True, False):
            c = netmod.from_plan(ext, engine, lay, reuse=reuse)
            c.net.set_input(x)
            nets[f"{lay}_{'arena' if reuse else 'no_arena'}"] = c.net
    runner = EmberRunner(engine)
    totals: dict[str, list[float]] = {"ember": [], **{label: [] for label in nets}}
    try:
        for _ in range(rounds):
            totals["ember"] += time_ms(runner, feeds, 1, iterations)
            for label, n in nets.items():
                totals[label] += [t / 1e6 for t in n.time_chain(iterations, 1)[0]]
    finally:
        runner.close()
    return {"chain_ms": {label: {"median": round(med(v), 3), "min": round(min(v), 3)} for label, v in totals.items()},
            "arena_mib": {label: round(n.arena_bytes() / 2**20, 1) for label, n in nets.items()}}


def sum_check(ext: Any, engine: Any, x: torch.Tensor, iterations: int, rounds: int) -> dict[str, Any]:
    """The nhwc and blocked chains with each residual as a binary-add post-op (as Ember) and as an
    in-place sum post-op (as ONNX Runtime), in turns; per op in the chain too."""
    nets = {}
    ref = None
    for lay in ("nhwc", "blocked"):
        for mode in ("binary", "sum"):
            c = netmod.from_plan(ext, engine, lay, residual=mode)
            c.net.set_input(x)
            got = c.net.run()
            ref = got if ref is None else ref
            err = float((got - ref).abs().max() / ref.abs().max())
            if err > 1e-4:
                raise netmod.ProbeError(f"{lay} chain with residual={mode}: output differs by {err:.2e}")
            nets[f"{lay}_{mode}"] = c.net
    totals: dict[str, list[float]] = {label: [] for label in nets}
    per: dict[str, list[list[float]]] = {label: [] for label in nets}
    for _ in range(rounds):
        for label, n in nets.items():
            total, ops = n.time_chain(iterations, 1)
            totals[label] += [t / 1e6 for t in total]
            per[label] = per[label] or [[] for _ in ops]
            for k, v in enumerate(ops):
                per[label][k] += v
    residual_convs = {}
    with_residual = netmod.residual_layers(engine)
    for label, n in nets.items():
        names = [op["name"] for op in n.info()]
        residual_convs[label] = round(sum(med(per[label][k]) for k, nm in enumerate(names)
                                          if nm in with_residual) / 1e6, 3)
    return {"chain_ms": {label: {"median": round(med(v), 3), "min": round(min(v), 3)} for label, v in totals.items()},
            "residual_convs_ms": residual_convs}


def bench_row(ext: Any, name: str, batch: int, threads_list: list[int], args: argparse.Namespace) -> dict[str, Any]:
    path = zoo.export_onnx(name, batch=batch)
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in zoo.sample_inputs(name, batch).items()}
    row: dict[str, Any] = {"model": name, "batch": batch, "by_threads": {}}
    for threads in threads_list:
        torch.set_num_threads(threads)
        engine, chains, errors = build_all(ext, path, feeds, name, batch)
        row["convs"] = chains["nhwc"].convs
        row["conv_tactics"] = sorted({lay.tactic for lay in engine.plan.layers if lay.kind in ("Conv", "FusedConv")})
        before = load()
        runners = {"ember": EmberRunner(engine), "onnxruntime": OrtRunner(path, threads=threads)}
        try:
            ort_out = runners["onnxruntime"](feeds)
            ours = runners["ember"](feeds)
            ember_err = max(max_rel_error(np.asarray(ours[k]), ort_out[k]) for k in ort_out)
            times: dict[str, list[float]] = {k: [] for k in [*runners, *LAYOUTS]}
            per_op: dict[str, list[list[float]]] = {lay: [] for lay in LAYOUTS}
            for r in range(args.rounds):
                warm = 2 if r == 0 else 1
                for label, runner in runners.items():
                    times[label] += time_ms(runner, feeds, warm, args.iterations)
                for lay, c in chains.items():
                    total, ops = c.net.time_chain(args.iterations, warm)
                    times[lay] += [t / 1e6 for t in total]
                    if not per_op[lay]:
                        per_op[lay] = [[] for _ in ops]
                    for k, v in enumerate(ops):
                        per_op[lay][k] += v
        finally:
            for runner in runners.values():
                runner.close()
        iso = {lay: c.net.time_isolated(args.alone_blocks, args.alone_reps) for lay, c in chains.items()}
        search = impl_search(ext, engine, torch.from_numpy(feeds[next(iter(feeds))]), args.iterations,
                             args.rounds) if args.impl_search else None
        arena = arena_check(ext, engine, torch.from_numpy(feeds[next(iter(feeds))]), feeds, args.iterations,
                            args.rounds) if args.arena_check else None
        sums = sum_check(ext, engine, torch.from_numpy(feeds[next(iter(feeds))]), args.iterations,
                         args.rounds) if args.sum_check else None
        nodes = ort_nodes(path, feeds, threads, args.profile_runs)
        ort_profile: dict[str, float] = {}
        for n in nodes:
            ort_profile[n["op"]] = round(ort_profile.get(n["op"], 0.0) + n["us"] / 1e3, 3)
        ember_kinds, _ = common.ember_layer_profile(engine, feeds, runs=args.profile_runs)
        after = load()
        chain = {lay: chain_summary(c.net, per_op[lay],
                                    [t * 1e6 for t in times[lay]], iso[lay]) for lay, c in chains.items()}
        lat = {k: {"median": round(med(v), 3), "min": round(min(v), 3), "n": len(v)} for k, v in times.items()}
        e, o = lat["ember"]["median"], lat["onnxruntime"]["median"]
        projected = {lay: round(e - lat["nhwc"]["median"] + lat[lay]["median"], 3) for lay in LAYOUTS}
        x_ort: dict[str, float] = {"ember": round(o / e, 3),
                                   **{f"ember_if_{lay}": round(o / projected[lay], 3) for lay in LAYOUTS},
                                   **{f"chain_{lay}": round(o / lat[lay]["median"], 3) for lay in LAYOUTS}}
        res: dict[str, Any] = {
               "load_before": before, "load_after": after, "latency_ms": lat, "ember_vs_ort_max_rel_error": ember_err,
               "chain_vs_ember_max_rel_error": errors,
               "x_ort": x_ort,
               "ember_projected_ms": projected,
               "ort_ops_ms": ort_profile,
               "ort_conv_ms": round(sum(v for k, v in ort_profile.items() if k in ("Conv", "FusedConv")), 3),
               "ember_profile_ms_by_kind": {k: round(v, 3)
                                            for k, v in sorted(ember_kinds.items(), key=lambda kv: -kv[1])},
               "chains": chain}
        res["conv_by_shape"] = conv_match(nodes, chains["nhwc"].conv_weights, chain)
        if sums is not None:
            res["sum_check"] = sums
            print("  residual as binary / sum post-op, chain ms: " +
                  ", ".join(f"{k} {v['median']:.2f}" for k, v in sums["chain_ms"].items()) +
                  "; the residual layers: " + ", ".join(f"{k} {v:.2f}" for k, v in sums["residual_convs_ms"].items()),
                  flush=True)
        if arena is not None:
            res["arena_check"] = arena
            print("  arena check, ms: " + ", ".join(f"{k} {v['median']:.2f}" for k, v in arena["chain_ms"].items()),
                  flush=True)
        if search is not None:
            res["impl_search"] = search
            print("  best implementation per layer, chain ms: " +
                  ", ".join(f"{k} {v['median']:.2f}" for k, v in search["chain_ms"].items()), flush=True)
        row["by_threads"][str(threads)] = res
        print(f"{name} b{batch} {threads}T (load {before['load1']}-{after['load1']}): Ember {e:.2f} ms, ORT {o:.2f} "
              f"(ORT Conv {res['ort_conv_ms']:.2f}); chains " +
              ", ".join(f"{lay} {lat[lay]['median']:.2f} (conv {chain[lay]['by_kind']['conv']['chain_ms']:.2f})"
                        for lay in LAYOUTS) +
              "; x ORT " + ", ".join(f"{k} {v:.2f}" for k, v in x_ort.items()), flush=True)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet-50,mobilenet-v2")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="2,1")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--iterations", type=int, default=5, help="runs per runtime per round")
    p.add_argument("--alone-blocks", type=int, default=5)
    p.add_argument("--alone-reps", type=int, default=3)
    p.add_argument("--profile-runs", type=int, default=10)
    p.add_argument("--impl-search", action="store_true",
                   help="also time every oneDNN implementation of each layer and the chain of the fastest")
    p.add_argument("--sum-check", action="store_true",
                   help="also the chains with the residual as an in-place sum post-op, in turns with binary add")
    p.add_argument("--arena-check", action="store_true",
                   help="also the chains without buffer reuse (a buffer per tensor), in turns with Ember")
    p.add_argument("--max-isa", default=None, help="ONEDNN_MAX_CPU_ISA for this process (e.g. avx512_core)")
    p.add_argument("--prefix", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import onnxruntime

    ext = netmod.load(args.prefix)
    threads_list = [int(t) for t in args.threads.split(",")]
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(), "argv": list(sys.argv[1:]),
        "machine": {**common.machine_info(threads_list[0]), "isa": cpu_features().reported()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "libdnnl": ext.version(),
                     "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", "(default)")},
        "load_start": load(), "rows": []}
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            result["rows"].append(bench_row(ext, name, batch, threads_list, args))
    result["load_end"] = load()
    out = args.out or HERE / f"results-{result['date']}{'-' + args.max_isa if args.max_isa else ''}.json"
    out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
