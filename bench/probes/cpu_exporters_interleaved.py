"""Probe: one zoo model's files from both PyTorch exporters, Ember and ONNX Runtime on each, the four
runners taking turns in one process (issue 19). ``bench/cpu.py`` times one row after another, so two
rows of one model see different windows of a shared machine; here every round has all four, and the
per-round ratios compare like with like.

    .venv/bin/python bench/probes/cpu_exporters_interleaved.py mobilenet-v2 1 [--rounds 12] [--runs 30]

Twentieth session, MobileNetV2 b1 on the 2-core EPYC: ORT / Ember 1.161× (TorchScript file) and
1.149× (dynamo file), ORT equally fast on both files (0.998×), where the sequential long run had
put the dynamo row at 0.92×.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cpu.features import cpu_features  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner  # noqa: E402

EXPORTS = (("torchscript", 17), ("dynamo", 20))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--runs", type=int, default=30, help="timed runs a runner makes in each round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    feeds = zoo.sample_inputs(args.model, args.batch)
    runners = {}
    for exporter, opset in EXPORTS:
        path = zoo.export_onnx(args.model, batch=args.batch, opset=opset, exporter=exporter)
        runners[f"ort-{exporter}"] = OrtRunner(path, threads=args.threads)
        runners[f"ember-{exporter}"] = EmberRunner(
            ember.build(str(path), ember.BuildConfig(device="cpu"), progress=False))
    ms: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            time.sleep(0.1)  # as bench/cpu.py: ONNX Runtime's workers spin after its block
            run(feeds)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                run(feeds)
                times.append(time.perf_counter() - t0)
            ms[name].append(statistics.median(times) * 1e3)
    features = cpu_features()
    print(f"{args.model} b{args.batch}, {args.threads} threads, {features.name} "
          f"({' '.join(features.reported())}); median ms of {args.rounds} rounds:")
    print("  " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in ms.items()))
    for exporter, _ in EXPORTS:
        per = [o / e for o, e in zip(ms[f"ort-{exporter}"], ms[f"ember-{exporter}"])]
        print(f"  {exporter}: ORT / Ember per round {statistics.median(per):.3f} [{min(per):.3f}-{max(per):.3f}]")
    files = [a / b for a, b in zip(ms["ort-torchscript"], ms["ort-dynamo"])]
    print(f"  ORT, TorchScript file / dynamo file per round {statistics.median(files):.3f}")


if __name__ == "__main__":
    main()
