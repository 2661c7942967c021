"""Probe: oneDNN's depthwise post-op (``append_dw``) on MobileNetV2's expand -> depthwise pairs.

    .venv/bin/python bench/probes/onednn_dw/probe.py [--iters 200] [--batches 1 8] [--threads 2 1]

Builds ``dw_probe.cpp`` (once, cached; same way as ``bench/probes/onednn_persistent/build.py``:
``torch.utils.cpp_extension.load`` against the GNU-OpenMP libdnnl Ember's extension links, found by
``ember.backends.cpu.native.find_prefix``). For every expand (1x1, ReLU6) -> depthwise (3x3,
ReLU6) pair of ``ember.zoo``'s MobileNetV2 ONNX graph, at each batch and thread count, it times
the two primitives Ember runs today against the one fused primitive, fp32 and INT8 (u8 / s8,
per-channel weight scales), taking turns in one process; checks that the outputs agree (fp32:
close; INT8: equal or one step apart) and prints min / median per pair and the totals, with the
implementation oneDNN picked for each primitive. ``--json PATH`` writes the rows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "dw_probe.cpp"
VARIANT: tuple = ("clip", 3, False)  # activation, INT8 depthwise weight-scale mask, blocked fp32
SKIP_REF = False  # --jit-only: the first implementation that is not ref_fused_convolution


def load(verbose: bool = False) -> ModuleType:
    from torch.utils import cpp_extension

    from ember.backends.cpu import native

    prefix = native.find_prefix()
    if prefix is None:
        raise SystemExit("no oneDNN install found: pip install 'ember[onednn]' or set EMBER_ONEDNN_PREFIX")
    cfg, lib = native.check_prefix(prefix.resolve())
    key = hashlib.sha256(SOURCE.read_bytes() + str(lib.resolve()).encode()).hexdigest()[:12]
    build_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ember-onednn-dw-probe" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    print(f"oneDNN {cfg.version} ({cfg.threading_runtime}) from {prefix}", flush=True)
    return cpp_extension.load(  # type: ignore[no-any-return]
        name=f"dw_probe_{key}", sources=[str(SOURCE)], build_directory=str(build_dir),
        extra_include_paths=[str(prefix / "include")], extra_cflags=["-O2", "-std=c++17"],
        extra_ldflags=[f"-L{lib.parent}", "-ldnnl", f"-Wl,-rpath,{lib.parent}"], verbose=verbose)


def mobilenet_pairs() -> list[tuple[int, int, int, int, int]]:
    """(C_in, H, W, C_expanded, dw stride) of each 1x1 -> [BN] -> Clip -> 3x3 depthwise pair in
    the zoo's MobileNetV2 ONNX graph (static shapes by ONNX shape inference)."""
    import onnx
    from onnx import shape_inference

    from ember import zoo

    m = shape_inference.infer_shapes(onnx.load(str(zoo.export_onnx("mobilenet-v2"))))
    g = m.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(g.value_info) + list(g.input) + list(g.output)}
    inits = {i.name: list(i.dims) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def attr(n: Any, k: str, d: Any = None) -> Any:
        for a in n.attribute:
            if a.name == k:
                return onnx.helper.get_attribute_value(a)
        return d

    pairs = []
    for n in g.node:
        if n.op_type != "Conv" or attr(n, "group", 1) == 1 or inits[n.input[1]][2:] != [3, 3]:
            continue
        c = producer.get(n.input[0])
        while c is not None and c.op_type in ("Clip", "BatchNormalization", "Relu"):
            c = producer.get(c.input[0])
        if c is None or c.op_type != "Conv" or inits[c.input[1]][2:] != [1, 1]:
            continue
        _, cin, h, w = shapes[c.input[0]]
        pairs.append((cin, h, w, inits[c.input[1]][0], attr(n, "strides")[0]))
    return pairs


def case(ext: ModuleType, torch: Any, shape: tuple[int, int, int, int, int], batch: int, int8: bool,
         iters: int) -> dict[str, Any]:
    cin, h, w, oc, stride = shape
    g = torch.Generator().manual_seed(hash(shape) & 0xFFFF)
    cl = torch.channels_last
    w1 = torch.randn(oc, cin, 1, 1, generator=g) / cin ** 0.5
    w2 = torch.randn(oc, 1, 3, 3, generator=g) / 3.0
    b1, b2 = torch.randn(oc, generator=g) * 0.1, torch.randn(oc, generator=g) * 0.1
    xf = torch.rand(batch, cin, h, w, generator=g) * 4.0
    if not int8:
        one = torch.ones(1)
        r = ext.bench(xf.contiguous(memory_format=cl), w1, b1, w2.contiguous(), b2, stride, one, one,
                      1.0, 1.0, 1.0, 0.0, 6.0, iters, 20, SKIP_REF, *VARIANT)
        ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(xf, w1, b1).clamp(0, 6), w2, b2, stride, 1,
                                         groups=oc).clamp(0, 6)
        err = float((r["fused"] - r["separate"]).abs().max())
        ref_err = float((r["separate"] - ref).abs().max())
    else:
        ws1 = w1.abs().amax(dim=(1, 2, 3)) / 127
        ws2 = w2.abs().amax(dim=(1, 2, 3)) / 127
        q1 = torch.round(w1 / ws1.reshape(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
        q2 = torch.round(w2 / ws2.reshape(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
        s_x, s_mid, s_out = 4.0 / 255, 6.0 / 255, 6.0 / 255
        xq = torch.round(xf / s_x).clamp(0, 255).to(torch.uint8).contiguous(memory_format=cl)
        r = ext.bench(xq, q1, b1, q2.contiguous(), b2, stride, ws1, ws2, s_x, s_mid, s_out, 0.0, 6.0, iters, 20,
                      SKIP_REF, *VARIANT)
        d = (r["fused"].to(torch.int32) - r["separate"].to(torch.int32)).abs()
        err = float(d.max())
        ref_err = float((d > 0).float().mean())  # share of outputs that differ (by err at most)
    t1, t2, tf = r["t_1x1"], r["t_dw"], r["t_fused"]
    return {"shape": list(shape), "batch": batch, "int8": int8, "max_diff": err,
            ("ref_err" if not int8 else "share_diff"): ref_err,
            "min_1x1": min(t1), "min_dw": min(t2), "min_fused": min(tf),
            "med_1x1": statistics.median(t1), "med_dw": statistics.median(t2), "med_fused": statistics.median(tf),
            "med_pair": statistics.median([a + b for a, b in zip(t1, t2)]),
            "impl_1x1": r["impl_1x1"], "impl_dw": r["impl_dw"], "impl_fused": r["impl_fused"],
            "accepted": list(r["accepted"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--jit-only", action="store_true",
                   help="time the first fused implementation that is not ref_fused_convolution")
    p.add_argument("--act", choices=["clip", "relu", "none"], default="clip",
                   help="the activation after each convolution (MobileNetV2: clip to [0, 6])")
    p.add_argument("--dw-mask", type=int, default=3, help="INT8 depthwise weight-scale mask (3: per channel)")
    p.add_argument("--blocked", action="store_true", help="fp32 activations in nChw16c instead of NHWC")
    p.add_argument("--int8", choices=["both", "only", "no"], default="both")
    args = p.parse_args(argv)
    global SKIP_REF, VARIANT
    SKIP_REF = args.jit_only
    VARIANT = (args.act, args.dw_mask, args.blocked)
    import torch

    ext = load()
    pairs = mobilenet_pairs()
    print(f"{len(pairs)} expand -> depthwise pairs in MobileNetV2: {sorted(set(pairs), key=pairs.index)}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            for int8 in {"both": (False, True), "only": (True,), "no": (False,)}[args.int8]:
                seen: dict[tuple, dict] = {}
                tot = {"sep_min": 0.0, "fused_min": 0.0, "sep_med": 0.0, "fused_med": 0.0}
                label = f"{'int8' if int8 else 'fp32'} batch {batch}, {threads} thread(s)"
                print(f"\n== {label}: per pair (us): 1x1 + dw = separate | fused | saving (medians; mins)")
                for shape in pairs:
                    if shape not in seen:
                        seen[shape] = case(ext, torch, shape, batch, int8, args.iters)
                        r = seen[shape]
                        r["threads"] = threads
                        rows.append(r)
                        sep = r["med_1x1"] + r["med_dw"]
                        print(f"  {shape}: {r['med_1x1']:8.1f} + {r['med_dw']:8.1f} = {sep:8.1f} | "
                              f"{r['med_fused']:8.1f} | {100 * (1 - r['med_fused'] / sep):+6.1f}%   "
                              f"(min {r['min_1x1'] + r['min_dw']:.1f} | {r['min_fused']:.1f})  "
                              f"diff {r['max_diff']:.3g}  fused impl: {r['impl_fused']}")
                    r = seen[shape]
                    tot["sep_med"] += r["med_1x1"] + r["med_dw"]
                    tot["fused_med"] += r["med_fused"]
                    tot["sep_min"] += r["min_1x1"] + r["min_dw"]
                    tot["fused_min"] += r["min_fused"]
                impls = {(r["impl_1x1"], r["impl_dw"], r["impl_fused"]) for r in seen.values()}
                saving = 100 * (1 - tot["fused_med"] / tot["sep_med"])
                print(f"  TOTAL over {len(pairs)} pairs: separate {tot['sep_med']:.0f} us, fused "
                      f"{tot['fused_med']:.0f} us (medians): saving {saving:+.1f}%; "
                      f"mins {tot['sep_min']:.0f} -> {tot['fused_min']:.0f} us "
                      f"({100 * (1 - tot['fused_min'] / tot['sep_min']):+.1f}%)")
                print(f"  implementations (1x1, dw, fused): {sorted(impls)}")
                print(f"  implementations accepting the fused descriptor: "
                      f"{sorted({tuple(r['accepted']) for r in seen.values()})}")
                rows.append({"total": label, **tot})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    raise SystemExit(main())
