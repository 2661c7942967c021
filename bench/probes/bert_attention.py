"""BERT-base's attention at batch 128 on the H100, one layer (issue 20's fp16 and FP8 rows): the
GPU time of PyTorch's fused SDPA backends and of Ember's cuDNN-frontend graph
(``libs.cudnn_graph``) on the operands as Ember's engine has them — q, k, v strided views of the
packed QKV GEMM output ``[B, S, 3, H, D]`` — with the padding mask as an additive ``[B, 1, 1, S]``
bias, and without a mask. Every variant is timed inside a CUDA graph
(``triton.testing.do_bench_cudagraph``), so the numbers are kernel time, not Python's.

    python bench/probes/bert_attention.py [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402


def main() -> None:
    import triton

    from ember.backends.cuda.libs import cudnn_graph

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    b, s, h, d = args.batch, 128, 12, 64
    dev, dt = torch.device("cuda"), torch.float16
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(b, s, 3, h, d, device=dev, dtype=dt, generator=g)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [b, h, s, d] views
    lengths = torch.randint(s // 2, s + 1, (b,), device=dev, generator=g)
    keep = torch.arange(s, device=dev)[None, :] < lengths[:, None]
    bias = torch.where(keep, 0.0, -10000.0).to(dt).reshape(b, 1, 1, s)
    out = torch.empty(b, s, h, d, device=dev, dtype=dt).transpose(1, 2)
    scale = d ** -0.5
    rows: list[dict[str, object]] = []

    def bench(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
            torch.cuda.synchronize()
            ms = float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))
        except Exception as e:  # noqa: BLE001  (a probe: record and go on)
            rows.append({"variant": name, "error": f"{type(e).__name__}: {e}"[:200]})
            print(f"{name:50s} error {type(e).__name__}: {str(e)[:120]}", flush=True)
            return
        rows.append({"variant": name, "ms": round(ms, 4)})
        print(f"{name:50s} {ms:.4f}", flush=True)

    contiguous = [t.contiguous() for t in (q, k, v)]
    for label, (qq, kk, vv) in (("strided", (q, k, v)), ("contiguous", contiguous)):
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.MATH):
            for masked in (True, False):
                if backend is SDPBackend.FLASH_ATTENTION and masked:
                    continue  # no additive bias in flash

                def fn(qq=qq, kk=kk, vv=vv, backend=backend, masked=masked):  # type: ignore[no-untyped-def]
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=bias if masked else None,
                                                              scale=scale)
                bench(f"torch sdpa {backend.name.lower()} {label} {'bias' if masked else 'no mask'}", fn)
        for masked in (True, False):
            m = bias if masked else None
            graph = cudnn_graph.sdpa_graph(qq, kk, vv, m, out, scale)
            tensors = {"q": qq, "k": kk, "v": vv, "out": out} | ({"bias": m} if masked else {})
            bench(f"ember cudnn frontend graph {label} {'bias' if masked else 'no mask'}",
                  lambda graph=graph, tensors=tensors: graph.run(tensors))
    flops, nbytes = 4 * b * h * s * s * d, 4 * b * s * h * d * 2
    print(f"(attention FLOPs {flops / 1e9:.1f} G: at 400 TFLOPS {flops / 400e12 * 1e3:.4f} ms; "
          f"q, k, v and out {nbytes / 1e6:.0f} MB: at 3 TB/s {nbytes / 3e12 * 1e3:.4f} ms)")
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "shape": [b, h, s, d], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
