"""Probe: the spread of single runs, Ember against ONNX Runtime, taking turns in blocks after
100 ms gaps as ``bench/cpu.py`` does (issue 19): each runtime's median per position in its block
and the percentiles of all runs but each block's first, with ORT / Ember at each percentile.

    .venv/bin/python bench/probes/cpu_run_spread.py mobilenet-v2 1 [--exporter dynamo] [--rounds 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import onnxruntime as ort  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("--exporter", default="torchscript")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--block", type=int, default=10)
    args = ap.parse_args()
    path = zoo.export_onnx(args.model, batch=args.batch, opset=17 if args.exporter == "torchscript" else 20,
                           exporter=args.exporter)
    feeds = zoo.sample_inputs(args.model, args.batch)
    ctx = ember.build(str(path), ember.BuildConfig(device="cpu", precision="fp32")).create_context()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    runners: dict[str, Callable[[], object]] = {"ember": lambda: ctx.infer(feeds),
                                                "ort": lambda: session.run(None, feeds)}
    times = {k: [[] for _ in range(args.block)] for k in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            time.sleep(0.1)
            for i in range(args.block):
                t0 = time.perf_counter()
                fn()
                times[name][i].append((time.perf_counter() - t0) * 1e3)
    print("position in block: Ember median ms, ORT median ms")
    for i in range(args.block):
        print(f"{i:3d} {statistics.median(times['ember'][i]):8.3f} {statistics.median(times['ort'][i]):8.3f}")
    runs = {k: sorted(x for pos in v[1:] for x in pos) for k, v in times.items()}
    for p in (0.1, 0.25, 0.5, 0.75, 0.9):
        e, o = (runs[k][int(p * (len(runs[k]) - 1))] for k in ("ember", "ort"))
        print(f"p{int(p * 100):02d}: Ember {e:.3f} ms, ORT {o:.3f} ms, ORT / Ember {o / e:.3f}")
    ctx.close()


if __name__ == "__main__":
    main()
