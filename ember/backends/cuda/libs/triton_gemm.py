"""A GEMM with the whole epilogue fused: ``act(x @ W^T + bias)`` in one Triton
kernel, written through any row stride.

cuBLASLt's epilogues (``torch._addmm_activation``) cover bias + ReLU and bias + tanh-GELU only, so a
FusedGemm with erf-GELU (BERT's FFN), SiLU, sigmoid, clip ... runs cuBLAS and then a second pass
over its output (``cublas_triton``: 0.87 ms of GELU per BERT-base batch-128 forward on the H100).
This kernel applies any activation of ``triton_jit.activate`` in registers before the one store.

- ``x``: ``[M, K]`` fp16/bf16 (or fp32, multiplied in full precision or TF32), its rows at any
  stride (K contiguous); ``weight``: ``[N, K]``
  (``F.linear``'s layout, K contiguous: the B operand K-major, as Hopper's MMA takes it);
  ``bias``: ``[N]`` or None; the product accumulates in fp32, the epilogue computes in fp32 and
  rounds once to the output's dtype.
- Tiles in grouped order (``GROUP_M`` row blocks walk the columns together, for L2 reuse); no
  masks on the reduction where ``K`` divides the tile; pointers move by one scalar per step (a
  loop without tensor-wide index math: see ``triton_qconv``'s note on what that costs).

Tile sizes come from ``CONFIGS``, each a tactic variant of ``kernels/gemm.py``'s ``triton_gemm``
timed by Ember's tactic timer. The module imports without Triton; CI checks the numerics under
Triton's interpreter.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ember.backends.cuda.libs import launch, triton_modules
from ember.backends.cuda.libs.triton_conv import TileConfig
from ember.ops.attrs import Activation

triton, tl = triton_modules()  # None where Triton cannot run here; the launchers need it

#: Variants: large tiles for batch-128 transformers (M in the tens of thousands), a narrow one for
#: small N, a small-M one for batch 1.
CONFIGS: tuple[TileConfig, ...] = (
    TileConfig(128, 128, 64, 4, 4),
    TileConfig(128, 256, 64, 8, 3),
    TileConfig(128, 64, 64, 4, 4),
    TileConfig(32, 64, 128, 4, 3),
)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
           act: Activation = Activation.NONE, act_params: Sequence[float] = (),
           config: TileConfig = CONFIGS[0], out: Optional[torch.Tensor] = None,
           tf32: bool = False, scale: Optional[float] = None) -> torch.Tensor:
    """``act(scale * (x @ weight.T) + bias)`` of ``x`` ``[M, K]`` into ``out`` ``[M, N]`` (rows at
    any stride, columns contiguous) or a fresh tensor of ``x``'s dtype (fp16 for float8 operands);
    returns it. fp32 operands multiply in full precision (``ieee``), or in TF32 with ``tf32``;
    float8e4m3fn operands (an FP8 layer's quantized input and weight) on the FP8 tensor cores,
    ``scale`` then being the product of their two per-tensor scales."""
    from ember.backends.cuda.libs.triton_ops import ACT_CODES, epilogue_params

    if triton is None:
        raise RuntimeError("the Triton GEMM needs the triton package; choose another tactic")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"Triton GEMM: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not multiply "
                         f"(x is [M, K], weight [N, K])")
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    m, k = (int(d) for d in x.shape)
    n = int(weight.shape[0])
    fp8 = x.dtype == torch.float8_e4m3fn
    if fp8 != (weight.dtype == torch.float8_e4m3fn):
        raise ValueError(f"Triton GEMM: x is {x.dtype} and weight {weight.dtype}; both are float8_e4m3fn or neither")
    if out is None:
        out = torch.empty((m, n), dtype=torch.float16 if fp8 else x.dtype, device=x.device)
    elif tuple(out.shape) != (m, n) or (n > 1 and out.stride(1) != 1):
        raise ValueError(f"Triton GEMM: out {tuple(out.shape)} (strides {out.stride()}) is not an [M={m}, N={n}] "
                         f"matrix with contiguous columns")
    if m == 0 or n == 0:
        return out
    bn = min(config.block_n, max(16, 1 << (n - 1).bit_length()))
    bk = min(config.block_k, max(32 if fp8 else 16, 1 << (k - 1).bit_length()))  # FP8 MMA: K in 32s
    p0, p1 = epilogue_params(act, act_params)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, bn),)
    launch(gemm_epilogue_kernel, grid,
        x, weight, bias if bias is not None else weight, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0), float(p0), float(p1), float(scale or 1.0),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, ACT=ACT_CODES[act], EVEN_K=k % bk == 0, GROUP_M=8,
        PRECISION="tf32" if tf32 else "ieee",
        BLOCK_M=config.block_m, BLOCK_N=bn, BLOCK_K=bk, num_warps=config.num_warps, num_stages=config.num_stages)
    return out


if triton is not None:
    from ember.backends.cuda.libs.triton_jit import activate, grouped_tile

    @triton.jit(do_not_specialize=["M", "P0", "P1", "SCALE"])
    def gemm_epilogue_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, sam, sbn, scm, P0, P1, SCALE,
                             HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, ACT: tl.constexpr,
                             EVEN_K: tl.constexpr,
                             GROUP_M: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
        """One ``BLOCK_M`` x ``BLOCK_N`` tile of ``linear`` per program."""
        pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        rows = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
        cols = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
        a_ptrs = a_ptr + rows[:, None] * sam + offs_k[None, :]
        b_ptrs = b_ptr + cols[None, :] * sbn + offs_k[:, None]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                a = tl.load(a_ptrs, mask=(k0 + offs_k < K)[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=(k0 + offs_k < K)[:, None], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        mask_n = offs_n < N
        if HAS_SCALE:
            acc = acc * SCALE
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        y = activate(acc, P0, P1, ACT)
        mask = (offs_m < M)[:, None] & mask_n[None, :]
        c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * scm + offs_n[None, :]
        tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=mask)
