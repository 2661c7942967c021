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
    python bench/cpu.py --precision fp32,bf16 --batches 8 # an Ember bf16 engine too (issue 19)
    python bench/cpu.py --without-persistent               # + Ember without the onednn_persistent conv tactic
    python bench/cpu.py --tune-cpu                         # + Ember with every layer's tactics timed (tune_cpu)
    python bench/cpu.py --exporter torchscript,dynamo      # each model exported both ways, a row each

``--precision`` lists Ember's precisions; each is one more runtime taking turns in the same
rounds (``ember`` is fp32, ``ember-bf16`` bf16, ...), and every Ember row's error is measured
against ONNX Runtime fp32. ``--repeats N`` runs the whole table N times and reports each
runtime's median of the N medians with their spread (min-max): the 2-core machine these numbers
come from is shared, and a single table of it is noisy. Every result names the CPU model and its
AMX / AVX-512 flags (``ember.backends.cpu.features``).

``--accuracy-target E`` builds the reduced-precision engines to E against an fp32 build on the
row's own inputs (``accuracy_inputs``: what a user passes as representative data), so the error
the row reports is the one the build was held to; ``--accuracy-on-random`` uses the build's own
random inputs instead (``ember.builder.accuracy.calibration_inputs``).

``--gap-ms N`` idles N ms before each runtime's block. By default the blocks follow each other,
the method issue 19 names; ONNX Runtime's intra-op workers keep spinning for tens of milliseconds
after its block, on the cores the next runtime's threads need (MobileNetV2 batch 1: Ember 3.98 ms
alone, 9.2 ms in blocks right after ONNX Runtime's, 4.5 ms with a 50 ms gap; BENCHMARKS.md).

``--exporter`` lists the PyTorch ONNX exporters the zoo models go through: ``torchscript``
(``torch.onnx.export(..., dynamo=False)``, at opset 17) and ``dynamo`` (the ``torch.export``-based
exporter, at ``--dynamo-opset``, default 20: what ``torch.onnx.export`` writes by default since
torch 2.9). Each exporter's file is a row of its own, with ONNX Runtime running that same file;
every row names its exporter and opset.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cpu import native  # noqa: E402
from ember.backends.cpu.features import cpu_features  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, TorchRunner, max_rel_error, time_ms  # noqa: E402
from ember.zoo.export import DEFAULT_OPSET, EXPORTERS  # noqa: E402

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
    p.add_argument("--no-profile", action="store_true", help="skip the per-op breakdowns")
    p.add_argument("--profile-below", type=float, default=1.2,
                   help="a per-op breakdown of every Ember engine under this many times ONNX Runtime's speed "
                        "(1.2: issue 19's threshold for BENCHMARKS.md)")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated Ember precisions, each a runtime of its own: fp32, bf16, fp16")
    p.add_argument("--peers", default="onnxruntime,torch", help="comma-separated peers: onnxruntime, torch")
    p.add_argument("--repeats", type=int, default=1, help="measure each row this many times (spread reported)")
    p.add_argument("--rounds", type=int, default=0,
                   help="rounds in which the runtimes take turns (default: up to 4; more: finer interleaving)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="idle milliseconds before each runtime's block (0: the blocks follow each other, the "
                        "issue's method); ONNX Runtime's workers spin for tens of ms after its block, on the "
                        "cores the next runtime needs")
    p.add_argument("--accuracy-target", type=float, default=None,
                   help="build the reduced-precision Ember engines to this max relative error against fp32")
    p.add_argument("--accuracy-on-random", action="store_true",
                   help="hold --accuracy-target on the build's random inputs, not on the row's own")
    p.add_argument("--without-persistent", action="store_true",
                   help="also an Ember engine of each precision built without the onednn_persistent conv "
                        "tactic (EMBER_ONEDNN_PERSISTENT=0; label ember-<precision>-no-persistent), taking "
                        "turns in the same rounds")
    p.add_argument("--tune-cpu", action="store_true",
                   help="also an Ember engine of each precision built with every layer's tactics timed "
                        "(BuildConfig.tune_cpu: convolutions too, so a layer may leave its chain for a faster "
                        "kernel; label ember-<precision>-tuned), taking turns in the same rounds")
    p.add_argument("--exporter", default="torchscript",
                   help=f"comma-separated PyTorch ONNX exporters, a row each: {', '.join(EXPORTERS)}")
    p.add_argument("--dynamo-opset", type=int, default=20,
                   help="opset of the dynamo exporter's files (20: torch.onnx.export's default)")
    p.add_argument("--out", help="result file (default bench/results/cpu-<date>.json)")
    args = p.parse_args(argv)
    args.exporter = [x.strip() for x in args.exporter.split(",") if x.strip()]
    bad_exporters = [x for x in args.exporter if x not in EXPORTERS]
    if bad_exporters or not args.exporter:
        p.error(f"--exporter {bad_exporters or args.exporter}: choose from {', '.join(EXPORTERS)}")
    if args.dynamo_opset < 18:
        p.error(f"--dynamo-opset {args.dynamo_opset}: the dynamo exporter writes opset 18 or later")
    args.precision = [x.strip() for x in args.precision.split(",") if x.strip()]
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    bad = [x for x in args.precision if x not in ("fp32", "bf16", "fp16")]
    if bad:
        p.error(f"--precision {bad}: this suite measures fp32, bf16 and fp16 engines (INT8: bench/int8.py)")
    if "onnxruntime" not in args.peers:
        p.error("--peers must include onnxruntime: it is the reference of every error and ratio")
    if args.quick:
        args.iterations, args.warmup, args.batches = 3, 1, "1"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def ember_label(precision: str) -> str:
    """The runtime label of an Ember engine of ``precision``: ``ember`` (fp32), ``ember-bf16``."""
    return "ember" if precision == "fp32" else f"ember-{precision}"


