"""Probe: where BERT-base's time goes, Ember per layer against torch.compile per kernel.

    python bench/probes/bert_kernels.py [--batch 128] [--model bert-base]

Both as torch.profiler's CUDA kernel times summed by kernel name: Ember replaying its CUDA
graph, torch.compile (default mode) running the zoo's module in fp16. Also the tactic timings the
builder recorded for the attention, GEMM and LayerNorm layers. Output: $OUT/bert_kernels.json and two tables.
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools import bench_peers  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--model", default="bert-base")
ap.add_argument("--no-peer", action="store_true", help="profile Ember only")
ap.add_argument("--precision", default="fp16", help="fp16, or int8 / fp8 (calibrated with minmax on one batch)")
args = ap.parse_args()

path = zoo.export_onnx(args.model, batch=args.batch)
feeds = zoo.sample_inputs(args.model, batch=args.batch)
if args.precision in ("int8", "fp8"):
    engine = ember.build(str(path), ember.BuildConfig(device="cuda", precision=args.precision, calibrator="minmax"),
                         calibration_data=[zoo.sample_inputs(args.model, args.batch, seed=1000)], progress=False)
else:
    engine = ember.build(str(path), ember.BuildConfig(device="cuda", precision=args.precision, tactic_tuning=True),
                         progress=False)
from ember.backends.tensors import numpy_to_torch  # noqa: E402

ctx = engine.create_context()
executor = ctx.executor  # the context's CudaExecutor: its own input buffers, CUDA graph replay
executor.infer(feeds)
bufs = {}
for name, v in feeds.items():
    bufs[name] = executor.input_buffer(feeds, name)
    bufs[name].copy_(numpy_to_torch(v, torch.device("cpu")))
for _ in range(5):
    executor.run_device(bufs)
torch.cuda.synchronize()


def kernel_table(label, fn, reps=10):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kern = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kern[e.name[:100]]
            k[0] += e.device_time_total / 1000 / reps
            k[1] += 1
    total = sum(v[0] for v in kern.values())
    print(f"\n{label}: kernels sum {total:.3f} ms per forward")
    for k, (ms, n) in sorted(kern.items(), key=lambda kv: -kv[1][0])[:30]:
        print(f"  {ms:8.3f} ms {n // reps:4d}x {100 * ms / total:5.1f}%  {k}")
    return kern, total


ember_kern, ember_total = kernel_table("Ember (CUDA graph replay)", lambda: executor.run_device(bufs))


def wall_ms(fn, reps=50):
    """Per-forward time of back-to-back runs by CUDA events: the kernels plus the gaps between them."""
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


ember_wall = wall_ms(lambda: executor.run_device(bufs))
print(f"Ember: {ember_wall:.3f} ms a forward by events, kernels {ember_total:.3f} ms")
by_kind = {}
for lay in engine.plan.layers:
    if lay.timings and lay.kind in ("FusedAttention", "FusedGemm", "LayerNormalization", "SkipLayerNormalization",
                                    "QGemm"):
        by_kind.setdefault(lay.kind + " " + lay.name.split("/")[-1], {k: round(v, 4) for k, v in lay.timings.items()})
print(json.dumps(by_kind, indent=0)[:3000])
if args.no_peer:
    json.dump({"ember": dict(ember_kern), "ember_total_ms": ember_total, "ember_wall_ms": ember_wall,
               "tactic_timings": by_kind},
              open(os.path.join(os.environ.get("OUT", "/tmp"), f"bert_kernels_{args.precision}.json"), "w"), indent=1)
    sys.exit(0)
module = bench_peers._module(args.model, None, torch.device("cuda"), torch.float16, False)
inputs = bench_peers._inputs(feeds, torch.device("cuda"), torch.float16)
compiled = torch.compile(module, dynamic=False)
with torch.inference_mode():
    for _ in range(3):
        compiled(*inputs)
    torch.cuda.synchronize()
    kern, tc_total = kernel_table("torch.compile", lambda: compiled(*inputs))
    tc_wall = wall_ms(lambda: compiled(*inputs))
    print(f"torch.compile: {tc_wall:.3f} ms a forward by events, kernels {tc_total:.3f} ms")
out = {"ember": dict(ember_kern), "ember_total_ms": ember_total, "ember_wall_ms": ember_wall,
       "torch_compile_wall_ms": tc_wall, "tactic_timings": by_kind,
       "torch_compile": {k: v for k, v in kern.items()}, "torch_compile_total_ms": tc_total}
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "bert_kernels.json"), "w"), indent=1)
