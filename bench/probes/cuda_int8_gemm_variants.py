"""Probe (issue 20): why Ember's Triton INT8 kernel reaches about 250 int8 TOPS on the H100, and
which GEMM formulation reaches the tensor cores' int8 rate.

For BERT-base's FFN GEMM (16384 x 768 @ 768 x 3072) and ResNet-50's 1x1 256->64 layer as a GEMM
(401408 x 256 @ 256 x 64), each variant runs with the same fused epilogue as Ember's kernel
(``(acc + corr) * mult + bias``, then int8 requantized or fp16 out):

- ``ember``: ``triton_qconv.gemm`` as the engine calls it (implicit-GEMM kernel, the GEMM viewed as
  a 1x1 convolution), every tile configuration;
- ``ptr``: a plain GEMM kernel, pointer loads, grouped tile order, no K masks when K divides;
- ``tma``: the same GEMM fed by host-side TMA descriptors (``TensorDescriptor``);
- peers: ``torch.mm`` fp16, ``torch._int_mm`` (int32 out), ``torch._scaled_mm`` fp8 e4m3
  (rowwise scales, bf16 out).

Per kernel it also says whether the compiled PTX uses Hopper's ``wgmma`` (else the Ampere-style
``mma.sync``, half the rate or less). Median ms of CUDA events.

    python bench/probes/cuda_int8_gemm_variants.py [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _epilogue(acc, offs_m, offs_n, M, N, c_ptr, scm, mult_ptr, corr_ptr, bias_ptr, O_INV, O_ZP,
              OUT_Q: tl.constexpr):
    mask_n = offs_n < N
    acc += tl.load(corr_ptr + offs_n, mask=mask_n, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(mult_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * scm + offs_n[None, :]
    if OUT_Q:
        q = tl.minimum(tl.maximum(tl.floor(y * O_INV + (O_ZP + 0.5)), -128.0), 127.0)
        tl.store(ptrs, q.to(tl.int8), mask=mask)
    else:
        tl.store(ptrs, y.to(tl.float16), mask=mask)


@triton.jit
def _tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def gemm_ptr_kernel(a_ptr, b_ptr, c_ptr, mult_ptr, corr_ptr, bias_ptr, M, N, K, sam, sbn, scm, O_INV, O_ZP,
                    OUT_Q: tl.constexpr, EVEN_K: tl.constexpr, GROUP_M: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = _tile(M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    am = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    bn = tl.where(offs_n < N, offs_n, 0)
    a_ptrs = a_ptr + am[:, None] * sam + offs_k[None, :]
    b_ptrs = b_ptr + bn[None, :] * sbn + offs_k[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BK)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BK, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BK, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BK
        b_ptrs += BK
    _epilogue(acc, offs_m, offs_n, M, N, c_ptr, scm, mult_ptr, corr_ptr, bias_ptr, O_INV, O_ZP, OUT_Q)


@triton.jit
def gemm_tma_kernel(a_desc, b_desc, c_ptr, mult_ptr, corr_ptr, bias_ptr, M, N, K, scm, O_INV, O_ZP,
                    OUT_Q: tl.constexpr, GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = _tile(M, N, BM, BN, GROUP_M)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in tl.range(0, tl.cdiv(K, BK), num_stages=NUM_STAGES):
        a = a_desc.load([pid_m * BM, k * BK])
        b = b_desc.load([pid_n * BN, k * BK])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    _epilogue(acc, offs_m, offs_n, M, N, c_ptr, scm, mult_ptr, corr_ptr, bias_ptr, O_INV, O_ZP, OUT_Q)


CONFIGS = [  # BM, BN, BK, warps, stages
    (128, 128, 64, 4, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3), (128, 256, 128, 8, 3),
    (256, 128, 128, 8, 3), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 128, 128, 4, 4),
]


def uses_wgmma(compiled) -> str:
    try:
        ptx = compiled.asm["ptx"]
    except Exception as e:  # noqa: BLE001 - a probe reports what it can
        return f"? ({type(e).__name__})"
    return "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "neither")


def run_shape(name: str, m: int, k: int, n: int, measure, dev) -> dict:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from ember.backends.cuda.libs import triton_qconv as Q

    row: dict = {"shape": name, "ops_g": 2 * m * k * n / 1e9}
    a16 = torch.randn(m, k, device=dev).half()
    b16 = (torch.randn(k, n, device=dev) / k ** 0.5).half()
    row["torch_mm_fp16_ms"] = measure(lambda: torch.mm(a16, b16))
    a8 = torch.randint(-128, 128, (m, k), device=dev, dtype=torch.int8)
    bt8 = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)  # [N, K], K contiguous
    try:
        row["torch_int_mm_ms"] = measure(lambda: torch._int_mm(a8, bt8.t()))
    except RuntimeError as e:
        row["torch_int_mm_error"] = str(e)[:160]
    try:
        a_f8 = a16.to(torch.float8_e4m3fn)
        bt_f8 = b16.t().contiguous().to(torch.float8_e4m3fn)
        sa = torch.ones(m, 1, device=dev)
        sb = torch.ones(1, n, device=dev)
        row["torch_scaled_mm_fp8_rowwise_bf16_ms"] = measure(
            lambda: torch._scaled_mm(a_f8, bt_f8.t(), sa, sb, out_dtype=torch.bfloat16))
        one = torch.ones((), device=dev)
        row["torch_scaled_mm_fp8_tensor_fp16_ms"] = measure(
            lambda: torch._scaled_mm(a_f8, bt_f8.t(), one, one, out_dtype=torch.float16))
    except (RuntimeError, TypeError) as e:
        row["scaled_mm_error"] = str(e)[:200]

    ws = (b16.float().abs().amax(dim=0) / 127).tolist()
    pq = Q.pack_gemm_weight(b16.float(), ws, 0.05, 0, dev, x_signed=True)
    io = Q.QuantIO(0, 20.0, 0.05, 0, out_signed=True)
    row["ember"] = {c.name: measure(lambda c=c: Q.gemm(a8, pq, None, io, config=c)) for c in Q.CONFIGS}
    try:
        row["ember_mma"] = uses_wgmma(next(iter(Q.qconv_nhwc_kernel.device_caches[0][0].values())))
    except Exception as e:  # noqa: BLE001
        row["ember_mma"] = f"? {type(e).__name__}: {e}"[:120]

    mult = torch.rand(n, device=dev) * 1e-4  # keeps the fp16 outputs finite
    corr = torch.randint(-1000, 1000, (n,), device=dev, dtype=torch.int32)
    bias = torch.randn(n, device=dev)
    for out_q in (True, False):
        c = torch.empty(m, n, device=dev, dtype=torch.int8 if out_q else torch.float16)
        tag = "int8out" if out_q else "fp16out"
        ptr_res, tma_res = {}, {}
        for bm, bn, bk, wn, st in CONFIGS:
            bn_ = min(bn, max(16, triton.next_power_of_2(n)))
            key = f"{bm}x{bn_}x{bk}w{wn}s{st}"
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn_),)
            try:
                def ptr(bm=bm, bn_=bn_, bk=bk, wn=wn, st=st, grid=grid, c=c, out_q=out_q):
                    return gemm_ptr_kernel[grid](a8, bt8, c, mult, corr, bias, m, n, k, a8.stride(0), bt8.stride(0),
                                                 c.stride(0), 20.0, 0.0, OUT_Q=out_q, EVEN_K=k % bk == 0,
                                                 GROUP_M=8, BM=bm, BN=bn_, BK=bk, num_warps=wn, num_stages=st)
                h = ptr()
                ptr_res[key] = [measure(ptr), uses_wgmma(h)]
            except Exception as e:  # noqa: BLE001
                ptr_res[key] = f"{type(e).__name__}: {e}"[:160]
            try:
                ad = TensorDescriptor.from_tensor(a8, [bm, bk])
                bd = TensorDescriptor.from_tensor(bt8, [bn_, bk])

                def tma(ad=ad, bd=bd, bm=bm, bn_=bn_, bk=bk, wn=wn, st=st, grid=grid, c=c, out_q=out_q):
                    return gemm_tma_kernel[grid](ad, bd, c, mult, corr, bias, m, n, k, c.stride(0), 20.0, 0.0,
                                                 OUT_Q=out_q, GROUP_M=8, NUM_STAGES=st, BM=bm, BN=bn_, BK=bk,
                                                 num_warps=wn)
                h = tma()
                tma_res[key] = [measure(tma), uses_wgmma(h)]
            except Exception as e:  # noqa: BLE001
                tma_res[key] = f"{type(e).__name__}: {e}"[:160]
        row[f"ptr_{tag}"] = ptr_res
        row[f"tma_{tag}"] = tma_res
        # correctness of the best variants against torch (int32 product, same epilogue)
    ref = (torch._int_mm(a8, bt8.t()) + corr).float() * mult + bias
    c = torch.empty(m, n, device=dev, dtype=torch.float16)
    gemm_ptr_kernel[(triton.cdiv(m, 128) * triton.cdiv(n, min(128, n)),)](
        a8, bt8, c, mult, corr, bias, m, n, k, a8.stride(0), bt8.stride(0), c.stride(0), 20.0, 0.0,
        OUT_Q=False, EVEN_K=k % 64 == 0, GROUP_M=8, BM=128, BN=min(128, n), BK=64, num_warps=4, num_stages=4)
    row["ptr_max_rel_err"] = float(((c.float() - ref).abs() / ref.abs().clamp_min(1)).max())
    try:
        ad = TensorDescriptor.from_tensor(a8, [128, 64])
        bd = TensorDescriptor.from_tensor(bt8, [min(128, n), 64])
        gemm_tma_kernel[(triton.cdiv(m, 128) * triton.cdiv(n, min(128, n)),)](
            ad, bd, c, mult, corr, bias, m, n, k, c.stride(0), 20.0, 0.0, OUT_Q=False, GROUP_M=8, NUM_STAGES=4,
            BM=128, BN=min(128, n), BK=64, num_warps=4)
        row["tma_max_rel_err"] = float(((c.float() - ref).abs() / ref.abs().clamp_min(1)).max())
    except Exception as e:  # noqa: BLE001
        row["tma_max_rel_err"] = f"{type(e).__name__}: {e}"[:160]
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args()
    from ember.backends.cuda.tuning import cuda_event_measure

    measure = cuda_event_measure(warmup=3, reps=20, rounds=3)
    dev = torch.device("cuda")
    rows = []
    for name, (m, k, n) in {"bert_ffn1_16384x768x3072": (16384, 768, 3072),
                            "bert_qkv_16384x768x2304": (16384, 768, 2304),
                            "r50_1x1_256to64_b128": (128 * 56 * 56, 256, 64),
                            "r50_1x1_64to256_b128": (128 * 56 * 56, 64, 256)}.items():
        rows.append(run_shape(name, m, k, n, measure, dev))
        print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
