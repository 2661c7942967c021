"""Probe (issue 20): why ResNet-50's INT8 1x1 layers run far under the H100's memory bandwidth,
and which kernel shape fixes it.

The engine-layer table (``gpu-engine-layers-resnet-50-b256-int8-*-session14.json``) has the 1x1
"expand" layers (K = 64..512 channels in, N = 256..2048 out, an 8-bit residual, int8 out) at 1.3x
cuDNN fp16's time although they move half the bytes; the tenth session's GEMM probe had a plain
int8 GEMM of 401408 x 64 @ 64 x 256 with int8 out at about 1 TB/s. Hypothesis: the int8 epilogue
(residual load and int8 store from the tensor cores' accumulator layout) and one-tile-per-program
scheduling with a one-step reduction, not the MMAs. Variants, each with the same fused epilogue
(``(acc + corr) * mult + bias + (r - r_zp) * r_scale``, ReLU, requantized to int8):

- ``ember``: ``triton_qconv.conv2d`` as the engine calls it (1x1 NHWC), its tile configurations
  and some with fewer pipeline stages for short reductions;
- ``tma``: A, B, the residual and the output through host TMA descriptors (the output written by a
  bulk store from shared memory), one tile per program;
- ``tma_persist``: the same, persistent (one program per SM walking the tiles), with and without
  Triton's flattened tile/reduction loop (the next tile's loads issued during this tile's epilogue).

Peers in the same run: ``torch.mm`` fp16 (no residual), and the memory roofline of each layer at
3.0 TB/s. ``--interpret`` runs every variant once on small shapes with ``TRITON_INTERPRET=1`` on
the CPU and checks it against ``torch`` (no timing).

    python bench/probes/cuda_int8_epilogue_store.py [--out FILE] [--interpret | --engine-kernel]

``--engine-kernel`` (second run, after the engine's kernel took TMA operands): the engine's kernel
with TMA on and off (and on with ``EMBER_TRITON_TMA_SHIFT=1``, the shifted-box input of the KxK
layers) on the 3x3, strided 1x1 and 1x1 layers, against cuDNN fp16. ``--spatial``
(third run): two TMA forms of the stride-1 3x3 convolution against the engine's kernel and cuDNN
fp16: 4-D boxes of one image (lost on every layer on the H100), and shifted 2-D boxes of the
``[M, Cin]`` matrix with the rows outside the image set to the zero point in registers (not yet
timed on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _tile_of(tile, num_m, num_n, GROUP_M: tl.constexpr):
    width = GROUP_M * num_n
    first_m = (tile // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile % width) % size_m, (tile % width) // size_m


@triton.jit
def _finish(acc, offs_n, N, mult_ptr, corr_ptr, bias_ptr, r, R_SCALE, R_ZP, O_INV, O_ZP, RES: tl.constexpr):
    mask_n = offs_n < N
    acc += tl.load(corr_ptr + offs_n, mask=mask_n, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(mult_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if RES:
        y += (r.to(tl.float32) - R_ZP) * R_SCALE
    y = tl.maximum(y, 0.0)
    q = tl.minimum(tl.maximum(tl.floor(y * O_INV + (O_ZP + 0.5)), -128.0), 127.0)
    return q.to(tl.int8)


@triton.jit
def q1x1_tma_kernel(a_desc, b_desc, r_desc, c_desc, mult_ptr, corr_ptr, bias_ptr, M, N, K,
                    R_SCALE, R_ZP, O_INV, O_ZP, RES: tl.constexpr, GROUP_M: tl.constexpr,
                    NUM_STAGES: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    pid_m, pid_n = _tile_of(tl.program_id(0), num_m, num_n, GROUP_M)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k in tl.range(0, tl.cdiv(K, BK), num_stages=NUM_STAGES):
        a = a_desc.load([pid_m * BM, k * BK])
        b = b_desc.load([pid_n * BN, k * BK])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    r = r_desc.load([pid_m * BM, pid_n * BN]) if RES else acc
    offs_n = pid_n * BN + tl.arange(0, BN)
    c_desc.store([pid_m * BM, pid_n * BN],
                 _finish(acc, offs_n, N, mult_ptr, corr_ptr, bias_ptr, r, R_SCALE, R_ZP, O_INV, O_ZP, RES))


@triton.jit
def q1x1_tma_persistent_kernel(a_desc, b_desc, r_desc, c_desc, mult_ptr, corr_ptr, bias_ptr, M, N, K,
                               R_SCALE, R_ZP, O_INV, O_ZP, RES: tl.constexpr, GROUP_M: tl.constexpr,
                               NUM_STAGES: tl.constexpr, FLATTEN: tl.constexpr, NUM_SMS: tl.constexpr,
                               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    start = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    num_tiles = num_m * num_n
    # the epilogue's tile index runs separately from the loads', so a flattened loop can issue the
    # next tile's loads before this tile's epilogue
    tile_c = start - NUM_SMS
    ki = -1
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    pid_m = 0
    pid_n = 0
    for _ in tl.range(0, k_tiles * tl.cdiv(num_tiles - start, NUM_SMS), flatten=FLATTEN, num_stages=NUM_STAGES):
        ki = tl.where(ki == k_tiles - 1, 0, ki + 1)
        if ki == 0:
            tile = start + NUM_SMS * (_ // k_tiles)
            pid_m, pid_n = _tile_of(tile, num_m, num_n, GROUP_M)
        a = a_desc.load([pid_m * BM, ki * BK])
        b = b_desc.load([pid_n * BN, ki * BK])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
        if ki == k_tiles - 1:
            tile_c += NUM_SMS
            cm, cn = _tile_of(tile_c, num_m, num_n, GROUP_M)
            r = r_desc.load([cm * BM, cn * BN]) if RES else acc
            offs_n = cn * BN + tl.arange(0, BN)
            c_desc.store([cm * BM, cn * BN],
                         _finish(acc, offs_n, N, mult_ptr, corr_ptr, bias_ptr, r, R_SCALE, R_ZP, O_INV, O_ZP, RES))
            acc = tl.zeros((BM, BN), dtype=tl.int32)


@triton.jit
def q3x3_spatial_tma_kernel(x_desc, w_desc, y_desc, mult_ptr, corr_ptr, wsum_ptr, bias_ptr, H, W, CIN, COUT,
                            X_ZP, O_INV, O_ZP, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
                            NUM_STAGES: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr,
                            BK: tl.constexpr):
    """A stride-1 convolution's output tile of ``BH`` x ``BW`` pixels of one image and ``BN``
    channels: each tap's input box loaded by a 4-D TMA descriptor ``[N, H, W, C]`` (zeros outside
    the image, then corrected to the zero point with the tap's weight sums), the output stored by
    one 4-D bulk store."""
    tiles_w = tl.cdiv(W, BW)
    tiles_h = tl.cdiv(H, BH)
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    img = pid // (tiles_h * tiles_w)
    rest = pid % (tiles_h * tiles_w)
    oh0 = (rest // tiles_w) * BH
    ow0 = (rest % tiles_w) * BW
    c_blocks = tl.cdiv(CIN, BK)
    acc = tl.zeros((BH * BW, BN), dtype=tl.int32)
    for it in tl.range(0, KH * KW * c_blocks, num_stages=NUM_STAGES):
        tap = it // c_blocks
        c0 = (it - tap * c_blocks) * BK
        kh = tap // KW
        kw = tap - kh * KW
        a = x_desc.load([img, oh0 + kh - PAD, ow0 + kw - PAD, c0]).reshape(BH * BW, BK)
        b = w_desc.load([pid_n * BN, tap * CIN + c0])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < COUT
    rows = tl.arange(0, BH * BW)
    oh = oh0 + rows // BW
    ow = ow0 + rows % BW
    fix = tl.zeros((BH * BW, BN), dtype=tl.int32)
    for t in tl.static_range(KH * KW):  # taps outside the image read 0, the zero point is the real 0
        ih = oh + (t // KW) - PAD
        iw = ow + (t % KW) - PAD
        out_of = (ih < 0) | (ih >= H) | (iw < 0) | (iw >= W)
        ws = tl.load(wsum_ptr + t * COUT + offs_n, mask=mask_n, other=0)
        fix += tl.where(out_of[:, None], ws[None, :], 0)
    acc += fix * X_ZP + tl.load(corr_ptr + offs_n, mask=mask_n, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(mult_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y = tl.maximum(y, 0.0)
    q = tl.minimum(tl.maximum(tl.floor(y * O_INV + (O_ZP + 0.5)), -128.0), 127.0).to(tl.int8)
    y_desc.store([img, oh0, ow0, pid_n * BN], q.reshape(1, BH, BW, BN))


@triton.jit
def q3x3_shift_tma_kernel(x_desc, w_desc, y_desc, mult_ptr, corr_ptr, bias_ptr, M, H, W, CIN, COUT,
                          X_ZPI, O_INV, O_ZP, KH: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
                          NUM_STAGES: tl.constexpr, GROUP_M: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                          BK: tl.constexpr):
    """A stride-1 convolution as shifted 2-D boxes: for tap (kh, kw) the input rows of output
    pixels ``m .. m+BM`` are rows ``m + (kh-PAD)*W + (kw-PAD) ..`` of the ``[M, Cin]`` matrix, one
    TMA box (zeros before row 0 and past row M); the rows whose tap falls outside the image (the
    box wrapped to a neighbouring image row) are set to the zero point in registers before the
    MMA. No reshape, no per-thread gather."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(COUT, BN)
    pid_m, pid_n = _tile_of(tl.program_id(0), num_m, num_n, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    ow = offs_m % W
    oh = (offs_m // W) % H
    c_blocks = tl.cdiv(CIN, BK)
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for it in tl.range(0, KH * KW * c_blocks, num_stages=NUM_STAGES):
        tap = it // c_blocks
        c0 = (it - tap * c_blocks) * BK
        dh = tap // KW - PAD
        dw = tap % KW - PAD
        a = x_desc.load([pid_m * BM + dh * W + dw, c0])
        ih = oh + dh
        iw = ow + dw
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pad = tl.where((c0 + offs_k < CIN)[None, :], X_ZPI, 0).to(tl.int8)  # past Cin: the box's zeros
        a = tl.where(inside[:, None], a, pad)
        b = w_desc.load([pid_n * BN, tap * CIN + c0])
        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < COUT
    acc += tl.load(corr_ptr + offs_n, mask=mask_n, other=0)[None, :]
    y = acc.to(tl.float32) * tl.load(mult_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    y = tl.maximum(y, 0.0)
    q = tl.minimum(tl.maximum(tl.floor(y * O_INV + (O_ZP + 0.5)), -128.0), 127.0).to(tl.int8)
    y_desc.store([pid_m * BM, pid_n * BN], q)


SHIFT_CONFIGS = [  # BM, BN, BK, warps, stages
    (128, 64, 64, 4, 3), (128, 128, 64, 4, 4), (128, 128, 128, 8, 3), (64, 64, 64, 4, 3), (128, 64, 128, 4, 3),
    (256, 64, 64, 8, 3),
]


def uses_wgmma(fn) -> str:
    """Whether the last compiled variant of ``fn`` issues Hopper's ``wgmma`` (else ``mma.sync``)."""
    try:
        cache = fn.device_caches[0][0]
        ptx = list(cache.values())[-1].asm["ptx"]
    except Exception as e:  # noqa: BLE001 - a probe reports what it can
        return f"? {type(e).__name__}"
    return "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "neither")


SPATIAL_CONFIGS = [  # BH, BW, BN, BK, warps, stages
    (8, 16, 64, 64, 4, 3), (16, 8, 64, 64, 4, 3), (8, 8, 64, 64, 4, 3), (8, 16, 128, 64, 8, 3),
    (8, 8, 128, 64, 4, 3), (8, 16, 128, 128, 8, 3), (4, 8, 128, 128, 4, 3),
]


def spatial_rows(dev, measure, shapes: dict) -> list[dict]:
    """The 4-D TMA 3x3 prototype against the engine's kernel and cuDNN fp16 (``measure`` None:
    numerics only, the interpreter)."""
    rows = [_spatial_row(name, shape, dev, measure) for name, shape in shapes.items()]
    if measure is not None:
        print(f"\n{'3x3 layer':14s} {'cudnn16':>8s} {'engine':>8s} {'spatial':>8s} {'shifted':>8s}")
        for r in rows:
            print(f"{r['shape']:14s} {r['cudnn_fp16_ms']:8.3f} {r['engine']:8.3f} {best(r['spatial_tma'])[1]:8.3f}"
                  f" {best(r['shift_tma'])[1]:8.3f}  {best(r['spatial_tma'])[0]} / {best(r['shift_tma'])[0]}")
    return rows


def _spatial_row(name: str, shape: tuple, dev, measure) -> dict:
    import torch.nn.functional as F
    from triton.tools.tensor_descriptor import TensorDescriptor

    from ember.backends.cuda.libs import triton_qconv as Q

    n, cin, h, w, cout = shape
    g = torch.Generator().manual_seed(2)
    xzp, x_scale, o_scale, ozp = -7, 0.05, 0.08, -128
    xq = torch.randint(-128, 128, (n, cin, h, w), generator=g, dtype=torch.int8)
    wt = torch.randn(cout, cin, 3, 3, generator=g) / (cin * 9) ** 0.5
    ws = (wt.abs().amax(dim=(1, 2, 3)) / 127).tolist()
    packed = Q.pack_weight(wt, ws, x_scale, xzp, dev, x_signed=True)
    bias = torch.randn(cout, generator=g).to(dev)
    wq = packed.data[:, :9 * cin].view(cout, 3, 3, cin).to(torch.int32)
    wsum = wq.sum(dim=3).permute(1, 2, 0).reshape(9, cout).contiguous()  # [tap, Cout]
    x = xq.to(dev).contiguous(memory_format=torch.channels_last)
    io = Q.QuantIO(xzp, 1 / x_scale, o_scale, ozp, out_signed=True)
    ref = torch.empty(n, cout, h, w, dtype=torch.int8, device=dev, memory_format=torch.channels_last)
    Q.conv2d(x, packed, bias, None, io, stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), act=_relu(),
             out=ref)
    row: dict = {"shape": name}
    if measure is not None:
        x16 = x.half()
        w16 = wt.half().to(dev).contiguous(memory_format=torch.channels_last)
        row["cudnn_fp16_ms"] = measure(lambda x16=x16, w16=w16: F.conv2d(x16, w16, None, 1, 1))
        row["engine"] = min(measure(lambda c=c: Q.conv2d(x, packed, bias, None, io, stride=(1, 1),
                                                         pads=(1, 1, 1, 1), dilation=(1, 1), act=_relu(),
                                                         config=c, out=ref)) for c in Q.CONFIGS)
    xn = x.permute(0, 2, 3, 1)  # [N, H, W, C] view, contiguous
    res: dict = {}
    for bh, bw, bn, bk, wn, st in SPATIAL_CONFIGS:
        bn_ = min(bn, max(16, triton.next_power_of_2(cout)))
        bk_ = min(bk, max(32, triton.next_power_of_2(cin)))
        key = f"{bh}x{bw}x{bn_}x{bk_}w{wn}s{st}"
        y = torch.empty(n, cout, h, w, dtype=torch.int8, device=dev, memory_format=torch.channels_last)
        try:
            xd = TensorDescriptor(xn, list(xn.shape), list(xn.stride()), [1, bh, bw, bk_])
            wd = TensorDescriptor.from_tensor(packed.data, [bn_, bk_])
            yn = y.permute(0, 2, 3, 1)
            yd = TensorDescriptor(yn, list(yn.shape), list(yn.stride()), [1, bh, bw, bn_])
            grid = (n * triton.cdiv(h, bh) * triton.cdiv(w, bw), triton.cdiv(cout, bn_))

            def f(xd=xd, wd=wd, yd=yd, grid=grid, bh=bh, bw=bw, bn_=bn_, bk_=bk_, wn=wn, st=st):
                q3x3_spatial_tma_kernel[grid](xd, wd, yd, packed.mult, packed.corr, wsum, bias, h, w, cin, cout,
                                              xzp, 1 / o_scale, float(ozp), KH=3, KW=3, PAD=1, NUM_STAGES=st,
                                              BH=bh, BW=bw, BN=bn_, BK=bk_, num_warps=wn)
            f()
            bad = int(((y.to(torch.int32) - ref.to(torch.int32)).abs() > 1).sum())
            res[key] = {"bad": bad} if measure is None else {"ms": measure(f), "bad": bad}
        except Exception as e:  # noqa: BLE001 - a probe reports what it can
            res[key] = f"{type(e).__name__}: {e}"[:240]
        if measure is None:
            break
    row["spatial_tma"] = res
    if measure is not None:
        row["spatial_mma"] = uses_wgmma(q3x3_spatial_tma_kernel)
    shift: dict = {}
    x2 = xn.reshape(n * h * w, cin)
    y2 = torch.empty(n * h * w, cout, dtype=torch.int8, device=dev)
    want = ref.permute(0, 2, 3, 1).reshape(n * h * w, cout).to(torch.int32)
    for bm, bn, bk, wn, st in SHIFT_CONFIGS:
        bn_ = min(bn, max(16, triton.next_power_of_2(cout)))
        bk_ = min(bk, max(32, triton.next_power_of_2(cin)))
        key = f"{bm}x{bn_}x{bk_}w{wn}s{st}"
        try:
            xd = TensorDescriptor.from_tensor(x2, [bm, bk_])
            wd = TensorDescriptor.from_tensor(packed.data, [bn_, bk_])
            yd = TensorDescriptor.from_tensor(y2, [bm, bn_])
            grid = (triton.cdiv(n * h * w, bm) * triton.cdiv(cout, bn_),)

            def g(xd=xd, wd=wd, yd=yd, grid=grid, bm=bm, bn_=bn_, bk_=bk_, wn=wn, st=st):
                q3x3_shift_tma_kernel[grid](xd, wd, yd, packed.mult, packed.corr, bias, n * h * w, h, w, cin, cout,
                                            xzp, 1 / o_scale, float(ozp), KH=3, KW=3, PAD=1, NUM_STAGES=st,
                                            GROUP_M=8, BM=bm, BN=bn_, BK=bk_, num_warps=wn)
            y2.fill_(0)
            g()
            bad = int(((y2.to(torch.int32) - want).abs() > 1).sum())
            shift[key] = {"bad": bad} if measure is None else {"ms": measure(g), "bad": bad}
        except Exception as e:  # noqa: BLE001 - a probe reports what it can
            shift[key] = f"{type(e).__name__}: {e}"[:240]
        if measure is None and len(shift) == 2:
            break
    row["shift_tma"] = shift
    if measure is not None:
        row["shift_mma"] = uses_wgmma(q3x3_shift_tma_kernel)
    print(json.dumps(row), flush=True)
    return row


SPATIAL_SHAPES = {"l1_3x3_64": (256, 64, 56, 56, 64), "l2_3x3_128": (256, 128, 28, 28, 128),
                  "l3_3x3_256": (256, 256, 14, 14, 256), "l4_3x3_512": (256, 512, 7, 7, 512)}
SPATIAL_SMALL = {"s_3x3": (2, 32, 9, 11, 48), "s_3x3_c80": (1, 80, 7, 6, 48), "s_3x3_c64": (3, 64, 5, 13, 64)}

SHAPES = {  # name: (M, K, N, residual) at batch 256 (ResNet-50's 1x1 layers, stride 1)
    "l1_expand_64to256_res": (256 * 56 * 56, 64, 256, True),
    "l1_reduce_256to64": (256 * 56 * 56, 256, 64, False),
    "l2_expand_128to512_res": (256 * 28 * 28, 128, 512, True),
    "l2_reduce_512to128": (256 * 28 * 28, 512, 128, False),
    "l3_expand_256to1024_res": (256 * 14 * 14, 256, 1024, True),
    "l3_reduce_1024to256": (256 * 14 * 14, 1024, 256, False),
    "l4_expand_512to2048_res": (256 * 7 * 7, 512, 2048, True),
    "l4_reduce_2048to512": (256 * 7 * 7, 2048, 512, False),
}
SMALL = {"small_res": (1000, 64, 96, True), "small": (257, 96, 64, False), "small_2n": (700, 128, 320, True)}

EMBER_EXTRA = [  # BM, BN, BK, warps, stages: short-reduction variants of the engine's kernel
    (128, 128, 64, 4, 2), (128, 256, 64, 8, 2), (64, 256, 64, 4, 2), (256, 128, 64, 8, 2), (64, 128, 64, 4, 2),
]
TMA_CONFIGS = [  # BM, BN, BK, warps, stages
    (128, 128, 64, 4, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (64, 256, 64, 4, 3), (256, 128, 64, 8, 3),
    (128, 64, 64, 4, 3), (128, 64, 128, 4, 3),
]


def reference(a8, bt8, r8, mult, corr, bias, rs, rzp, o_inv, ozp):
    acc = (a8.double() @ bt8.double().t()) + corr.double()
    y = acc.float() * mult + bias
    if r8 is not None:
        y = y + (r8.float() - rzp) * rs
    y = torch.relu(y)
    return torch.clamp(torch.floor(y * o_inv + (ozp + 0.5)), -128, 127).to(torch.int8)


def run_shape(name, m, k, n, res, dev, measure, interpret: bool) -> dict:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from ember.backends.cuda.libs import triton_qconv as Q
    from ember.backends.cuda.libs.triton_conv import TileConfig

    g = torch.Generator().manual_seed(0)
    a8 = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8).to(dev)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    ws = (w.abs().amax(dim=1) / 127).tolist()
    x_scale, o_scale, rs, rzp = 0.05, 0.08, 0.07, -3
    pq = Q.pack_weight(w[:, :, None, None], ws, x_scale, 0, dev, x_signed=True)
    bias = (torch.randn(n, generator=g) * 0.5).to(dev)
    r8 = torch.randint(-128, 128, (m, n), generator=g, dtype=torch.int8).to(dev) if res else None
    io = Q.QuantIO(0, 1 / x_scale, o_scale, 0, rs, rzp, out_signed=True)
    bt8 = pq.data[:, :k].contiguous()
    ref = reference(a8.cpu(), bt8.cpu(), None if r8 is None else r8.cpu(), pq.mult.cpu(), pq.corr.cpu(), bias.cpu(),
                    rs, rzp, 1 / o_scale, 0)
    row: dict = {"shape": name, "M": m, "K": k, "N": n, "residual": res}
    moved = m * k + m * n * (2 if res else 1) + n * k
    row["roofline_ms_3TBps"] = moved / 3.0e12 * 1e3
    row["bytes_mb"] = moved / 1e6

    def check(out) -> int:
        return int(((out.cpu().to(torch.int32) - ref.to(torch.int32)).abs() > 1).sum())

    if not interpret:
        a16 = a8.half()
        b16 = w.t().contiguous().half().to(dev)
        row["torch_mm_fp16_ms"] = measure(lambda: torch.mm(a16, b16))

    x4 = a8.view(m, 1, 1, k).permute(0, 3, 1, 2)  # [m, k, 1, 1] channels-last: m images of one pixel
    r4 = None if r8 is None else r8.view(m, 1, 1, n).permute(0, 3, 1, 2)
    ember: dict = {}
    cfgs = [(c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages) for c in Q.CONFIGS] + EMBER_EXTRA
    for bm, bn, bk, wn, st in cfgs:
        cfg = TileConfig(bm, bn, bk, wn, st)
        out = torch.empty(m, 1, 1, n, dtype=torch.int8, device=dev).permute(0, 3, 1, 2)

        def f(cfg=cfg, out=out):
            return Q.conv2d(x4, pq, bias, r4, io, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                            act=_relu(), config=cfg, out=out)
        key = f"{bm}x{bn}x{bk}w{wn}s{st}"
        try:
            f()
            bad = check(out.permute(0, 2, 3, 1).reshape(m, n))
            ember[key] = {"bad": bad} if interpret else {"ms": measure(f), "bad": bad}
        except Exception as e:  # noqa: BLE001 - a probe reports what it can
            ember[key] = f"{type(e).__name__}: {e}"[:200]
        if interpret:
            break
    row["ember"] = ember

    nsm = 4 if interpret else torch.cuda.get_device_properties(dev).multi_processor_count
    for variant in ("tma", "tma_persist", "tma_persist_flat"):
        res_v: dict = {}
        for bm, bn, bk, wn, st in TMA_CONFIGS:
            bn_ = min(bn, max(16, triton.next_power_of_2(n)))
            bk_ = min(bk, max(32, triton.next_power_of_2(k)))
            key = f"{bm}x{bn_}x{bk_}w{wn}s{st}"
            if key in res_v:
                continue
            c = torch.empty(m, n, dtype=torch.int8, device=dev)
            try:
                ad = TensorDescriptor.from_tensor(a8, [bm, bk_])
                bd = TensorDescriptor.from_tensor(pq.data, [bn_, bk_])
                rd = TensorDescriptor.from_tensor(r8 if r8 is not None else c, [bm, bn_])
                cd = TensorDescriptor.from_tensor(c, [bm, bn_])
                common = (ad, bd, rd, cd, pq.mult, pq.corr, bias, m, n, k, rs, float(rzp), 1 / o_scale, 0.0)
                tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn_)
                if variant == "tma":
                    def f(common=common, tiles=tiles, bm=bm, bn_=bn_, bk_=bk_, wn=wn, st=st):
                        q1x1_tma_kernel[(tiles,)](*common, RES=res, GROUP_M=8, NUM_STAGES=st, BM=bm, BN=bn_, BK=bk_,
                                                  num_warps=wn)
                else:
                    flat = variant == "tma_persist_flat"

                    def f(common=common, tiles=tiles, bm=bm, bn_=bn_, bk_=bk_, wn=wn, st=st, flat=flat):
                        q1x1_tma_persistent_kernel[(min(nsm, tiles),)](
                            *common, RES=res, GROUP_M=8, NUM_STAGES=st, FLATTEN=flat, NUM_SMS=min(nsm, tiles),
                            BM=bm, BN=bn_, BK=bk_, num_warps=wn)
                f()
                bad = check(c)
                res_v[key] = {"bad": bad} if interpret else {"ms": measure(f), "bad": bad}
            except Exception as e:  # noqa: BLE001
                res_v[key] = f"{type(e).__name__}: {e}"[:200]
            if interpret:
                break
        row[variant] = res_v
    return row


CONV_SHAPES = {  # name: (n, cin, h, w, cout, k, stride, pad) at batch 256: the 3x3 and strided 1x1 layers
    "l1_3x3_64": (256, 64, 56, 56, 64, 3, 1, 1),
    "l2_3x3_128": (256, 128, 28, 28, 128, 3, 1, 1),
    "l3_3x3_256": (256, 256, 14, 14, 256, 3, 1, 1),
    "l4_3x3_512": (256, 512, 7, 7, 512, 3, 1, 1),
    "l2_down_1x1_s2_256to512": (256, 256, 56, 56, 512, 1, 2, 0),
    "l1_expand_64to256_res": (256, 64, 56, 56, 256, 1, 1, 0),
    "l1_reduce_256to64": (256, 256, 56, 56, 64, 1, 1, 0),
}


def engine_kernel_rows(dev, measure) -> list[dict]:
    """The engine's kernel (``triton_qconv.conv2d``, after this probe's first run: TMA operands
    where they apply) with TMA on and off (``EMBER_TRITON_TMA``), every tile configuration, against
    cuDNN fp16 (``F.conv2d`` channels-last, no epilogue)."""
    rows = [_engine_row(name, shape, dev, measure) for name, shape in CONV_SHAPES.items()]
    print(f"\n{'layer (engine kernel)':28s} {'cudnn16':>8s} {'tma on':>8s} {'tma off':>8s} {'shifted':>8s}")
    for r in rows:
        on, off, sh = (min((v for v in r[k].values() if isinstance(v, float)), default=float("nan"))
                       for k in ("tma_on", "tma_off", "tma_shift"))
        print(f"{r['shape']:28s} {r['cudnn_fp16_ms']:8.3f} {on:8.3f} {off:8.3f} {sh:8.3f}")
    return rows


def _engine_row(name: str, shape: tuple, dev, measure) -> dict:
    import torch.nn.functional as F

    from ember.backends.cuda.libs import triton_qconv as Q

    n, cin, h, w, cout, k, stride, pad = shape
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (n, cin, h, w), generator=g, dtype=torch.int8).to(dev).contiguous(
        memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    packed = Q.pack_weight(wt, (wt.abs().amax(dim=(1, 2, 3)) / 127).tolist(), 0.05, -3, dev, x_signed=True)
    bias = torch.randn(cout, generator=g).to(dev)
    oh, ow = Q.output_hw(h, w, (k, k), (stride, stride), (pad,) * 4, (1, 1))
    res = name.endswith("_res")
    r = (torch.randint(-128, 128, (n, cout, oh, ow), generator=g, dtype=torch.int8).to(dev)
         .contiguous(memory_format=torch.channels_last) if res else None)
    io = Q.QuantIO(-3, 20.0, 0.08, -128, 0.07, 2, out_signed=True)
    out = torch.empty(n, cout, oh, ow, dtype=torch.int8, device=dev, memory_format=torch.channels_last)
    x16 = x.half()
    w16 = wt.half().to(dev).contiguous(memory_format=torch.channels_last)
    row: dict = {"shape": name, "cudnn_fp16_ms": measure(lambda: F.conv2d(x16, w16, None, stride, pad))}
    first: dict = {}
    for tma in ("1", "0", "shift"):  # TMA on, off, on with the shifted-box input of KxK layers
        os.environ["EMBER_TRITON_TMA"] = "0" if tma == "0" else "1"
        os.environ["EMBER_TRITON_TMA_SHIFT"] = "1" if tma == "shift" else "0"
        times = {}
        for cfg in Q.CONFIGS:
            def f(cfg=cfg):
                Q.conv2d(x, packed, bias, r, io, stride=(stride, stride), pads=(pad,) * 4, dilation=(1, 1),
                         act=_relu(), config=cfg, out=out)
            try:
                f()
                if cfg == Q.CONFIGS[0]:
                    first[tma] = out.clone()
                times[cfg.name] = measure(f)
            except Exception as e:  # noqa: BLE001 - a probe reports what it can
                times[cfg.name] = f"{type(e).__name__}: {e}"[:200]
        row[{"1": "tma_on", "0": "tma_off", "shift": "tma_shift"}[tma]] = times
    os.environ.pop("EMBER_TRITON_TMA", None)
    os.environ.pop("EMBER_TRITON_TMA_SHIFT", None)
    row["tma_on_equals_off"] = "1" in first and "0" in first and bool(torch.equal(first["1"], first["0"]))
    row["shift_equals_off"] = "shift" in first and "0" in first and bool(torch.equal(first["shift"], first["0"]))
    print(json.dumps(row), flush=True)
    return row


def _relu():
    from ember.ops.attrs import Activation

    return Activation.RELU


def best(d: dict) -> tuple[str, float]:
    ok = [(k, v["ms"]) for k, v in d.items() if isinstance(v, dict) and "ms" in v and v["bad"] == 0]
    return min(ok, key=lambda kv: kv[1]) if ok else ("-", float("nan"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--interpret", action="store_true", help="check every variant on the CPU (TRITON_INTERPRET=1)")
    p.add_argument("--engine-kernel", action="store_true",
                   help="only the engine's kernel with TMA on and off, on the 3x3 and 1x1 layers")
    p.add_argument("--spatial", action="store_true",
                   help="only the 4-D TMA 3x3 prototype against the engine's kernel and cuDNN fp16")
    args = p.parse_args()
    if args.spatial:
        if args.interpret:
            spatial_rows(torch.device("cpu"), None, SPATIAL_SMALL)
            return
        from ember.backends.cuda.tuning import cuda_event_measure

        rows = spatial_rows(torch.device("cuda"), cuda_event_measure(warmup=3, reps=20, rounds=3), SPATIAL_SHAPES)
        if args.out:
            Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                  "triton": triton.__version__, "spatial": rows}, indent=1))
        return
    if args.engine_kernel:
        from ember.backends.cuda.tuning import cuda_event_measure

        rows = engine_kernel_rows(torch.device("cuda"), cuda_event_measure(warmup=3, reps=20, rounds=3))
        if args.out:
            Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                  "triton": triton.__version__, "engine_kernel": rows}, indent=1))
        return
    if args.interpret:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--interpret needs TRITON_INTERPRET=1 in the environment (set before Triton loads)")
        dev, measure, shapes = torch.device("cpu"), None, SMALL
    else:
        from ember.backends.cuda.tuning import cuda_event_measure

        dev, measure, shapes = torch.device("cuda"), cuda_event_measure(warmup=3, reps=20, rounds=3), SHAPES
    rows = []
    for name, (m, k, n, res) in shapes.items():
        rows.append(run_shape(name, m, k, n, res, dev, measure, args.interpret))
        print(json.dumps(rows[-1]), flush=True)
    if not args.interpret:
        print(f"\n{'shape':28s} {'roof':>6s} {'fp16mm':>7s} {'ember(cur)':>10s} {'ember+':>7s} {'tma':>7s} "
              f"{'persist':>7s} {'flat':>7s}")
        ncur = len(__import__("ember.backends.cuda.libs.triton_qconv", fromlist=["CONFIGS"]).CONFIGS)
        for r in rows:
            cur = dict(list(r["ember"].items())[:ncur])
            variants = ("ember", "tma", "tma_persist", "tma_persist_flat")
            winner = min((best(r[v]) for v in variants), key=lambda kv: kv[1])
            print(f"{r['shape']:28s} {r['roofline_ms_3TBps']:6.3f} {r['torch_mm_fp16_ms']:7.3f} {best(cur)[1]:10.3f} "
                  f"{best(r['ember'])[1]:7.3f} {best(r['tma'])[1]:7.3f} {best(r['tma_persist'])[1]:7.3f} "
                  f"{best(r['tma_persist_flat'])[1]:7.3f}  best: {winner}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                                              "torch": torch.__version__, "triton": triton.__version__,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
