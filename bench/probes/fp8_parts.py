"""Times the parts of an FP8 GEMM layer (the input quantization, ``torch._scaled_mm`` with and
without bias) against fp16 ``addmm``, on BERT-base batch-128 FFN shapes. GPU only.

Measured on the H100 (2026-12-06, before the quantization kernel was fixed), ms:
16384x3072 @ 3072x768: fp16 0.111, quantize (Triton) 0.213, _scaled_mm + bias 0.066;
16384x768 @ 768x3072: fp16 0.123, quantize 0.057, _scaled_mm + bias 0.084.
"""
import sys

import torch

sys.path.insert(0, ".")
from ember.backends.cuda.libs.triton_fp8 import quantize_e4m3, quantize_e4m3_torch  # noqa: E402
from ember.backends.cuda.tuning import cuda_event_measure  # noqa: E402

#: GPU time of a call, ms (the tactic timer's launch-by-launch measure)
t = cuda_event_measure(warmup=5, reps=50, rounds=3)


def row(m: int, k: int, n: int) -> dict[str, float]:
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    x8, w8t = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0, device="cuda")
    return {"fp16_addmm": t(lambda: torch.addmm(b, x, w.t())),
            "quant_triton": t(lambda: quantize_e4m3(x, 0.5, True)),
            "quant_torch": t(lambda: quantize_e4m3_torch(x, 0.5)),
            "mm8_bias": t(lambda: torch._scaled_mm(x8, w8t, scale_a=one, scale_b=one, bias=b, out_dtype=torch.float16)),
            "mm8": t(lambda: torch._scaled_mm(x8, w8t, scale_a=one, scale_b=one, out_dtype=torch.float16))}


for m, k, n in [(16384, 3072, 768), (16384, 768, 3072)]:
    print(m, k, n, {a: round(v, 4) for a, v in row(m, k, n).items()})