def exporter_opset(exporter: str, args: argparse.Namespace) -> int:
    """The opset a row's file is exported at."""
    return args.dynamo_opset if exporter == "dynamo" else DEFAULT_OPSET


def bench_one(name: str, batch: int, args: argparse.Namespace, exporter: str = "torchscript") -> dict[str, Any]:
    """One table row: every runtime's latency on one model, batch and exporter, and each Ember
    engine's error."""
    opset = exporter_opset(exporter, args)
    path = zoo.export_onnx(name, batch=batch, opset=opset, exporter=exporter)
    feeds = zoo.sample_inputs(name, batch)
    spec = zoo.get(name)
    engines, build_s, errors = {}, {}, {}
    load_before = os.getloadavg()
    variants = ([(p, "") for p in args.precision]
                + [(p, "no-persistent") for p in args.precision if args.without_persistent]
                + [(p, "tuned") for p in args.precision if args.tune_cpu])
    for precision, variant in variants:
        t0 = time.perf_counter()
        target = args.accuracy_target if precision != "fp32" else None
        without = variant == "no-persistent"
        label = f"ember-{precision}-{variant}" if variant else ember_label(precision)
        saved = os.environ.get(native.SWITCH_ENV)
        os.environ[native.SWITCH_ENV] = "0" if without else (saved or "1")
        try:
            engines[label] = ember.build(
                str(path), ember.BuildConfig(device="cpu", precision=precision, accuracy_target=target,
                                             tune_cpu=variant == "tuned"),
                accuracy_inputs=feeds if target is not None and not args.accuracy_on_random else None)
        finally:
            if saved is None:
                del os.environ[native.SWITCH_ENV]
            else:
                os.environ[native.SWITCH_ENV] = saved
        build_s[label] = round(time.perf_counter() - t0, 2)
    runners: dict[str, Any] = {label: EmberRunner(engine) for label, engine in engines.items()}
    runners["onnxruntime"] = OrtRunner(path, threads=args.threads)
    if "torch" in args.peers:
        runners["torch"] = TorchRunner(zoo.build_model(name), [i.name for i in spec.inputs], spec.outputs)
    try:
        ref = runners["onnxruntime"](feeds)
        for label in engines:
            ours = runners[label](feeds)
            errors[label] = max(max_rel_error(ours[k], ref[k]) for k in ref)
        repeats, round_ratios = [], {label: [] for label in engines}
        for _ in range(max(1, args.repeats)):
            timed, per_round = _timed_rounds(runners, feeds, args)
            repeats.append({label: common.summarize(times) for label, times in timed.items()})
            for label in engines:  # each round's ORT block against the Ember block beside it
                round_ratios[label] += [o / e for o, e in zip(per_round["onnxruntime"], per_round[label])]
    finally:
        for label in engines:
            runners[label].close()
    latency = _combined(repeats)
    ratios = {label: _spread([r["onnxruntime"]["median"] / r[label]["median"] for r in repeats]) for label in engines}
    # drift between rounds cancels out of a ratio taken within each round: the median of those
    per_round = {label: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}
                 for label, v in round_ratios.items() if v}
    first = next(iter(engines.values()))
    row = {"model": name, "batch": batch, "exporter": exporter, "opset": opset, "build_s": build_s,
           "layers": {k: len(e.plan.layers) for k, e in engines.items()},
           "onnx_nodes": first.plan.build_info.get("source_nodes"), "max_rel_error_vs_ort": errors,
           "precisions": {k: _precisions(e) for k, e in engines.items()}, "latency_ms": latency,
           "x_ort": ratios, "x_ort_per_round": per_round, "load_avg": {"before": load_before, "after": os.getloadavg()},
           "conv_tactics": {k: _conv_tactics(e) for k, e in engines.items()},
           "chain_layouts": {k: {name: c["layout"] for name, c in e.plan.build_info.get("chain_layouts", {}).items()}
                             for k, e in engines.items()}}
    accuracy = {k: e.plan.build_info["accuracy"] for k, e in engines.items() if "accuracy" in e.plan.build_info}
    if accuracy:
        row["accuracy"] = {k: {"target": a["target"], "met": a["met"], "fp32_layers": len(a["fp32_layers"]),
                               "order": a.get("order"), "trials": len(a.get("trials", ())) - 1,
                               "error_before": a["error_before"], "error": a["error"],
                               "on": "random inputs" if args.accuracy_on_random else "the row's inputs"}
                           for k, a in accuracy.items()}
    if args.repeats > 1:
        row["repeats"] = repeats
    profiled = [k for k in engines if ratios[k]["median"] < args.profile_below]
    if not args.no_profile and profiled:
        row["breakdown"] = {k: breakdown(engines[k], path, feeds, args.threads) for k in profiled}
    _print_row(row)
    return row


