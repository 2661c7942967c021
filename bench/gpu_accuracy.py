"""Half-precision accuracy of zoo engines on the GPU, and what per-layer fp32 fallbacks buy.

For each model and batch, builds CUDA engines at ``--precision`` with several
``layer_precisions`` tables (the default rules, then a few layer families kept in fp32), and
reports each one's max relative error against ONNX Runtime fp32 (``max|ours - ref| / max|ref|``,
the metric of ``ember bench``), its median GPU time, and PyTorch eager's error at the same
precision on the zoo's own module (the same weights) as the yardstick.

    python bench/gpu_accuracy.py --models mobilenet-v2 --batches 128
    python bench/gpu_accuracy.py --out /tmp/acc.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _layers(engine, pred: Callable[[Any], bool]) -> list[str]:
    return [n.name for n in engine.plan.graph.nodes if pred(n)]


def _is_depthwise(n) -> bool:
    conv = getattr(n.attrs, "conv", n.attrs)
    return n.op.value in ("Conv", "FusedConv") and getattr(conv, "group", 1) > 1


def _is_linear_conv(n) -> bool:
    act = getattr(n.attrs, "activation", None)
    return n.op.value == "FusedConv" and act is not None and act.value == "none" or n.op.value == "Conv"


def _is_residual(n) -> bool:
    return n.op.value == "FusedConv" and bool(getattr(n.attrs, "has_residual", False))


def _reads_graph_input(engine) -> list[str]:
    inputs = set(engine.plan.graph.inputs)
    return [n.name for n in engine.plan.graph.nodes if any(i in inputs for i in n.inputs)]


_HEAD = ["GlobalAveragePool", "Gemm", "MatMul", "Flatten"]

#: name -> function(default engine) -> layer_precisions table for the given precision
VARIANTS: dict[str, Callable[[Any], list[str]]] = {
    "default rules": lambda e: [],
    "head in fp32": lambda e: list(_HEAD),
    "depthwise convs in fp32": lambda e: _layers(e, _is_depthwise),
    "linear (projection) convs in fp32": lambda e: _layers(e, _is_linear_conv),
    "residual convs in fp32": lambda e: _layers(e, _is_residual),
    "stem (first layer) in fp32": _reads_graph_input,
    "stem + head in fp32": lambda e: [*_reads_graph_input(e), *_HEAD],
    "stem + head + linear convs in fp32": lambda e: [*_reads_graph_input(e), *_HEAD,
                                                     *_layers(e, _is_linear_conv)],
    # the errors grow through the network, so the earliest layers matter most (ember.builder.accuracy)
    "first 1 layer in fp32": lambda e: [layer.name for layer in e.plan.layers[:1]],
    "first 3 layers in fp32": lambda e: [layer.name for layer in e.plan.layers[:3]],
    "first 6 layers in fp32": lambda e: [layer.name for layer in e.plan.layers[:6]],
}


def _median_ms(ctx, feeds, iters: int = 30) -> float:
    import torch

    dev = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in feeds.items()}
    for _ in range(3):
        ctx.infer(dev)
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        ctx.infer(dev)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def run_model(model: str, batch: int, precision: str, variants: list[str]) -> list[dict]:
    import torch

    import ember
    from ember import zoo
    from ember.backends.tensors import max_relative_error
    from ember.tools.bench_peers import reference_outputs

    path = zoo.export_onnx(model, batch=batch)
    feeds = zoo.sample_inputs(model, batch=batch)
    ref = reference_outputs(path, feeds)
    rows = []
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is not None:  # PyTorch eager on the same weights, same precision
        try:
            module = zoo.build_model(model).to("cuda", dtype).eval()
            args = [torch.from_numpy(v).cuda() for v in feeds.values()]
            args = [a.to(dtype) if a.is_floating_point() else a for a in args]
            with torch.inference_mode():
                out = module(*args)
            if not isinstance(out, torch.Tensor):
                out = next(iter(out.values())) if isinstance(out, dict) else out[0]
            err = max_relative_error(out.float().cpu().numpy(), next(iter(ref.values())))
            rows.append({"model": model, "batch": batch, "variant": f"PyTorch eager {precision}", "max_rel_error": err})
            print(f"{model:14s} b{batch:<4d} {'PyTorch eager ' + precision:36s} err {err:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001 - the yardstick is optional
            print(f"{model}: PyTorch eager {precision} failed: {type(e).__name__}: {e}", flush=True)
    base = None
    for name in variants:
        table = {}
        if base is not None:
            table = {k: "fp32" for k in VARIANTS[name](base)}
            table = {k: v for k, v in table.items() if k in _known(base)}
            if not table:
                print(f"{model:14s} b{batch:<4d} {name:36s} (no such layers)", flush=True)
                continue
        t0 = time.perf_counter()
        engine = ember.build(str(path), ember.BuildConfig(device="cuda", precision=precision,
                                                          layer_precisions=table), progress=False)
        build_s = time.perf_counter() - t0
        base = base or engine
        with engine.create_context() as ctx:
            outs = ctx.infer(feeds)
            err = max(max_relative_error(np.asarray(outs[k], np.float64), v) for k, v in ref.items())
            ms = _median_ms(ctx, feeds)
        rows.append({"model": model, "batch": batch, "variant": name, "fp32_layers": len(table),
                     "max_rel_error": err, "median_ms": ms, "build_s": round(build_s, 1)})
        print(f"{model:14s} b{batch:<4d} {name:36s} err {err:.2e}  {ms:8.3f} ms  ({len(table)} layers fp32)",
              flush=True)
    return rows


def _known(engine) -> set[str]:
    from ember.ir.optype import OpType

    names = {op.value for op in OpType}
    for n in engine.plan.graph.nodes:
        names.update((n.name, n.display_name, *n.origin))
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilenet-v2,resnet-50,googlenet,bert-base")
    p.add_argument("--batches", default="1,128")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            variants = args.variants.split(",") if model == "mobilenet-v2" else ["default rules"]
            rows.extend(run_model(model, batch, args.precision, variants))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
