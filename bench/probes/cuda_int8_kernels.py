"""Probe (issue 20): one layer's GPU time for Ember's Triton INT8 kernel against the fp16 and INT8
library kernels on the same shapes, to tell kernel speed from engine effects.

Shapes: ResNet-50's 3x3 64->64 and 1x1 256->64 convolutions on 56x56 at batch 128, and BERT-base's
FFN GEMM (16384 x 768 @ 768 x 3072). Per shape: cuDNN fp16 (channels-last ``F.conv2d``) or
``torch.mm`` fp16; Ember's Triton fp16 implicit GEMM (``libs.triton_conv``); ``torch._int_mm``
(cuBLASLt int8, GEMM only, int32 out); Ember's Triton INT8 kernel on int8 input with a requantized
int8 output (each tile configuration). Median ms of CUDA events (``cuda_event_measure``).

    python bench/probes/cuda_int8_kernels.py [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def conv_row(name: str, n: int, cin: int, hw: int, cout: int, k: int, measure, dev: torch.device) -> dict:
    from ember.backends.cuda.libs import triton_conv as T
    from ember.backends.cuda.libs import triton_qconv as Q
    from ember.ops.attrs import Activation

    pad = k // 2
    cl = torch.channels_last
    x = torch.randn(n, cin, hw, hw, device=dev).half().contiguous(memory_format=cl)
    w = torch.randn(cout, cin, k, k, device=dev) / (cin * k * k) ** 0.5
    wh = w.half().contiguous(memory_format=cl)
    row: dict = {"shape": name, "cudnn_fp16_ms": measure(lambda: F.conv2d(x, wh, padding=pad))}
    pw = T.pack_weight(w, torch.float16)
    row["triton_fp16_ms"] = min(measure(lambda c=c: T.conv2d(x, pw, None, None, stride=(1, 1), pads=(pad,) * 4,
                                                              dilation=(1, 1), act=Activation.RELU, config=c))
                                for c in T.CONFIGS)
    xq = torch.randint(-128, 128, x.shape, device=dev, dtype=torch.int8).contiguous(memory_format=cl)
    pq = Q.pack_weight(w, (w.abs().amax(dim=(1, 2, 3)) / 127).tolist(), 0.05, 0, dev, x_signed=True)
    io = Q.QuantIO(0, 20.0, 0.05, 0, out_signed=True)
    per = {c.name: measure(lambda c=c: Q.conv2d(xq, pq, None, None, io, stride=(1, 1), pads=(pad,) * 4,
                                                dilation=(1, 1), act=Activation.RELU, config=c))
           for c in Q.CONFIGS}
    row["triton_int8_ms"] = min(per.values())
    row["triton_int8_per_config"] = per
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args()
    from ember.backends.cuda.libs import triton_qconv as Q
    from ember.backends.cuda.tuning import cuda_event_measure

    measure = cuda_event_measure(warmup=3, reps=20, rounds=3)
    dev = torch.device("cuda")
    rows = []
    for name, (n, cin, hw, cout, k) in {"conv3x3_64_56_b128": (128, 64, 56, 64, 3),
                                        "conv1x1_256to64_56_b128": (128, 256, 56, 64, 1)}.items():
        rows.append(conv_row(name, n, cin, hw, cout, k, measure, dev))
        print(json.dumps(rows[-1]), flush=True)
    m, kk, nn = 16384, 768, 3072
    a = torch.randn(m, kk, device=dev).half()
    b = (torch.randn(kk, nn, device=dev) / kk ** 0.5).half()
    row = {"shape": "gemm_16384x768x3072", "torch_mm_fp16_ms": measure(lambda: torch.mm(a, b))}
    a8 = torch.randint(-128, 128, (m, kk), device=dev, dtype=torch.int8)
    b8 = torch.randint(-127, 128, (kk, nn), device=dev, dtype=torch.int8)
    try:
        row["torch_int_mm_ms"] = measure(lambda: torch._int_mm(a8, b8))
        b8t = b8.t().contiguous().t()
        row["torch_int_mm_bT_ms"] = measure(lambda: torch._int_mm(a8, b8t))
    except RuntimeError as e:
        row["torch_int_mm_error"] = str(e)[:200]
    ws = (b.float().abs().amax(dim=0) / 127).tolist()
    pq = Q.pack_gemm_weight(b.float(), ws, 0.05, 0, dev, x_signed=True)
    io = Q.QuantIO(0, 20.0, 0.05, 0, out_signed=True)
    per = {c.name: measure(lambda c=c: Q.gemm(a8, pq, None, io, config=c)) for c in Q.CONFIGS}
    row["triton_int8_ms"] = min(per.values())
    row["triton_int8_per_config"] = per
    qf = Q.QuantIO(0, 20.0)
    row["triton_int8_fp16_out_ms"] = min(measure(lambda c=c: Q.gemm(a8, pq, None, qf, config=c)) for c in Q.CONFIGS)
    row["quantize_int8_ms"] = measure(lambda: Q.quantize_int8(a, 20.0, 0))
    rows.append(row)
    print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
