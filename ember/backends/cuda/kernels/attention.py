"""FusedAttention on the GPU: ``softmax(q k^T * scale + mask) v``.

Each ``scaled_dot_product_attention`` backend is its own tactic, chosen *explicitly* (never left
to PyTorch's run-time heuristics, which picked a slower path under CUDA-graph capture); the
``explicit`` tactic writes the three steps out with the softmax in fp32. A backend that cannot
take the layer's shapes, dtype or mask fails when timed and is never chosen.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import arg
from ember.backends.cuda.device import cast_float, compute_dtype, tf32_scope
from ember.backends.cuda.registry import register_cuda_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedAttentionAttrs

Tensor = torch.Tensor

_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}


def _mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """An additive mask in the compute dtype, with -inf/-3.4e38 clamped to the dtype's minimum
    (a row masked everywhere then gives a uniform softmax, as in fp32, instead of NaN)."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    m = mask.to(torch.float32).clamp(min=torch.finfo(dtype).min)
    return m.to(dtype)


def _qkv(inputs, dtype: torch.dtype, k_transposed: bool) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = (cast_float(t, dtype) for t in inputs[:3])
    if k_transposed:
        k = k.transpose(-1, -2)
    return q, k, v  # type: ignore[return-value]


def _make_sdpa(tactic: str):
    backend = _BACKENDS[tactic]

    def factory(node: Node, ctx: CompileContext) -> Kernel:
        a: FusedAttentionAttrs = node.attrs
        dtype, scale, kt, prec = compute_dtype(ctx.precision), float(a.scale), a.k_transposed, ctx.precision

        def run(inputs) -> list:
            q, k, v = _qkv(inputs, dtype, kt)
            if backend is not SDPBackend.MATH:
                k = k.contiguous()
            mask = _mask(arg(inputs, 3), dtype)
            with sdpa_kernel([backend]), tf32_scope(prec):
                return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)]

        return run

    factory.__name__ = f"attention_{tactic}"
    factory.__doc__ = f"Attention through SDPA's {backend.name} backend only."
    return factory


for _rank, _name in enumerate(("sdpa_efficient", "sdpa_flash", "sdpa_cudnn", "sdpa_math")):
    register_cuda_kernel(OpType.FUSED_ATTENTION, _name, rank=_rank)(_make_sdpa(_name))


@register_cuda_kernel(OpType.FUSED_ATTENTION, "explicit", rank=10)
def attention_explicit(node: Node, ctx: CompileContext) -> Kernel:
    """Two batched cuBLAS products around a softmax computed in fp32."""
    a: FusedAttentionAttrs = node.attrs
    dtype, scale, kt, prec = compute_dtype(ctx.precision), float(a.scale), a.k_transposed, ctx.precision

    def run(inputs) -> list:
        q, k, v = _qkv(inputs, dtype, kt)
        mask = arg(inputs, 3)
        with tf32_scope(prec):
            s = torch.matmul(q, k.transpose(-1, -2)).float() * scale
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
            p = torch.softmax(s, dim=-1).to(dtype)
            return [torch.matmul(p, v)]

    return run
