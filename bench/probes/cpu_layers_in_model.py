"""Probe: each convolution's time inside the whole model, Ember's profile against ONNX Runtime's
(issue 19), conv by conv in graph order, 2 threads; Ember fp32, or bf16 with ``--precision bf16``
(ONNX Runtime fp32 either way: the issue's reference).

    .venv/bin/python bench/probes/cpu_layers_in_model.py resnet-50 1 [--runs 30] [--precision bf16]

Ember's times come from ``ember profile``'s clock inside the chain (``CPUProgram.timed_run``), ONNX
Runtime's from its own profiler (``enable_profiling``), which slows ONNX Runtime's run by about 15%
(BENCHMARKS.md, eighteenth session): read the per-layer ratios for where each runtime spends its
time, and the whole-run A/B (``bench/cpu.py``) for which is faster. Each runtime's nodes are
matched by order; where the two order a block's branches differently (ResNet's downsample and
conv3), a pair of neighbouring rows swaps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import onnxruntime as ort  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.profile import profile_engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--exporter", default="torchscript")
    ap.add_argument("--precision", default="fp32", help="Ember's build precision (fp32, bf16, fp16)")
    ap.add_argument("--out", help="also write every layer's and node's median ms here (JSON)")
    args = ap.parse_args()
    path = zoo.export_onnx(args.model, batch=args.batch, opset=17 if args.exporter == "torchscript" else 20,
                           exporter=args.exporter)
    feeds = zoo.sample_inputs(args.model, args.batch)
    engine = ember.build(str(path), ember.BuildConfig(device="cpu", precision=args.precision))
    layers, _ = profile_engine(engine, dict(feeds), iterations=args.runs, warmup=3)
    ours = [(lay.display_name, lay.op, lay.median) for lay in layers]
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(args.runs + 3):
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    per: dict[str, list[float]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        key = e["name"][: -len("_kernel_time")]
        if key not in per:
            order.append((key, e["args"]["op_name"]))
        per[key].append(e["dur"] / 1e3)
    theirs = [(k, op, statistics.median(per[k][3:])) for k, op in order]
    print(f"whole profiled run: Ember {sum(t for *_, t in ours):.2f} ms, "
          f"ONNX Runtime {sum(t for *_, t in theirs):.2f} ms")
    convs_e = [x for x in ours if "Conv" in x[1]]
    convs_o = [x for x in theirs if "Conv" in x[1]]
    print(f"{len(convs_e)} Ember conv layers, {len(convs_o)} ONNX Runtime conv nodes; ms Ember, ms ORT, ORT / Ember")
    for a, b in zip(convs_e, convs_o):
        print(f"{a[2]:7.3f} {b[2]:7.3f} {b[2] / max(a[2], 1e-6):6.2f}  {a[0][:58]:58s} | {b[0][:40]}")
    print("Ember, other layers:", [(x[0][:30], x[1], round(x[2], 3)) for x in ours if "Conv" not in x[1]])
    print("ORT, other nodes:", sorted([(x[1], round(x[2], 3)) for x in theirs if "Conv" not in x[1]],
                                      key=lambda t: -t[1])[:12])
    if args.out:
        Path(args.out).write_text(json.dumps({
            "model": args.model, "batch": args.batch, "exporter": args.exporter, "runs": args.runs,
            "precision": args.precision,
            "ember_ms": {"total": sum(t for *_, t in ours), "layers": [[n, op, round(t, 4)] for n, op, t in ours]},
            "onnxruntime_ms": {"total": sum(t for *_, t in theirs),
                               "nodes": [[n, op, round(t, 4)] for n, op, t in theirs]}}, indent=1))


if __name__ == "__main__":
    main()
