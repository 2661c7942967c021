"""Probe: bf16 (and fp16) on the CPU through PyTorch's oneDNN entry points (issue 19, "reduced precision").

    python bench/probes/cpu_bf16.py [--threads 2] [--reps 30] [--out bench/results/cpu-bf16-probe-<date>.json]

For each layer shape of the issue (a 128x768x3072 linear, a 256-channel 3x3 convolution on 56x56) and a few
more (BERT's attention, a depthwise and a 1x1 conv of MobileNetV2, batch 8 shapes), the fp32 path Ember runs
today against the candidate bf16 entry points: ``mkldnn._linear_pointwise`` / ``_convolution_pointwise`` on
weights reordered from bf16, aten ``linear`` / ``conv2d`` on bf16 tensors, ``scaled_dot_product_attention`` in
bf16; with the oneDNN implementation each call ran (``brg_matmul:avx10_1_512_amx`` and the like, from
oneDNN's verbose log), the relative error against float64, and what the conversions at the edges cost
(fp32 -> bf16 of the input, bf16 -> fp32 of the output). Medians of ``--reps`` runs after warm-up; the
machine may be shared, so each timing is repeated in three rounds and the spread reported.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / f"cpu-bf16-probe-{date.today()}.json"))
    p.add_argument("--only", default="", help="comma-separated case names")
    return p.parse_args()


ARGS = parse()


def machine() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]
    kv = dict((k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln))
    flags = set(kv.get("flags", "").split())
    m = re.search(r"(?:Intel\(R\) MKL-DNN|oneDNN) v([\d.]+)", torch.__config__.show())
    return {"cpu": kv.get("model name"), "isa": sorted(f for f in flags if re.match(r"(avx512|amx)", f)),
            "torch": torch.__version__, "onednn": m.group(1) if m else None, "threads": torch.get_num_threads()}


def onednn_impls(fn: Callable[[], Any]) -> list[str]:
    """The oneDNN primitives one call of ``fn`` executes, from oneDNN's verbose log."""
    sys.stdout.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for ln in lines:
        p = ln.split(",")
        if "exec" in p and len(p) > 8:
            i = p.index("exec")
            out.append(" ".join(p[i + 2:i + 4] + [p[i + 5][:60]]))
    return out


def bench(fn: Callable[[], Any]) -> dict[str, float]:
    """Medians of three rounds of ``--reps`` runs each: the median of them and the spread."""
    for _ in range(ARGS.warmup):
        fn()
    medians = []
    for _ in range(3):
        ts = []
        for _ in range(ARGS.reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        medians.append(statistics.median(ts) * 1e3)
    return {"ms": round(statistics.median(medians), 4), "min": round(min(medians), 4), "max": round(max(medians), 4)}


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y64, r64 = y.to(torch.float64), ref.to(torch.float64)
    return float((y64 - r64).abs().max() / r64.abs().max())


RESULTS: dict[str, Any] = {}


def record(case: str, tag: str, fn: Callable[[], torch.Tensor], ref: torch.Tensor | None) -> None:
    try:
        with torch.no_grad():
            y = fn()
            entry: dict[str, Any] = bench(fn)
            if ref is not None:
                entry["rel_err"] = rel(y.float(), ref)
            entry["impls"] = sorted(set(onednn_impls(fn)))
    except (RuntimeError, TypeError) as e:
        entry = {"error": str(e).strip().splitlines()[0][:200]}
    RESULTS.setdefault(case, {})[tag] = entry
    print(f"{case:28} {tag:34} {json.dumps(entry)[:200]}", flush=True)


def linear_case(name: str, m: int, k: int, n: int) -> None:
    x = torch.randn(m, k)
    w = torch.randn(n, k) / k ** 0.5
    b = torch.randn(n)
    ref = F.linear(x.double(), w.double(), b.double())
    lp = torch.ops.mkldnn._linear_pointwise
    p32 = torch.ops.mkldnn._reorder_linear_weight(w, m)
    record(name, "fp32 _linear_pointwise", lambda: lp(x, p32, b, "none", [], ""), ref)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    pb = torch.ops.mkldnn._reorder_linear_weight(wb, m)
    record(name, "bf16 _linear_pointwise (bias bf16)", lambda: lp(xb, pb, bb, "none", [], ""), ref)
    record(name, "bf16 _linear_pointwise (bias fp32)", lambda: lp(xb, pb, b, "none", [], ""), ref)
    record(name, "bf16 _linear_pointwise gelu", lambda: lp(xb, pb, bb, "gelu", [], "none"), None)
    record(name, "bf16 aten.linear", lambda: F.linear(xb, wb, bb), ref)
    record(name, "bf16 aten.matmul", lambda: torch.matmul(xb, wb.t()), None)
    record(name, "fp32->bf16 input", lambda: x.to(torch.bfloat16), None)
    yb = lp(xb, pb, bb, "none", [], "")
    record(name, "bf16->fp32 output", lambda: yb.float(), None)
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        xh, wh, bh = x.half(), w.half(), b.half()
        ph = torch.ops.mkldnn._reorder_linear_weight(wh, m)
        record(name, "fp16 _linear_pointwise", lambda: lp(xh, ph, bh, "none", [], ""), ref)


def conv_case(name: str, n: int, c: int, hw: int, oc: int, k: int, groups: int = 1, stride: int = 1) -> None:
    pad = k // 2
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
    w = torch.randn(oc, c // groups, k, k) / (c // groups * k * k) ** 0.5
    b = torch.randn(oc)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, pad, 1, groups)
    cp = torch.ops.mkldnn._convolution_pointwise
    reorder = torch.ops.mkldnn._reorder_convolution_weight
    size = [n, c, hw, hw]
    p32 = reorder(w, [pad, pad], [stride, stride], [1, 1], groups, size)
    args = ([pad, pad], [stride, stride], [1, 1], groups)
    record(name, "fp32 _convolution_pointwise", lambda: cp(x, p32, b, *args, "none", [], ""), ref)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    pb = reorder(wb, [pad, pad], [stride, stride], [1, 1], groups, size)
    record(name, "bf16 _convolution_pointwise", lambda: cp(xb, pb, bb, *args, "none", [], ""), ref)
    record(name, "bf16 _convolution_pointwise b32", lambda: cp(xb, pb, b, *args, "none", [], ""), ref)
    record(name, "bf16 _conv_pw relu", lambda: cp(xb, pb, bb, *args, "relu", [], ""), None)
    yb = cp(xb, pb, bb, *args, "none", [], "")
    record(name, "bf16 _conv_pw.binary add", lambda: cp.binary(xb, yb, pb, bb, *args, "add", None, None, [], ""),
           None)
    wcl = wb.contiguous(memory_format=torch.channels_last)
    record(name, "bf16 aten.conv2d channels_last", lambda: F.conv2d(xb, wcl, bb, stride, pad, 1, groups), ref)
    record(name, "fp32->bf16 input (channels_last)", lambda: x.to(torch.bfloat16), None)
    record(name, "bf16->fp32 output", lambda: yb.float(), None)
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        xh, wh, bh = x.half(), w.half(), b.half()
        ph = reorder(wh, [pad, pad], [stride, stride], [1, 1], groups, size)
        record(name, "fp16 _convolution_pointwise", lambda: cp(xh, ph, bh, *args, "none", [], ""), ref)


def attention_case(name: str, b: int, h: int, s: int, d: int) -> None:
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    mask = torch.zeros(b, 1, 1, s)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    record(name, "fp32 sdpa", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), ref)
    qb, kb, vb, mb = q.bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16()
    record(name, "bf16 sdpa", lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mb), ref)
    record(name, "bf16 sdpa fp32 mask", lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask), ref)

    def math_bf16() -> torch.Tensor:
        s_ = torch.matmul(qb, kb.transpose(-1, -2)) * d ** -0.5 + mb
        return torch.matmul(torch.softmax(s_.float(), -1).bfloat16(), vb)

    record(name, "bf16 matmul+fp32 softmax", math_bf16, ref)


