"""Ember's Triton implicit-GEMM conv writing into a Concat slice vs cuDNN + the copy into it, on
GoogLeNet's Inception KxK convolutions; then GoogLeNet engines built with and without the Triton
conv tactics: Concat inputs written in place, the tactics chosen for the branch convs, and the
engine's GPU compute time.

    python bench/triton_conv.py                       # both parts, batch 1 and 128, fp16
    python bench/triton_conv.py --batches 1 --no-engines
    python bench/triton_conv.py --out bench/results/triton-conv-<date>.json

Part 1 (per layer): the slice is that branch's channels of the Inception block's channels-last
concat buffer. ``cudnn`` = ``torch.cudnn_convolution_relu`` (Ember's ``cudnn_fused`` tactic;
cuDNN benchmark mode) alone, ``+copy`` = it plus the copy into the slice (what the engine runs
when the conv cannot write into the slice), ``triton`` = Ember's kernel writing the slice
itself, best of its tile configs (all are listed in the JSON). Times are per call, from calls
captured in a CUDA graph (the tactic timer's ``graph_measure``), in ms.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Inception blocks of ember/zoo/googlenet.py: (in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), size
SPATIAL = {"inception_3a": 28, "inception_3b": 28, "inception_4a": 14, "inception_4b": 14,
           "inception_4c": 14, "inception_4d": 14, "inception_4e": 14, "inception_5a": 7, "inception_5b": 7}


def layer_table(batches) -> list[dict]:
    import torch

    from ember.backends.cuda.device import conv_scope
    from ember.backends.cuda.libs import triton_conv as T
    from ember.backends.cuda.tuning import graph_measure
    from ember.ops.attrs import Activation
    from ember.zoo.googlenet import _INCEPTIONS  # the zoo's block table (read only)

    measure = graph_measure(warmup=3, reps=20, rounds=5)
    rows = []
    dev = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    for block, (_cin_block, c1, c3r, c3, c5r, c5, cp) in _INCEPTIONS.items():
        s = SPATIAL[block]
        ctot = c1 + c3 + c5 + cp
        for branch, cin, cout, k, start in (("3x3", c3r, c3, 3, c1), ("5x5", c5r, c5, 5, c1 + c3)):
            for batch in batches:
                x = torch.randn(batch, cin, s, s, generator=gen).to(dev, torch.float16).contiguous(
                    memory_format=torch.channels_last)
                w = (torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5).to(dev)
                b = (torch.randn(cout, generator=gen) * 0.1).to(dev)
                w16 = w.half().contiguous(memory_format=torch.channels_last)
                b16 = b.half()
                buf = torch.empty(batch, ctot, s, s, dtype=torch.float16, device=dev,
                                  memory_format=torch.channels_last)
                view = buf.narrow(1, start, cout)
                pad = k // 2

                # defaults bind this iteration's tensors (measured here, before the loop moves on)
                def cudnn(x=x, w16=w16, b16=b16, pad=pad):
                    with conv_scope("fp16"):
                        return torch.cudnn_convolution_relu(x, w16, b16, [1, 1], [pad, pad], [1, 1], 1)

                def cudnn_copy(view=view, cudnn=cudnn):
                    view.copy_(cudnn())

                ref = cudnn().float()
                t_cudnn = measure(cudnn)
                t_copy = measure(cudnn_copy)
                packed = T.pack_weight(w, torch.float16)
                triton_ms = {}
                max_err = 0.0
                for cfg in T.CONFIGS:
                    def triton_into(cfg=cfg, x=x, packed=packed, b=b, pad=pad, view=view):
                        T.conv2d(x, packed, b, None, stride=(1, 1), pads=(pad,) * 4, dilation=(1, 1),
                                 act=Activation.RELU, precision="fp16", config=cfg, out=view)

                    triton_into()
                    torch.cuda.synchronize()
                    max_err = max(max_err, float((view.float() - ref).abs().max() / ref.abs().max()))
                    triton_ms[cfg.name] = measure(triton_into)
                best = min(triton_ms, key=triton_ms.get)
                rows.append({"layer": f"{block}/{branch}", "batch": batch, "cin": cin, "cout": cout, "k": k,
                             "hw": s, "slice": f"{start}:{start + cout} of {ctot}", "cudnn_ms": t_cudnn,
                             "cudnn_plus_copy_ms": t_copy, "triton_ms": triton_ms, "triton_best": best,
                             "triton_best_ms": triton_ms[best], "max_rel_err_vs_cudnn": max_err})
                r = rows[-1]
                print(f"{r['layer']:22s} b{batch:<4d} {cin:4d}->{cout:<4d} {k}x{k} {s:2d}x{s:<2d} "
                      f"cudnn {t_cudnn:8.4f}  +copy {t_copy:8.4f}  triton {r['triton_best_ms']:8.4f} "
                      f"({best:11s})  {t_copy / r['triton_best_ms']:5.2f}x  err {max_err:.1e}", flush=True)
    return rows


def engines(batches) -> list[dict]:
    import numpy as np

    import ember
    from ember import zoo
    from ember.backends.cuda import CUDABackend
    from ember.backends.cuda.kernels.conv_triton import TACTIC_PREFIX
    from ember.runtime.concat_exec import plan_summary, report_line
    from ember.tools.bench import BenchOptions, measure_ember

    class WithoutTritonConv(CUDABackend):
        def tactics(self, node, graph):
            return [t for t in super().tactics(node, graph) if not t.startswith(TACTIC_PREFIX)]

    path = zoo.export_onnx("googlenet", dynamic_batch=True)
    out = []
    for batch in batches:
        feeds = zoo.sample_inputs("googlenet", batch=batch)
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "timing.json")
            results = {}
            for label, backend in (("with_triton_conv", None), ("without_triton_conv", WithoutTritonConv())):
                cfg = ember.BuildConfig(device="cuda", precision="fp16", shapes={"input": (batch, 3, 224, 224)},
                                        timing_cache=cache)
                engine = ember.build(str(path), cfg, progress=False, backend=backend)
                summary = plan_summary(engine.plan)
                timing, outs = measure_ember(engine, feeds, BenchOptions("googlenet", iterations=100, warmup=10))
                concats = engine.plan.records.concat.concats
                producers = {s.tensor for e in concats.values() for s in e.slices if s.in_place}
                chosen = {lay.outputs[0]: {"tactic": lay.tactic, "timings": dict(lay.timings)}
                          for lay in engine.plan.layers if lay.outputs and lay.outputs[0] in producers}
                results[label] = {"concat": summary, "line": report_line(summary),
                                  "compute_ms": timing["compute_ms"]["median"], "producers": chosen,
                                  "outputs": {k: np.asarray(v) for k, v in outs.items()}}
                tactics = {}
                for c in chosen.values():
                    tactics[c["tactic"]] = tactics.get(c["tactic"], 0) + 1
                print(f"googlenet b{batch} fp16 {label:20s}: {results[label]['line']}; compute "
                      f"{results[label]['compute_ms']:.3f} ms; producer tactics {tactics}", flush=True)
            a, b = (results[k]["outputs"] for k in ("with_triton_conv", "without_triton_conv"))
            err = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)) for k in a)
            speedup = results["without_triton_conv"]["compute_ms"] / results["with_triton_conv"]["compute_ms"]
            print(f"googlenet b{batch}: max relative difference between the two engines {err:.1e}; "
                  f"speed-up {speedup:.3f}x")
            for r in results.values():
                r.pop("outputs")
            out.append({"batch": batch, "max_rel_diff": err, **results})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    p.add_argument("--no-engines", action="store_true", help="only the per-layer table")
    p.add_argument("--no-layers", action="store_true", help="only the GoogLeNet engines")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/triton_conv.py needs a CUDA GPU")
    result = {"suite": "triton_conv", "date": dt.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.no_layers:
        result["layers"] = layer_table(args.batches)
    if not args.no_engines:
        result["engines"] = engines(args.batches)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
