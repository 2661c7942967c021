"""Probe (issue 20): where a quantized CUDA engine's time goes, layer by layer, beside fp16.

Builds one zoo model at one batch in fp16 and in each of ``--quantized`` (calibrated with minmax on
one batch: the calibrator does not change speed), times each engine whole (captured CUDA graph,
wall clock, median) and per layer (``ember.tools.profile.profile_engine``: CUDA events around each
layer, graphs off, one stream), and prints, per engine, the time by (op, tactic family), the layers
that are slowest, and the sum against the graph-timed whole (the difference is launch gaps).

    python bench/probes/engine_layers.py --model resnet-50 --batch 256 --quantized int8 fp8 --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.profile import profile_engine  # noqa: E402
from ember.tools.runners import EmberRunner, time_ms  # noqa: E402


def _prec(p: object) -> str:
    return str(getattr(p, "value", p))


def _family(tactic: str) -> str:
    return re.sub(r"_\d+x\d+x\d+.*$", "", tactic)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet-50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--quantized", nargs="*", default=["int8"])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--out")
    args = p.parse_args()
    if args.out:  # every tactic the timer refused, and why
        Path(args.out).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(args.out) / f"refused-{args.model}-b{args.batch}.log", mode="w")
        tuning_log = logging.getLogger("ember.backends.cuda.tuning")
        tuning_log.setLevel(logging.DEBUG)
        tuning_log.addHandler(handler)
    path = zoo.export_onnx(args.model, batch=args.batch)
    calib = [zoo.sample_inputs(args.model, args.batch, seed=1000)]
    feed = zoo.sample_inputs(args.model, args.batch, seed=0)
    report: dict = {"model": args.model, "batch": args.batch, "engines": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ["fp16", *args.quantized]:
            t0 = time.perf_counter()
            cfg = ember.BuildConfig(device="cuda", precision=prec, calibrator="minmax",
                                    timing_cache=str(Path(tmp) / f"timing-{prec}.json"))
            engine = ember.build(path, cfg, calibration_data=calib if prec != "fp16" else None, progress=False)
            build_s = time.perf_counter() - t0
            runner = EmberRunner(engine)
            whole = statistics.median(time_ms(runner, feed, warmup=5, iterations=args.iterations))
            runner.close()
            layers, _ = profile_engine(engine, feed, iterations=args.iterations, warmup=2)
            by_family: dict[tuple[str, str, str], list[float]] = defaultdict(list)
            for lay in layers:
                by_family[(lay.op, _family(lay.tactic), _prec(lay.precision))].append(lay.median)
            total = sum(lay.median for lay in layers)
            print(f"\n== {args.model} b{args.batch} {prec}: graph-timed {whole:.3f} ms, layers sum {total:.3f} ms, "
                  f"{len(layers)} layers, build {build_s:.1f} s", flush=True)
            for (op, fam, pr), ts in sorted(by_family.items(), key=lambda kv: -sum(kv[1])):
                print(f"  {sum(ts):8.3f} ms {len(ts):4d}x  {op:<22} {fam:<34} {pr}")
            print("  slowest layers:")
            for lay in sorted(layers, key=lambda la: -la.median)[:12]:
                pr = _prec(lay.precision)
                print(f"  {lay.median:8.3f} ms  {lay.op:<14} {lay.tactic:<30} {pr:<5} {lay.name[:50]}")
            timings = {lay.name: dict(lay.timings) for lay in engine.plan.layers}  # the tactic timer's, ms
            print("  the tactic timer's candidates for the slowest layers (ms):")
            for lay in sorted(layers, key=lambda la: -la.median)[:4]:
                cands = ", ".join(f"{k} {v:.3f}" for k, v in sorted(timings.get(lay.name, {}).items(),
                                                                   key=lambda kv: kv[1]))
                print(f"    {lay.name[:40]}: {cands or 'not timed'}")
            report["engines"][prec] = {
                "graph_ms": whole, "layers_sum_ms": total, "build_s": build_s,
                "layers": [{"name": la.name, "op": la.op, "tactic": la.tactic, "precision": _prec(la.precision),
                            "ms": la.median, "timings": timings.get(la.name, {})} for la in layers]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"engine-layers-{args.model}-b{args.batch}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
