"""Concat elimination through 1x1 convolutions written as GEMMs into their slices, on the CPU.

    .venv/bin/python bench/concat_gemm.py [--batches 1,8] [--rounds 30]

GoogLeNet (zoo, Caffe layout), 2 threads, in one process; engines built from the same file and
timed in alternating rounds (so load changes hit all alike), each checked against ONNX Runtime:

- ``copy``: the default (``GEMM_INTO_MAX_MACS = 0``): every Concat input produced by a conv is
  copied into its slice (what Ember did before the GEMM path existed: 0 inputs written);
- ``gemm``: every 1x1 conv feeding a Concat writes its slice as an MKL GEMM (the pool
  projections: Inception's branch 1 is a Split output of the horizontally merged 1x1 convs);
- ``unmerged+gemm``: horizontal fusion additionally declines to merge a 1x1 conv whose only
  reader is a Concat (so branch 1 is its own conv and writes its slice too): option (c) of the
  horizontal-fusion question, patched in here only;
- ``unmerged+copy``: that graph without the GEMM path (the cost of unmerging alone).

Also, inside the ``gemm`` engine's own run, the nine pool projections timed both ways in
alternating runs (GEMM into the slice vs oneDNN's convolution + copy into the slice). Results go
to ``bench/results/concat-gemm-<date>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ember  # noqa: E402
import ember.passes.fuse_horizontal as fh  # noqa: E402
import ember.runtime.concat_exec as ce  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cpu.kernels import conv_mkldnn  # noqa: E402
from ember.backends.gemm_into import pointwise_conv  # noqa: E402
from ember.backends.tensors import numpy_to_torch  # noqa: E402
from ember.ir.optype import OpType  # noqa: E402
from ember.runtime.concat_exec import plan_summary  # noqa: E402

ON = 1 << 40


@contextlib.contextmanager
def unmerged():
    """fuse_horizontal leaves out 1x1 convs whose only reader is a Concat (option c)."""
    orig = fh._conv_branch

    def branch(node, g):
        readers = g.consumers().get(node.outputs[0], [])
        w = g.constant(node.input(1))
        conv = node.attrs.conv if node.op is OpType.FUSED_CONV else node.attrs
        if (node.op in (OpType.CONV, OpType.FUSED_CONV) and w is not None and pointwise_conv(conv, w.shape)
                and len(readers) == 1 and readers[0].op is OpType.CONCAT):
            return None
        return orig(node, g)

    fh._conv_branch = branch
    try:
        yield
    finally:
        fh._conv_branch = orig


def build(path, macs: int, unmerge: bool):
    conv_mkldnn.GEMM_INTO_MAX_MACS = macs
    with unmerged() if unmerge else contextlib.nullcontext():
        engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    program = engine.compile()
    return engine, program


def run_model(batch: int, rounds: int) -> dict:
    import onnxruntime as ort

    path = zoo.export_onnx("googlenet", batch=batch)
    feeds = zoo.sample_inputs("googlenet", batch=batch)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    variants = {"copy": (0, False), "gemm": (ON, False), "unmerged+gemm": (ON, True), "unmerged+copy": (0, True)}
    progs, rows = {}, {}
    dev = {k: numpy_to_torch(v, torch.device("cpu")) for k, v in feeds.items()}
    for name, (macs, unmerge) in variants.items():
        engine, program = build(path, macs, unmerge)
        stats: dict = {}
        with torch.inference_mode():
            out = program.run(dev, stats)["output"].numpy()
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        s = plan_summary(engine.plan)
        progs[name] = (program, macs)
        rows[name] = {"layers": len(engine.plan.layers), "written": s["written"], "inputs_of_eliminated": s["inputs"],
                      "concats": s["concats"], "stats": stats, "max_rel_err_vs_ort": err, "ms": []}
    with torch.inference_mode():
        for _ in range(3):
            for program, macs in progs.values():
                conv_mkldnn.GEMM_INTO_MAX_MACS = macs
                program.run(dev)
        for _ in range(rounds):
            for name, (program, macs) in progs.items():
                conv_mkldnn.GEMM_INTO_MAX_MACS = macs
                t = time.perf_counter()
                program.run(dev)
                rows[name]["ms"].append((time.perf_counter() - t) * 1e3)
    for r in rows.values():
        r["median_ms"] = statistics.median(r["ms"])
        r["min_ms"] = min(r["ms"])
    return {"batch": batch, "variants": rows, "in_run": in_run(progs["gemm"][0], dev, rounds)}


def in_run(program, dev, rounds: int) -> dict:
    """The writing producers of ``program`` timed inside its runs: GEMM into the slice and
    oneDNN convolution + copy into the slice, alternating run by run."""
    conv_mkldnn.GEMM_INTO_MAX_MACS = ON
    mode = ["gemm"]
    times: dict[str, list[float]] = {"gemm": [], "conv+copy": []}
    saved = dict(program.concat.targets)
    for i, t in saved.items():
        kernel = program.steps[i].kernel

        def timed(args, out, _w=t.write, _k=kernel):
            s = time.perf_counter()
            if mode[0] == "gemm":
                ok = _w(args, out)
            else:
                out.copy_(_k(args)[0])
                ok = True
            times[mode[0]].append(time.perf_counter() - s)
            return ok

        program.concat.targets[i] = ce.Target(t.output, t.axis, t.start, t.length, ce.WriteInto(timed, t.write.accepts))
    n = len(saved)
    try:
        with torch.inference_mode():
            for r in range(2 * rounds + 4):
                mode[0] = ("gemm", "conv+copy")[r % 2]
                program.run(dev)
    finally:
        program.concat.targets.clear()
        program.concat.targets.update(saved)
    out = {}
    for m, ts in times.items():
        a = np.array(ts[2 * n:]).reshape(-1, n) * 1e6
        out[m] = {"per_layer_us": [round(float(v), 1) for v in np.median(a, 0)],
                  "sum_us": round(float(np.median(a, 0).sum()), 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "threads": 2,
               "model": "googlenet", "runs": []}
    for b in (int(v) for v in args.batches.split(",")):
        res = run_model(b, args.rounds if b == 1 else max(5, args.rounds // 4))
        results["runs"].append(res)
        print(f"googlenet batch {b}:")
        for name, r in res["variants"].items():
            print(f"  {name:14s} {r['median_ms']:8.2f} ms (min {r['min_ms']:.2f})  layers {r['layers']}  "
                  f"written {r['written']} of {r['inputs_of_eliminated']} inputs  err {r['max_rel_err_vs_ort']:.1e}")
        for m, r in res["in_run"].items():
            print(f"  pool projections inside the run, {m}: {r['sum_us']} us {r['per_layer_us']}")
    out = ROOT / "bench" / "results" / f"concat-gemm-{results['date']}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"-> {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