def elementwise_case(name: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    xb = x.bfloat16()
    g, beta = torch.randn(shape[-1]), torch.randn(shape[-1])
    record(name, "fp32 layer_norm", lambda: F.layer_norm(x, shape[-1:], g, beta), None)
    record(name, "bf16 layer_norm (fp32 w)", lambda: F.layer_norm(xb, shape[-1:], g.bfloat16(), beta.bfloat16()), None)
    record(name, "fp32 gelu", lambda: F.gelu(x), None)
    record(name, "bf16 gelu", lambda: F.gelu(xb), None)
    record(name, "fp32 add", lambda: x + x, None)
    record(name, "bf16 add", lambda: xb + xb, None)


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    info = machine()
    print(json.dumps(info))
    cases: dict[str, Callable[[], None]] = {
        "linear 128x768x3072": lambda: linear_case("linear 128x768x3072", 128, 768, 3072),
        "linear 1024x768x3072": lambda: linear_case("linear 1024x768x3072", 1024, 768, 3072),
        "linear 1024x3072x768": lambda: linear_case("linear 1024x3072x768", 1024, 3072, 768),
        "conv 1x256x56 3x3": lambda: conv_case("conv 1x256x56 3x3", 1, 256, 56, 256, 3),
        "conv 8x64x56 3x3": lambda: conv_case("conv 8x64x56 3x3", 8, 64, 56, 64, 3),
        "conv 8x256x56 1x1": lambda: conv_case("conv 8x256x56 1x1", 8, 256, 56, 64, 1),
        "conv 8x144x56 dw3x3": lambda: conv_case("conv 8x144x56 dw3x3", 8, 144, 56, 144, 3, groups=144),
        "conv 8x3x224 7x7s2": lambda: conv_case("conv 8x3x224 7x7s2", 8, 3, 224, 64, 7, stride=2),
        "attention 8x12x128x64": lambda: attention_case("attention 8x12x128x64", 8, 12, 128, 64),
        "elementwise 8x128x768": lambda: elementwise_case("elementwise 8x128x768", (8, 128, 768)),
    }
    only = [c for c in ARGS.only.split(",") if c]
    for name, fn in cases.items():
        if not only or any(o in name for o in only):
            fn()
    out = Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "reps": ARGS.reps, "results": RESULTS}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
