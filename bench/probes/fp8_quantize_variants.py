"""Variants of the FP8 input-quantization pass (``libs.triton_fp8``) on BERT-base b128's largest
FP8 input (16384x3072 fp16): block size, warps, int32 offsets, the NaN select. GPU only.

Measured on the H100 (2026-12-06): every variant 0.052-0.058 ms (a fp16 copy of the input: 0.070),
Ember's kernel 0.212 ms, in a CUDA graph too: its ``do_not_specialize=["N"]`` kept Triton from
knowing N % 16 == 0, so every access was scalar. Specialized since: 0.051 ms.
"""
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, ".")
from ember.backends.cuda.libs.triton_fp8 import quantize_e4m3  # noqa: E402
from ember.backends.cuda.tuning import cuda_event_measure  # noqa: E402


@triton.jit
def q_kernel(x_ptr, y_ptr, N, INV, BLOCK: tl.constexpr, WIDE: tl.constexpr, NANS: tl.constexpr):
    if WIDE:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * INV
    c = tl.minimum(tl.maximum(v, -448.0), 448.0)
    bits = c.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    if NANS:
        bits = tl.where(v != v, 0x7F, bits)
    tl.store(y_ptr + offs, bits, mask=mask)


#: GPU time of a call, ms (the tactic timer's launch-by-launch measure)
t = cuda_event_measure(warmup=5, reps=50, rounds=3)


x = torch.randn(16384, 3072, device="cuda", dtype=torch.float16)
y = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
n = x.numel()
res = {"ember": t(lambda: quantize_e4m3(x, 0.5)), "copy_fp16": t(lambda: x.clone())}
for block in (1024, 2048, 4096, 8192):
    for warps in (4, 8):
        for wide, nans in ((True, True), (False, True), (False, False)):
            res[f"b{block}w{warps}{'L' if wide else 'I'}{'N' if nans else ''}"] = t(
                lambda b=block, w=warps, i=wide, j=nans: q_kernel[(triton.cdiv(n, b),)](
                    x, y, n, 0.5, BLOCK=b, WIDE=i, NANS=j, num_warps=w))
for k, v in sorted(res.items(), key=lambda kv: kv[1]):
    print(f"{k:16s} {v:.4f} ms")

# the module's own kernel launched directly, and Ember's wrapper inside one CUDA graph (no host cost)
from ember.backends.cuda.libs import triton_fp8  # noqa: E402

direct = t(lambda: triton_fp8.quantize_e4m3_kernel[(triton.cdiv(n, 2048),)](x, y, n, 0.5, BLOCK=2048))
g = torch.cuda.CUDAGraph()
quantize_e4m3(x, 0.5)
torch.cuda.synchronize()
with torch.cuda.graph(g):
    for _ in range(10):
        quantize_e4m3(x, 0.5)
graphed = t(g.replay) / 10
print(f"module kernel direct {direct:.4f} ms; Ember's wrapper in a CUDA graph {graphed:.4f} ms")
