"""Ember's Triton implicit-GEMM 2-D convolution: writes through any output strides, fuses the
bias + residual + activation epilogue.

Why it exists: a channel slice of a channels-last Concat buffer is the matrix
``[N*H*W, Cslice]`` with row stride ``Ctot``. No library convolution reachable from PyTorch writes
such a view safely (PyTorch's cuDNN plan cache ignores output strides, see ``_packed`` in
``kernels/conv.py``), so without this kernel every Inception branch conv is computed into a
temporary and copied into its slice. This kernel computes the GEMM tile by tile and stores each
tile straight through the output's strides.

The GEMM: ``M = N*OH*OW`` output pixels (rows), ``N = Cout`` (columns), reduction
``K = KH*KW*Cin`` walked as ``(kh, kw)`` outer, ``Cin`` inner, in one flat loop of
``KH*KW*ceil(Cin/BLOCK_K)`` steps (one loop, so Triton pipelines its loads even where ``Cin`` is
a single block). For a given ``(kh, kw)`` the A tile is ``x[n, ih, iw, c0:c0+BLOCK_K]`` for each
output pixel: contiguous along channels in an NHWC input (the im2col matrix is never built;
out-of-image taps are masked to zero, which is the zero padding, asymmetric pads included). The
B tile comes from the weight pre-packed once as ``[KH*KW*Cin, Cout_pad]`` (``pack_weight``:
row ``(kh*KW + kw)*Cin + c``, columns padded with zeros to a multiple of 16, so its rows are
16-byte aligned and B loads are masked at that width: whole vectors).

- Input: any strides (read through its own; an NHWC tensor, channel stride 1, is the fast
  case: Triton specializes a stride of 1), any float dtype (converted to the weight's dtype in
  registers, so an fp32 input to an fp16 layer costs no cast pass).
- Accumulation in fp32; fp16/bf16 operands on tensor cores; fp32 operands exactly (``ieee``)
  unless the layer precision is ``tf32`` (the dot's input precision matters for fp32 operands
  only; half operands pass Triton's default).
- Epilogue in fp32: ``act(acc + bias + residual)`` (the residual read through its own strides),
  activations from ``triton_ops.ACT_CODES`` through the shared ``activate`` of
  ``triton_jit`` (none, ReLU, Clip/ReLU6, leaky ReLU, sigmoid, SiLU, hard-swish,
  hard-sigmoid, tanh, GELU erf/tanh), then one rounding to the output's dtype.
- Output: a fresh channels-last tensor, or any given ``out`` (e.g. a slice of a Concat's buffer)
  through its strides.
- **FP8** (e4m3, Hopper's FP8 tensor cores; ``pack_weight_fp8`` and ``conv2d(..., fp8=...)``):
  the weight packed once as e4m3, K-major (``[Cout, KH*KW*Cin]``, as the INT8 kernel's: Hopper's
  8-bit MMAs take K-major operands), with one scale per output channel (``sw = max|w| / 448``), the
  input quantized in registers as its tile is loaded (``x8 = e4m3(clamp(x / sx, -448, 448))``
  with the layer's calibrated per-tensor ``sx``; an output pixel whose window holds a NaN is NaN in
  every channel, as in float), e4m3 x e4m3 products accumulated
  in fp32, and ``sx * sw[c]`` applied to each column before the epilogue: the same numbers as
  ``kernels/gemm_fp8.py``'s FP8 GEMMs, with no pass over the input to quantize it.

Tile sizes come from ``CONFIGS``; each is a separate tactic of the CUDA conv layers
(``kernels/conv_triton.py``), so Ember's tactic timer and timing cache choose among them with the
layer's real output (see ``tuning.py``) and the engine file records the choice; ``BLOCK_N`` and
``BLOCK_K`` shrink to the layer's channel counts (a 16-channel input is not padded to 64).

This module imports without Triton (the kernel is defined only where Triton is installed); the
functions that launch it need Triton (or ``TRITON_INTERPRET=1`` on CPU tensors, for tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ember.backends.cuda.libs import launch, triton_modules
from ember.backends.cuda.libs.triton_fp8 import E4M3_MAX
from ember.ops.attrs import Activation

triton, tl = triton_modules()  # None where Triton cannot run here; the launchers need it


@dataclass(frozen=True)
class TileConfig:
    """Block sizes of one implicit-GEMM variant (``block_n``/``block_k`` are upper bounds: they
    shrink to the next power of two of the layer's Cout / Cin, 16 at least)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"{self.block_m}x{self.block_n}x{self.block_k}"


#: The variants offered as tactics, large tiles first. 128x128 / 128x64: batch 128 (M in the
#: tens of thousands); 64x64: mid-size; 32x64 with a deep K step: batch 1 at 14x14 and 7x7, where
#: M is 196 or 49 and small row tiles are what gives the GPU enough programs.
CONFIGS: tuple[TileConfig, ...] = (
    TileConfig(128, 128, 32, 8, 3),
    TileConfig(128, 64, 32, 4, 4),
    TileConfig(64, 64, 64, 4, 3),
    TileConfig(32, 64, 64, 4, 3),
)


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


@dataclass(frozen=True)
class PackedWeight:
    """A conv weight ``[Cout, Cin, KH, KW]`` packed as the GEMM's B matrix ``[KH*KW*Cin, cols]``
    (``cols`` = Cout rounded up to a multiple of 16, zero columns)."""

    data: torch.Tensor
    cout: int
    cin: int
    kh: int
    kw: int


def pack_weight(w: torch.Tensor, dtype: torch.dtype) -> PackedWeight:
    """Packs a 4-D conv weight once (at compile time) in ``dtype``."""
    if w.dim() != 4:
        raise ValueError(f"pack_weight: a 2-D convolution weight is 4-D [Cout, Cin, KH, KW]; "
                         f"got shape {tuple(w.shape)}")
    cout, cin, kh, kw = (int(d) for d in w.shape)
    cols = -(-cout // 16) * 16
    b = torch.zeros((kh * kw * cin, cols), dtype=dtype, device=w.device)
    b[:, :cout] = w.detach().permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).to(dtype)
    return PackedWeight(b, cout, cin, kh, kw)


@dataclass(frozen=True)
class Fp8Weight:
    """A conv weight packed as e4m3 and stored transposed, ``packed.data`` ``[rows, K]`` with ``K =
    KH*KW*Cin`` contiguous (K-major: Hopper's 8-bit tensor-core MMAs take K-major operands only;
    rows = Cout and K padded with zeros to multiples of 16), and its per-output-channel scales
    ``[rows]`` (float32; 1 for the padding rows)."""

    packed: PackedWeight
    scales: torch.Tensor


def pack_weight_fp8(w: torch.Tensor) -> Fp8Weight:
    """Packs a 4-D conv weight once as e4m3, one scale per output channel (``max|w[c]| / 448``;
    1 for an all-zero channel)."""
    if w.dim() != 4:
        raise ValueError(f"pack_weight_fp8: a 2-D convolution weight is 4-D [Cout, Cin, KH, KW]; "
                         f"got shape {tuple(w.shape)}")
    cout, cin, kh, kw = (int(d) for d in w.shape)
    w32 = w.detach().to(torch.float32)
    amax = w32.abs().amax(dim=(1, 2, 3))
    sw = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    scaled = (w32 / sw[:, None, None, None]).clamp(-E4M3_MAX, E4M3_MAX)
    k = kh * kw * cin
    rows, cols = -(-cout // 16) * 16, -(-k // 16) * 16
    data = torch.zeros((rows, cols), dtype=torch.float8_e4m3fn, device=w.device)
    data[:cout, :k] = scaled.permute(0, 2, 3, 1).reshape(cout, k).to(torch.float8_e4m3fn)
    scales = torch.ones(rows, dtype=torch.float32, device=w.device)
    scales[:cout] = sw
    return Fp8Weight(PackedWeight(data, cout, cin, kh, kw), scales)


def output_hw(h: int, w: int, kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int],
              dilation: Sequence[int]) -> tuple[int, int]:
    """Output height and width; ``pads`` = (top, left, bottom, right)."""
    oh = (h + pads[0] + pads[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def conv2d(x: torch.Tensor, weight: PackedWeight, bias: Optional[torch.Tensor],
           residual: Optional[torch.Tensor], *, stride: Sequence[int], pads: Sequence[int],
           dilation: Sequence[int], act: Activation = Activation.NONE,
           act_params: Sequence[float] = (), precision: str = "fp16",
           config: TileConfig = CONFIGS[0], out: Optional[torch.Tensor] = None,
           fp8: Optional[tuple[float, torch.Tensor]] = None) -> torch.Tensor:
    """``act(conv2d(x, weight) + bias + residual)`` into ``out`` (any strides), or into a fresh
    channels-last tensor of the weight's dtype (fp16 for an e4m3 weight); returns it.

    ``x``: ``[N, Cin, H, W]`` (any strides, any float dtype); ``bias``: ``[Cout]`` or ``None``;
    ``residual``: the output's shape (any strides) or ``None``; ``pads``: (top, left, bottom,
    right); ``precision``: the layer's (``tf32`` lets fp32 operands use TF32 tensor cores).
    ``fp8``: with an e4m3 weight (``pack_weight_fp8``), ``(sx, column scales)``: the input's
    calibrated scale and ``sx * sw`` per packed column (module docstring)."""
    from ember.backends.cuda.libs.triton_ops import ACT_CODES, epilogue_params

    if triton is None:
        raise RuntimeError("the Triton convolution needs the triton package; choose another tactic")
    is_fp8 = weight.data.dtype == torch.float8_e4m3fn
    if is_fp8 != (fp8 is not None):
        raise ValueError("Triton conv2d: an e4m3 weight needs fp8=(input scale, column scales), and only it")
    if x.dim() != 4 or x.shape[1] != weight.cin:
        raise ValueError(f"Triton conv2d: input of shape {tuple(x.shape)} does not match the weight "
                         f"({weight.cout} x {weight.cin} x {weight.kh} x {weight.kw})")
    n, _, h, w = (int(d) for d in x.shape)
    oh, ow = output_hw(h, w, (weight.kh, weight.kw), stride, pads, dilation)
    shape = (n, weight.cout, oh, ow)
    if out is None:
        out = torch.empty(shape, dtype=torch.float16 if is_fp8 else weight.data.dtype, device=x.device,
                          memory_format=torch.channels_last)
    elif tuple(out.shape) != shape:
        raise ValueError(f"Triton conv2d: out has shape {tuple(out.shape)}, the convolution gives {shape}")
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"Triton conv2d: residual of shape {tuple(residual.shape)} does not match "
                         f"the output {shape}")
    m = n * oh * ow
    if m == 0 or weight.cout == 0:
        return out
    bn = min(config.block_n, _pow2_at_least(weight.cout))
    bk = min(config.block_k, _pow2_at_least(weight.cin))
    if is_fp8:  # FP8 MMAs take K in steps of 32
        bk = max(bk, 32)
    p0, p1 = epilogue_params(act, act_params)
    res = residual if residual is not None else out
    inv_x, col_scales = (1.0 / fp8[0], fp8[1]) if fp8 is not None else (1.0, out)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(weight.cout, bn),)
    launch(conv2d_nhwc_kernel, grid,
        x, weight.data, bias if bias is not None else out, res, out, col_scales, float(inv_x),
        m, h, w, weight.cin, oh, ow, weight.cout,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), weight.data.stride(0),
        res.stride(0), res.stride(1), res.stride(2), res.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        int(stride[0]), int(stride[1]), int(pads[0]), int(pads[1]), int(dilation[0]), int(dilation[1]),
        float(p0), float(p1),
        KH=weight.kh, KW=weight.kw, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        ACT=ACT_CODES[act], INPUT_PRECISION="ieee" if precision == "fp32" else "tf32", FP8=is_fp8,
        BLOCK_M=config.block_m, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


if triton is not None:
    from ember.backends.cuda.libs.triton_jit import activate

    @triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW", "STRIDE_H", "STRIDE_W", "PAD_H",
                                   "PAD_W", "DIL_H", "DIL_W", "INV_X"])
    def conv2d_nhwc_kernel(
        x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, s_ptr, INV_X,
        M, H, W, CIN, OH, OW, COUT,
        sxn, sxc, sxh, sxw, swk,
        srn, src, srh, srw,
        syn, syc, syh, syw,
        STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
        P0, P1,
        KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
        ACT: tl.constexpr, INPUT_PRECISION: tl.constexpr, FP8: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """One ``BLOCK_M`` x ``BLOCK_N`` tile of ``y[n, co, oh, ow]`` per program (module
        docstring); the column tiles of one row tile are neighbouring programs, so they share
        the input rows in L2."""
        pid = tl.program_id(0)
        num_n = tl.cdiv(COUT, BLOCK_N)
        pid_m = pid // num_n
        pid_n = pid - pid_m * num_n
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < COUT
        ow = offs_m % OW
        t = offs_m // OW
        oh = t % OH
        nb = (t // OH).to(tl.int64)
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        x_rows = x_ptr + nb * sxn
        c_blocks = tl.cdiv(CIN, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        nan_rows = tl.zeros((BLOCK_M,), dtype=tl.int32)  # FP8: output pixels whose window holds a NaN
        for it in range(0, KH * KW * c_blocks):
            tap = it // c_blocks
            c0 = (it - tap * c_blocks) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0 + kh * DIL_H
            iw = iw0 + kw * DIL_W
            inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            cs = c0 + offs_k
            cmask = cs < CIN
            a_ptrs = x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + cs[None, :] * sxc
            a = tl.load(a_ptrs, mask=inside[:, None] & cmask[None, :], other=0.0)
            if FP8:  # stored K-major: [rows, K], the tile read transposed
                b_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * swk + (tap * CIN + cs)[:, None]
                b = tl.load(b_ptrs, mask=cmask[:, None] & mask_n[None, :], other=0.0)
            else:
                b_ptrs = w_ptr + (tap * CIN + cs)[:, None] * swk + offs_n[None, :]
                b = tl.load(b_ptrs, mask=cmask[:, None] & (offs_n < swk)[None, :], other=0.0)
            if FP8:  # the input quantized as it is loaded (saturating at the calibrated range)
                a = a.to(tl.float32)
                nan_rows = tl.maximum(nan_rows, tl.max((a != a).to(tl.int32), axis=1))
                a = tl.minimum(tl.maximum(a * INV_X, -448.0), 448.0)
                acc = tl.dot(a.to(tl.float8e4nv), b, acc)
            else:
                acc = tl.dot(a.to(b.dtype), b, acc, input_precision=INPUT_PRECISION)
        if FP8:  # sx * sw[c]: back to the layer's units; NaN in, NaN out, whatever e4m3's cast does
            acc *= tl.load(s_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
            acc = tl.where(nan_rows[:, None] > 0, float("nan"), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        cols = offs_n.to(tl.int64)
        if HAS_RES:
            r_rows = nb * srn + oh.to(tl.int64) * srh + ow.to(tl.int64) * srw
            acc += tl.load(r_ptr + r_rows[:, None] + cols[None, :] * src, mask=mask, other=0.0).to(tl.float32)
        acc = activate(acc, P0, P1, ACT)
        y_rows = nb * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
        tl.store(y_ptr + y_rows[:, None] + cols[None, :] * syc, acc.to(y_ptr.dtype.element_ty), mask=mask)
