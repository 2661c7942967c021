"""Probe: how far bf16 can go on this CPU, per model (issue 19's "bf16 >= 2.5x ONNX Runtime fp32").

    python bench/probes/cpu_bf16_ceiling.py mobilenet-v2 [--batch 8] [--threads 2] [--rounds 4] [--runs 10]
        [--verbose-runs 3] [--out FILE]

Ember's bf16 engine is measured against what else runs this model in bf16 on the same CPU, all taking turns
in one process, with the same threads: ONNX Runtime fp32 (the issue's reference), PyTorch eager in fp32 and
in bf16 with channels-last tensors (PyTorch's own oneDNN, a newer release than the ``onednn-cpu-gomp`` 3.2
that Ember's extension links), and Ember's bf16 engine built without the extension
(``EMBER_ONEDNN_PERSISTENT=0``: PyTorch's oneDNN entry points). If PyTorch's newer oneDNN is much faster in
bf16 than Ember's extension, the lever is the library; if no runtime gets near 2.5x, the target is beyond
this CPU at these threads.

Then each bf16 runtime runs ``--verbose-runs`` times in a child process with ``ONEDNN_VERBOSE=profile_exec``,
and every oneDNN primitive it executed is summed by kind, implementation and convolution class (depthwise,
1x1, other): which kernels each library picks for the same layers, and how long they take per run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RUNTIMES = ("onnxruntime", "torch-fp32", "torch-bf16", "ember-bf16", "ember-bf16-no-persistent", "ember-fp32")
BF16 = ("torch-bf16", "ember-bf16", "ember-bf16-no-persistent")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--runs", type=int, default=10, help="timed runs per runtime per round")
    p.add_argument("--verbose-runs", type=int, default=3, help="runs under ONEDNN_VERBOSE (0: skip that part)")
    p.add_argument("--only", default="", help="comma-separated runtimes (default: all)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="")
    return p.parse_args()


def make_runner(label: str, model: str, batch: int, threads: int) -> Callable[[], Any]:
    """A no-argument callable that runs one inference of ``label`` on the zoo model's sample inputs."""
    from ember import zoo

    feeds = zoo.sample_inputs(model, batch)
    if label == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(zoo.export_onnx(model, batch=batch)), opts, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feeds)
    if label.startswith("torch-"):
        net = zoo.build_model(model).eval()
        dtype = torch.bfloat16 if label == "torch-bf16" else torch.float32
        args = [torch.from_numpy(np.asarray(v)) for v in feeds.values()]
        cl = all(a.dim() == 4 for a in args)
        net = net.to(dtype)
        if cl:
            net = net.to(memory_format=torch.channels_last)
        args = [a.to(dtype).contiguous(memory_format=torch.channels_last) if cl else
                (a.to(dtype) if a.is_floating_point() else a) for a in args]

        def run() -> Any:
            with torch.inference_mode():
                return net(*args)
        return run
    import ember
    from ember.backends.cpu import native

    precision = "bf16" if "bf16" in label else "fp32"
    if label.endswith("no-persistent"):
        os.environ[native.SWITCH_ENV] = "0"
    try:
        path = str(zoo.export_onnx(model, batch=batch))
        engine = ember.build(path, ember.BuildConfig(device="cpu", precision=precision))
    finally:
        os.environ.pop(native.SWITCH_ENV, None)
    context = engine.create_context()
    context.__enter__()
    return lambda: context.infer(feeds)


def timed(runners: dict[str, Callable[[], Any]], rounds: int, runs: int) -> dict[str, Any]:
    per_round: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for label, run in runners.items():
            time.sleep(0.1)  # ONNX Runtime's workers spin after its block
            run()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                ts.append((time.perf_counter() - t0) * 1e3)
            per_round[label].append(statistics.median(ts))
    out = {label: {"median_ms": round(statistics.median(v), 3), "rounds_ms": [round(x, 3) for x in v]}
           for label, v in per_round.items()}
    if "onnxruntime" in per_round:
        for label, v in per_round.items():
            out[label]["x_ort_per_round_median"] = round(statistics.median(
                o / e for o, e in zip(per_round["onnxruntime"], v)), 3)
    return out


