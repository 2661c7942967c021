"""Probe: what running ONNX Runtime in the same process costs Ember, run by run (issue 19).

``bench/cpu.py`` times the runtimes in blocks that take turns in one process. This probe times
Ember's MobileNetV2 (batch 1, fp32, 2 threads) alone, then in blocks of 5 right after blocks of 5
ONNX Runtime runs, and prints Ember's median per position in its block (1st run after ORT's block,
2nd, ...) and the minor page faults per run. Options:

    python bench/probes/taking_turns.py              # ORT as bench/cpu.py makes it (its workers spin)
    python bench/probes/taking_turns.py --no-spin    # session.intra_op.allow_spinning = 0
    python bench/probes/taking_turns.py --gap-ms 50  # idle 50 ms between the blocks
    python bench/probes/taking_turns.py --model resnet-50 --gap-ms 100 --profile
                                                     # + the sum of ``ember profile``'s layer medians

``--profile`` answers the twenty-sixth session's question: on the AMX Xeon, ResNet-50 batch 1 ran
57.9 ms in ``bench/cpu.py``'s turns while its profiled layers summed to 48.2 ms (on the AVX2 EPYC
the two agree). Alone against in turns says whether ONNX Runtime's workers cost it; alone against
the profile's sum, whether the time goes between the layers.

Fourteenth session (2-core Xeon, after the chain buffer pool; BENCHMARKS.md): Ember alone 3.98 ms
(0 faults a run); right after ORT's blocks 9.2 ms (13.4 ms for the first run of a block); with
ORT's spinning off 4.64 ms (ORT itself 3.58 -> 4.71 ms alone); with a 50-1000 ms gap 4.5-4.7 ms,
the first run of a block 6.4 ms.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402


def block(f: Callable[[], Any], n: int) -> tuple[list[float], float]:
    """n timed calls of f (seconds each) and the minor page faults per call."""
    times: list[float] = []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return times, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet-v2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-spin", action="store_true", help="ONNX Runtime's workers do not spin")
    p.add_argument("--gap-ms", type=float, default=0.0, help="idle time between the blocks")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--profile", action="store_true", help="also the sum of ember profile's per-layer medians")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = zoo.export_onnx(args.model, batch=args.batch)
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"), progress=False)
    feeds = zoo.sample_inputs(args.model, args.batch)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    if args.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ms = 1e3
    with engine.create_context() as ctx:
        def ours() -> Any:
            return ctx.infer(feeds)

        def theirs() -> Any:
            return sess.run(None, feeds)

        for _ in range(5):
            ours()
            theirs()
        alone, faults = block(ours, 40)
        print(f"Ember alone {statistics.median(alone) * ms:.3f} ms, {faults:.0f} minor faults a run")
        print(f"ONNX Runtime alone {statistics.median(block(theirs, 40)[0]) * ms:.3f} ms")
        if args.profile:
            from ember.tools.profile import profile_engine

            layers, _ = profile_engine(engine, dict(feeds), iterations=20)
            print(f"Ember profiled: its {len(layers)} layers' medians sum to "
                  f"{sum(lay.median for lay in layers):.3f} ms (alone, a whole run: above)")
        ember_times: list[float] = []
        ort_times: list[float] = []
        fault_runs: list[float] = []
        for _ in range(args.rounds):
            ort_times += block(theirs, 5)[0]
            time.sleep(args.gap_ms / 1e3)
            t, f = block(ours, 5)
            ember_times += t
            fault_runs.append(f)
            time.sleep(args.gap_ms / 1e3)
        by_position = [round(statistics.median(ember_times[i::5]) * ms, 2) for i in range(5)]
        print(f"taking turns: Ember {statistics.median(ember_times) * ms:.3f} ms (median by position in its "
              f"block: {by_position}), {statistics.mean(fault_runs):.0f} faults a run; "
              f"ONNX Runtime {statistics.median(ort_times) * ms:.3f} ms")


if __name__ == "__main__":
    main()
