"""Probe (issue 20): the time between kernels that cuBLAS GEMMs leave in a CUDA graph, and what
removes it. BERT-base's 48 GEMMs at batch 128 (sequence 128, fp16, bias; the FFN-in with cuBLASLt's
tanh-GELU epilogue, as the engine runs them), in order on one stream, captured in one CUDA graph
and replayed; per variant: the replay's time by CUDA events, the kernels' sum and count by
torch.profiler (memsets counted apart), and the difference, the time between kernels.

Why: the twenty-first session's fp16 BERT-base b128 engine spent 0.72 ms of 6.51 between its
kernels, with 60 memsets in its graph, where its INT8 engine (48 Triton GEMMs) spent 0.08 ms;
closing that is most of the way to issue 20's 1.2x over torch.compile.

Variants (each in its own process: the settings are read when cuBLAS starts): ``default``;
``lt-workspace-0`` (``CUBLASLT_WORKSPACE_SIZE=0``: no workspace, so no kernel that needs one
zeroed); ``lt-workspace-64m``; ``no-addmm-lt`` (``DISABLE_ADDMM_CUDA_LT=1``: addmm through cuBLAS,
not cuBLASLt); ``blas-cublas`` (``torch.backends.cuda.preferred_blas_library("cublas")``);
``triton`` (Ember's Triton GEMM, best tile, the reference without memsets).

    python bench/probes/cuda_gemm_graph_gaps.py [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "default": {},
    "lt-workspace-0": {"CUBLASLT_WORKSPACE_SIZE": "0"},
    "lt-workspace-64m": {"CUBLASLT_WORKSPACE_SIZE": str(64 * 1024)},
    "no-addmm-lt": {"DISABLE_ADDMM_CUDA_LT": "1"},
    "blas-cublas": {},
    "triton": {},
}
TOKENS, HIDDEN, FFN, LAYERS = 128 * 128, 768, 3072, 12


def one(variant: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    if variant == "blas-cublas":
        torch.backends.cuda.preferred_blas_library("cublas")
    dev, h = torch.device("cuda"), torch.float16
    g = torch.Generator(device=dev).manual_seed(0)

    def w(n, k):
        return (torch.randn(n, k, device=dev, generator=g) * k ** -0.5).to(h)

    layers = [dict(qkv=(w(3 * HIDDEN, HIDDEN), w(1, 3 * HIDDEN)[0]), out=(w(HIDDEN, HIDDEN), w(1, HIDDEN)[0]),
                   ffn1=(w(FFN, HIDDEN), w(1, FFN)[0]), ffn2=(w(HIDDEN, FFN), w(1, HIDDEN)[0]))
              for _ in range(LAYERS)]
    x = torch.randn(TOKENS, HIDDEN, device=dev, generator=g).to(h)
    y_qkv = torch.empty(TOKENS, 3 * HIDDEN, device=dev, dtype=h)
    y_out = torch.empty(TOKENS, HIDDEN, device=dev, dtype=h)
    y_ffn1 = torch.empty(TOKENS, FFN, device=dev, dtype=h)
    y_ffn2 = torch.empty(TOKENS, HIDDEN, device=dev, dtype=h)
    if variant == "triton":
        from ember.backends.cuda.libs import triton_gemm as G
        from ember.ops.attrs import Activation

        def gemm(a, wb, out, gelu=False):
            G.linear(a, wb[0], wb[1], act=Activation.GELU_TANH if gelu else Activation.NONE,
                     config=G.CONFIGS[1], out=out)
    else:
        def gemm(a, wb, out, gelu=False):
            if gelu:
                torch._addmm_activation(wb[1], a, wb[0].t(), use_gelu=True, out=out)
            else:
                torch.addmm(wb[1], a, wb[0].t(), out=out)

    def forward():
        for lay in layers:
            gemm(x, lay["qkv"], y_qkv)
            gemm(x, lay["out"], y_out)
            gemm(x, lay["ffn1"], y_ffn1, gelu=True)
            gemm(y_ffn1, lay["ffn2"], y_ffn2)

    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 50
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    wall = start.elapsed_time(end) / reps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
    kern: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kern[e.name[:80]][0] += e.device_time_total / 1000 / 10
            kern[e.name[:80]][1] += 1
    total = sum(v[0] for v in kern.values())
    memsets = sum(v[1] for k, v in kern.items() if "memset" in k.lower()) // 10
    launches = sum(v[1] for v in kern.values()) // 10
    return {"variant": variant, "wall_ms": round(wall, 4), "kernels_ms": round(total, 4),
            "between_ms": round(wall - total, 4), "kernels": launches, "memsets": memsets,
            "top": sorted(((k, round(v[0], 4), v[1] // 10) for k, v in kern.items()), key=lambda r: -r[1])[:6]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="run one variant here (internal)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(one(args.variant)))
        return
    rows = []
    for name, env in VARIANTS.items():
        proc = subprocess.run([sys.executable, __file__, "--variant", name], env=dict(os.environ, **env),
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            rows.append({"variant": name, "error": proc.stderr.strip()[-400:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{name:18s}" + (f" error: {r['error'][-160:]}" if "error" in r else
                               f" a forward {r['wall_ms']:.3f} ms, kernels {r['kernels_ms']:.3f} ms, between "
                               f"{r['between_ms']:.3f} ms; {r['kernels']} kernels, {r['memsets']} memsets"), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