def conv_class(line: str) -> str:
    """"depthwise", "1x1" or "KxK" from a convolution's verbose problem descriptor
    (``g32mb8_ic32oc32_ih112oh112kh3...``, groups before or after the minibatch)."""
    g = re.search(r"(?:^|[,_])(?:mb\d+_?)?g(\d+)", line)
    ch = re.search(r"ic(\d+)oc(\d+)", line)
    k = re.search(r"kh(\d+)", line)
    if not ch or not k:
        return "?"
    groups, ic, oc, kh = int(g.group(1)) if g else 1, int(ch.group(1)), int(ch.group(2)), int(k.group(1))
    if groups > 1 and groups == ic == oc:
        return "depthwise"
    return "1x1" if kh == 1 else f"{kh}x{kh}"


def verbose_child(args: argparse.Namespace) -> None:
    """Runs one runtime with ONEDNN_VERBOSE set by the parent; the parent reads stdout."""
    torch.set_num_threads(args.threads)
    run = make_runner(args.child, args.model, args.batch, args.threads)
    for _ in range(2):
        run()
    print("=== timed ===", flush=True)
    for _ in range(args.verbose_runs):
        run()
    sys.stdout.flush()


def verbose_summary(args: argparse.Namespace, label: str) -> dict[str, Any]:
    env = dict(os.environ, ONEDNN_VERBOSE="profile_exec", DNNL_VERBOSE="1", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, args.model, "--batch", str(args.batch), "--threads", str(args.threads),
           "--verbose-runs", str(args.verbose_runs), "--child", label]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:  # negative: killed by that signal (a crash leaves stderr empty)
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        return {"error": f"{how}: {proc.stderr[-2000:]}"}
    text = proc.stdout.split("=== timed ===", 1)[-1]
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    versions = sorted(set(re.findall(r"oneDNN v(\d+\.\d+\.\d+)", proc.stdout)))
    for line in text.splitlines():
        if not line.startswith(("onednn_verbose", "dnnl_verbose")) or ",exec," not in line:
            continue
        f = line.split(",")
        i = f.index("exec")
        kind, impl = f[i + 2], f[i + 3]
        try:
            ms = float(f[-1])
        except ValueError:
            continue
        cls = conv_class(line) if kind == "convolution" else ""
        t = totals[(kind, impl, cls)]
        t[0] += ms / args.verbose_runs
        t[1] += 1
    rows = sorted(([k, i, c, round(ms, 3), n // args.verbose_runs] for (k, i, c), (ms, n) in totals.items()),
                  key=lambda r: -r[3])
    return {"onednn": versions, "ms_per_run": round(sum(r[3] for r in rows), 3), "primitives": rows}


def main() -> int:
    args = parse()
    if args.child:
        verbose_child(args)
        return 0
    torch.set_num_threads(args.threads)
    from bench import common

    labels = [x for x in (args.only.split(",") if args.only else RUNTIMES) if x]
    runners = {}
    for label in labels:
        t0 = time.perf_counter()
        runners[label] = make_runner(label, args.model, args.batch, args.threads)
        print(f"{label}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    result: dict[str, Any] = {"model": args.model, "batch": args.batch, "machine": common.machine_info(args.threads),
                              "timing": timed(runners, args.rounds, args.runs)}
    del runners
    if args.verbose_runs:
        result["onednn_verbose"] = {label: verbose_summary(args, label) for label in labels if label in BF16}
    print(f"\n{args.model} b{args.batch}, {args.threads} threads: per-round median ms, x ORT fp32")
    for label, t in result["timing"].items():
        print(f"  {label:26s} {t['median_ms']:9.2f} ms  {t.get('x_ort_per_round_median', 0):5.2f}x")
    for label, v in result.get("onednn_verbose", {}).items():
        if "error" in v:
            print(f"  {label}: verbose run failed: {v['error'][-300:]}")
            continue
        print(f"\n  {label}: oneDNN {','.join(v['onednn'])}, {v['ms_per_run']:.2f} ms a run in primitives")
        by_class: dict[str, float] = defaultdict(float)
        for kind, _impl, cls, ms, _n in v["primitives"]:
            by_class[f"{kind} {cls}".strip()] += ms
        print("    " + ", ".join(f"{k} {ms:.2f}" for k, ms in sorted(by_class.items(), key=lambda kv: -kv[1])))
        for kind, impl, cls, ms, n in v["primitives"][:8]:
            print(f"    {ms:8.3f} ms  {n:3d}x  {kind} {cls} {impl}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