def _conv_tactics(engine: Any) -> dict[str, int]:
    """How many convolution layers run each tactic (``{"onednn_persistent": 52}``)."""
    counts: dict[str, int] = {}
    for layer in engine.plan.layers:
        if layer.kind in ("Conv", "FusedConv", "QConv"):
            counts[layer.tactic] = counts.get(layer.tactic, 0) + 1
    return counts


def _precisions(engine: Any) -> dict[str, int]:
    """How many layers compute in each precision (``{"bf16": 52, "fp32": 2}``)."""
    counts: dict[str, int] = {}
    for layer in engine.plan.layers:
        counts[str(layer.precision)] = counts.get(str(layer.precision), 0) + 1
    return counts


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1]}


def _combined(repeats: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each runtime's summary over the repeats: the median of the medians, their min and max."""
    out = {}
    for label in repeats[0]:
        medians = sorted(r[label]["median"] for r in repeats)
        out[label] = {**repeats[len(repeats) // 2][label], "median": medians[len(medians) // 2],
                      "spread_min": medians[0], "spread_max": medians[-1], "repeats": len(medians)}
    return out


def _timed_rounds(runners: dict[str, Any], feeds: dict,
                  args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each runtime's iterations, split in rounds that take turns, so a change of background load
    during the run weighs on every runtime alike; each block starts with its own warm-up run.
    Returns every run's ms per runtime, and each round's median per runtime."""
    rounds = args.rounds or max(1, min(4, args.iterations // 3))
    times: dict[str, list[float]] = {label: [] for label in runners}
    per_round: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(rounds):
        count = args.iterations // rounds + (1 if r < args.iterations % rounds else 0)
        for label, runner in runners.items():
            warmup = args.warmup if r == 0 else 1
            if args.gap_ms > 0:
                time.sleep(args.gap_ms / 1e3)
            block = time_ms(runner, feeds, warmup, count, args.max_seconds / rounds)
            times[label] += block
            if block:
                per_round[label].append(statistics.median(block))
    return times, per_round


def breakdown(engine: Any, path: Path, feeds: dict, threads: int) -> dict[str, Any]:
    """Per-op-kind ms of Ember and ORT, and Ember's most expensive layers."""
    by_kind, top = common.ember_layer_profile(engine, feeds)
    return {"ember_ms_by_kind": _rounded(by_kind), "ort_ms_by_op": _rounded(common.ort_op_times(path, feeds, threads)),
            "ember_top_layers": top}


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}


def _print_row(row: dict[str, Any]) -> None:
    lat = row["latency_ms"]
    parts = []
    for label, v in lat.items():
        spread = f" [{v['spread_min']:.2f}-{v['spread_max']:.2f}]" if v.get("repeats", 1) > 1 else ""
        if label in row["x_ort"]:
            x = row["x_ort"][label]
            ratio = f"{x['median']:.2f}x ORT" + (f" [{x['min']:.2f}-{x['max']:.2f}]" if v.get("repeats", 1) > 1 else "")
            rounds = row.get("x_ort_per_round", {}).get(label)
            if rounds and rounds["rounds"] > 1:
                ratio += f", per round {rounds['median']:.2f}x of {rounds['rounds']}"
            spread += f" ({ratio}, err {row['max_rel_error_vs_ort'][label]:.1e})"
        parts.append(f"{label} {v['median']:.2f} ms{spread}")
    load = row["load_avg"]["before"][0], row["load_avg"]["after"][0]
    head = f"{row['model']:>13} b{row['batch']:<3} {row.get('exporter', 'torchscript'):<11} "
    print(head + "  ".join(parts) + f"  (load {load[0]:.1f}-{load[1]:.1f})", flush=True)


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: header line with the machine, then one row per model and batch."""
    m = result["machine"]
    v = m["versions"]
    repeats = result.get("repeats", 1)
    head = (f"{m['date']} · {m['cpu']} ({', '.join(m.get('isa', [])) or 'no AMX/AVX-512'}) · {m['cores']} cores, "
            f"{m['threads']} threads per runtime · Ember {v['ember']}, torch {v['torch']}, ONNX Runtime "
            f"{v['onnxruntime']} (fp32) · median of {result['iterations']} runs after {result['warmup']} warm-up"
            + (f", median of {repeats} repeats [min-max of their medians; Ember × ORT: of the repeats' ratios]"
               if repeats > 1 else "")
            + "; × = peer median / Ember median (>1: Ember is faster)\n")
    rows = []
    for r in result["rows"]:
        lat = r["latency_ms"]
        for label, err in r["max_rel_error_vs_ort"].items():
            mine = lat[label]["median"]
            spread = (f" [{lat[label]['spread_min']:.2f}-{lat[label]['spread_max']:.2f}]"
                      if lat[label].get("repeats", 1) > 1 else "")
            torch_ms = lat["torch"]["median"] if "torch" in lat else None
            rows.append([r["model"], r["batch"], f"{r.get('exporter', 'torchscript')} (opset {r.get('opset', '-')})",
                         label.removeprefix("ember-") if label != "ember" else "fp32",
                         f"{mine:.2f}{spread}", f"{lat['onnxruntime']['median']:.2f}",
                         f"{torch_ms:.2f}" if torch_ms else "-",
                         _ratio_text(r["x_ort"][label]),
                         f"{torch_ms / mine:.2f}x" if torch_ms else "-",
                         f"{r['batch'] * 1000 / mine:.1f}", f"{err:.1e}"])
    cols = ["model", "batch", "exporter", "Ember precision", "Ember ms", "ORT fp32 ms", "torch eager ms", "Ember × ORT",
            "Ember × eager", "Ember items/s", "max rel err vs ORT fp32"]
    return head + "\n" + common.markdown_table(cols, rows)


def breakdown_markdown(result: dict[str, Any], top: int = 4) -> str:
    """One line per engine that got a per-op breakdown: its costliest layer kinds beside ONNX
    Runtime's costliest ops, each by its own profiler (both profilers slow their runtime down, so
    compare shares, not sums, with the timed table)."""
    def share(d: dict[str, float]) -> str:
        total = sum(d.values()) or 1.0
        return ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in list(d.items())[:top])

    lines = []
    for r in result["rows"]:
        for label, b in r.get("breakdown", {}).items():
            ours, theirs = b["ember_ms_by_kind"], b["ort_ms_by_op"]
            lines.append(f"- {r['model']} b{r['batch']} {r.get('exporter', 'torchscript')} ({label}, "
                         f"{_ratio_text(r['x_ort'][label])} ORT): Ember {sum(ours.values()):.2f} ms: {share(ours)}; "
                         f"ORT {sum(theirs.values()):.2f} ms: {share(theirs)}")
    return "\n".join(lines)


def _ratio_text(x: dict[str, float]) -> str:
    if x["min"] == x["max"]:
        return f"{x['median']:.2f}x"
    return f"{x['median']:.2f}x [{x['min']:.2f}-{x['max']:.2f}]"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m not in zoo.names()]
    if unknown:
        print(f"unknown models {unknown}; choose from {', '.join(zoo.names())}", file=sys.stderr)
        return 2
    rows = [bench_one(name, batch, args, exporter)
            for name in args.models for batch in args.batches for exporter in args.exporter]
    machine = {**common.machine_info(args.threads), "isa": cpu_features().reported(),
               "onednn_extension": native.version_of(native.extension()) or native.unavailable_reason()}
    result = {"suite": "cpu", "machine": machine, "iterations": args.iterations, "warmup": args.warmup,
              "precisions": args.precision, "exporters": args.exporter, "repeats": args.repeats, "gap_ms": args.gap_ms,
              "rounds": args.rounds, "rows": rows}
    path = common.write_result("cpu", result, args.out)
    print(f"\nwrote {path}\n")
    print(markdown(result))
    if any("breakdown" in r for r in rows):
        print(f"\nPer-op breakdowns of the rows under {args.profile_below}x ORT (ms a run by each runtime's profiler):")
        print(breakdown_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
