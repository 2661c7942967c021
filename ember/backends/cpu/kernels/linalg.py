"""Linear-algebra kernels (generic tactics): Gemm, MatMul, FusedGemm, FusedAttention, Einsum and
ONNX's Attention op."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, broadcast_shape
from ember.backends.cpu.registry import register_kernel
from ember.backends.tensors import torch_dtype
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AttentionAttrs,
    FusedAttentionAttrs,
    FusedGemmAttrs,
    GemmAttrs,
    LinearAttentionAttrs,
    RotaryEmbeddingAttrs,
)


def _op(x: Tensor, trans: bool) -> Tensor:
    return x.transpose(-1, -2) if trans else x


def gemm_value(a: Tensor, b: Tensor, c: Tensor | None, g: GemmAttrs) -> Tensor:
    """``alpha * op(a) @ op(b) + beta * c``; ``a`` may carry batch dims (MatMul-born FusedGemm)."""
    a, b = _op(a, g.trans_a), _op(b, g.trans_b)
    alpha, beta = float(g.alpha), float(g.beta)
    if c is not None and beta != 0 and a.dim() == 2 and b.dim() == 2 and a.is_floating_point():
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * (alpha if y.is_floating_point() else int(alpha))
    if c is not None and beta != 0:
        y = y + (c if beta == 1.0 else c * (beta if c.is_floating_point() else int(beta)))
    return y


@register_kernel(OpType.GEMM)
def gemm(node: Node, ctx: CompileContext) -> Kernel:
    g = node.attrs or GemmAttrs()

    def run(inputs: Inputs) -> list:
        return [gemm_value(inputs[0], inputs[1], arg(inputs, 2), g)]

    return run


@register_kernel(OpType.MATMUL)
def matmul(node: Node, ctx: CompileContext) -> Kernel:
    """MatMul with numpy semantics: 1-D operands promoted and squeezed, batch dims broadcast."""
    return lambda inputs: [torch.matmul(inputs[0], inputs[1])]


@register_kernel(OpType.FUSED_GEMM)
def fused_gemm(node: Node, ctx: CompileContext) -> Kernel:
    a = node.attrs or FusedGemmAttrs()
    act = activation_fn(a.activation, a.act_params)

    def run(inputs: Inputs) -> list:
        y = gemm_value(inputs[0], inputs[1], arg(inputs, 2), a.gemm)
        return [act(y) if act is not None else y]

    return run


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                   k_transposed: bool) -> Tensor:
    """``softmax(q @ k^T * scale + mask) @ v`` written out (the reference composition)."""
    kt = k if k_transposed else k.transpose(-1, -2)
    s = torch.matmul(q, kt) * scale
    if mask is not None:
        s = s + mask
    return torch.matmul(torch.softmax(s, dim=-1), v)


def nan_in_hidden_rows(mask: Tensor | None) -> Tensor | None:
    """``mask`` with NaN in each row it hides entirely (-inf for every key). ONNX's softmax of a
    row of -inf is 0 / 0, NaN, and so is that query's attention (ONNX Runtime's answer on the
    written-out graph); PyTorch's fused attention returns zeros there, and a mask clamped to a half
    type's minimum a uniform average. With NaN in the mask every kernel returns NaN."""
    if mask is None or not mask.is_floating_point() or mask.numel() == 0:
        return mask
    hidden = torch.isneginf(mask).all(dim=-1, keepdim=True)
    if mask.device.type == "cpu" and not bool(hidden.any()):
        return mask  # the usual case, without a copy (on a GPU the check would synchronize)
    return mask.masked_fill(hidden, float("nan"))


def _sdpa_ok(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> bool:
    if q.dim() < 2 or not (q.dim() == k.dim() == v.dim()) or not q.is_floating_point():
        return False
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return False
    if mask is not None:
        if mask.dtype is not q.dtype:
            return False
        try:
            broadcast_shape(mask.shape, tuple(q.shape[:-1]) + (k.shape[-2],))
        except RuntimeError:
            return False
    return True


def _wide(precision: str) -> Optional[torch.dtype]:
    """float32 for an fp32 layer: half-precision inputs (a model typed float16 / bfloat16) are
    computed in float32 and rounded once, as the graph's own ops would round only their outputs
    (fused, the scores and probabilities would round to half at each step: one ulp off the
    correctly rounded result, ONNX's backend case ``attention_4d_causal_fp16_expanded``). Layers
    the build made bf16/fp16 for speed keep their half compute."""
    return torch.float32 if str(precision) == "fp32" else None


def _in_wide(inputs: Inputs, wide: Optional[torch.dtype]) -> tuple[list, Optional[torch.dtype]]:
    q = inputs[0]
    if wide is None or q.dtype not in (torch.float16, torch.bfloat16):
        return list(inputs), None
    return [t.to(wide) if t is not None and t.is_floating_point() else t for t in inputs], q.dtype


@register_kernel(OpType.FUSED_ATTENTION)
def fused_attention(node: Node, ctx: CompileContext) -> Kernel:
    """Attention through ``scaled_dot_product_attention`` where it applies, else written out."""
    a: FusedAttentionAttrs = node.attrs
    scale, kt = float(a.scale), bool(a.k_transposed)
    wide = _wide(ctx.precision)

    def run(inputs: Inputs) -> list:
        args, half = _in_wide(inputs, wide)
        q, k, v, mask = args[0], args[1], args[2], arg(args, 3)
        kk = k.transpose(-1, -2) if kt else k
        if mask is not None and mask.dim() < 2:
            mask = mask.reshape((1,) * (2 - mask.dim()) + tuple(mask.shape))  # SDPA wants >= 2-D
        if _sdpa_ok(q, kk, v, mask):
            y = F.scaled_dot_product_attention(q, kk, v, attn_mask=nan_in_hidden_rows(mask), scale=scale)
        else:
            y = attention_math(q, k, v, mask, scale, kt)
        return [y.to(half) if half is not None else y]

    return run


@register_kernel(OpType.FUSED_ATTENTION, tactic="math", rank=110)
def fused_attention_math(node: Node, ctx: CompileContext) -> Kernel:
    a: FusedAttentionAttrs = node.attrs
    scale, kt = float(a.scale), bool(a.k_transposed)
    wide = _wide(ctx.precision)

    def run(inputs: Inputs) -> list:
        args, half = _in_wide(inputs, wide)
        y = attention_math(args[0], args[1], args[2], arg(args, 3), scale, kt)
        return [y.to(half) if half is not None else y]

    return run


@register_kernel(OpType.EINSUM)
def einsum(node: Node, ctx: CompileContext) -> Kernel:
    equation = node.attrs.equation.replace(" ", "")

    def run(inputs: Inputs) -> list:
        return [torch.einsum(equation, *inputs)]

    return run


# ---- ONNX Attention (opsets 23-25) ------------------------------------------------------------
def _to_heads(x: Tensor, heads: int) -> Tensor:
    """[B, S, H * D] -> [B, H, S, D]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _masked(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where ``allowed``, -inf elsewhere (select, not multiply: 0 * -inf is NaN)."""
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype))


def _frontier(base: Tensor, offset: Tensor | int, keep) -> Tensor:
    """``base`` plus a -inf bias where ``keep(query + offset - key)`` is False; ``offset`` a
    scalar or one per batch (then the result gains a [B, 1, q, kv] batch axis)."""
    q, kv = base.shape[-2:]
    i = torch.arange(q, device=base.device).reshape(q, 1)
    j = torch.arange(kv, device=base.device).reshape(1, kv)
    if isinstance(offset, Tensor):
        diff = (i + offset.reshape(-1, 1, 1).to(base.device, torch.int64)) - j  # [B, q, kv]
        return base + _masked(keep(diff), base.dtype).reshape(-1, 1, q, kv)
    return base + _masked(keep((i + offset) - j), base.dtype)


def _safe_softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis; a row of -inf gives zeros, not NaN."""
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros((), dtype=x.dtype), m)
    e = torch.exp(x - m)
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones((), dtype=x.dtype), total)


def onnx_attention(a: AttentionAttrs, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   past_k: Tensor | None, past_v: Tensor | None, nonpad: Tensor | None,
                   softmax_dtype: torch.dtype | None) -> list[Tensor]:
    """ONNX's Attention, step for step as its reference (onnx.reference's op_attention), so that
    masks, causal frontiers, windows, softcap and the fully-masked-row rule agree exactly."""
    rank3 = q.dim() == 3
    dtype = q.dtype
    if rank3:
        q, k, v = _to_heads(q, a.q_num_heads), _to_heads(k, a.kv_num_heads), _to_heads(v, a.kv_num_heads)
    scale = a.scale if a.scale is not None else 1 / math.sqrt(q.shape[3])
    s = torch.tensor(math.sqrt(scale), dtype=torch.float64).to(dtype)
    present_k = torch.cat([past_k, k], dim=2) if past_k is not None else k
    present_v = torch.cat([past_v, v], dim=2) if past_v is not None else v
    k, v = present_k, present_v
    n_q, n_kv = q.shape[2], k.shape[2]
    bias = torch.zeros((n_q, n_kv), dtype=dtype, device=q.device)
    if mask is not None and mask.shape[-1] < n_kv:
        fill = False if mask.dtype == torch.bool else -math.inf
        mask = F.pad(mask, (0, n_kv - mask.shape[-1]), value=fill)
    left, right = a.left_window_size, a.right_window_size
    windowed = left >= 0 or right >= 0
    if past_k is None and nonpad is not None:
        offset: Tensor | int = nonpad.reshape(-1) - n_q
    else:
        offset = past_k.shape[2] if past_k is not None else 0
    if a.is_causal:
        if mask is not None and mask.dtype == torch.bool:
            mask = _masked(mask, dtype)
        base = torch.zeros((n_q, n_kv), dtype=dtype, device=q.device) if mask is None else mask.to(dtype)
        if windowed:
            base = torch.zeros((n_q, n_kv), dtype=dtype, device=q.device) + base
        bias = _frontier(base, offset, lambda d: d >= 0)
    elif mask is not None:
        bias = bias + (_masked(mask, dtype) if mask.dtype == torch.bool else mask.to(dtype))
    if windowed:
        bias = torch.zeros((n_q, n_kv), dtype=dtype, device=q.device) + bias

        def keep(d: Tensor) -> Tensor:
            ok = torch.ones_like(d, dtype=torch.bool)
            if left >= 0:
                ok &= d <= left
            if right >= 0:
                ok &= -d <= right
            return ok

        bias = _frontier(bias, offset, keep)
    if nonpad is not None:
        pad = torch.arange(n_kv, device=q.device).reshape(1, n_kv) < nonpad.reshape(-1, 1).to(q.device, torch.int64)
        bias = bias + _masked(pad, dtype).reshape(q.shape[0], 1, 1, n_kv)
    hq = a.q_num_heads if a.q_num_heads is not None else q.shape[1]
    hk = a.kv_num_heads if a.kv_num_heads is not None else k.shape[1]
    if hq != hk and hq % hk == 0:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    qk = torch.matmul(q * s, (k * s).transpose(-1, -2))
    if a.softcap > 0:
        qk = torch.tanh(qk / a.softcap) * a.softcap
    scores = qk + bias
    qk_out = scores if a.qk_matmul_output_mode == 2 else qk
    p = _safe_softmax(scores.to(softmax_dtype) if softmax_dtype is not None else scores)
    all_masked = torch.isneginf(bias.amax(dim=-1, keepdim=True))
    p = torch.where(all_masked, torch.zeros((), dtype=p.dtype), p)
    if a.qk_matmul_output_mode == 3:
        qk_out = p
    y = torch.matmul(p.to(dtype), v)
    if rank3:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    return [y, present_k, present_v, qk_out.to(dtype)]


@register_kernel(OpType.ATTENTION)
def attention(node: Node, ctx: CompileContext) -> Kernel:
    a: AttentionAttrs = node.attrs
    softmax_dtype = torch_dtype(a.softmax_precision) if a.softmax_precision is not None else None

    def run(inputs: Inputs) -> list:
        q, k, v = inputs[0], inputs[1], inputs[2]
        out = onnx_attention(a, q, k, v, arg(inputs, 3), arg(inputs, 4), arg(inputs, 5), arg(inputs, 6),
                             softmax_dtype)
        return [t if name else None for t, name in zip(out, node.outputs)]

    return run


def linear_attention(a: LinearAttentionAttrs, query: Tensor, key: Tensor, value: Tensor,
                     past: Optional[Tensor], decay: Optional[Tensor], beta: Optional[Tensor]
                     ) -> tuple[Tensor, Tensor]:
    """ONNX LinearAttention: the recurrence over T in float32, state ``[B, Hkv, dk, dv]``;
    a query head reads the state of its KV head (``h // (Hq / Hkv)``)."""
    b, t, _ = query.shape
    hq, hkv = a.q_num_heads, a.kv_num_heads
    dk, dv = query.shape[-1] // hq, value.shape[-1] // hkv

    def heads(x: Tensor, h: int) -> Tensor:  # [B, T, H*D] -> [B, H, T, D] in float32
        return x.float().reshape(b, t, h, -1).transpose(1, 2)

    q4, k4, v4 = heads(query, hq), heads(key, hkv), heads(value, hkv)
    g4 = None
    if a.gated:
        if decay is None:
            raise ValueError(f"update_rule {a.update_rule.value!r} needs the decay input")
        if decay.shape[-1] not in (hkv, hkv * dk):
            raise ValueError(f"decay last dim {decay.shape[-1]} must be kv_num_heads ({hkv}) "
                             f"or kv_num_heads*d_k ({hkv * dk})")
        g4 = torch.exp(heads(decay, hkv))  # [B, Hkv, T, 1 or dk]
    b4 = None
    if a.delta:
        if beta is None:
            raise ValueError(f"update_rule {a.update_rule.value!r} needs the beta input")
        b4 = heads(beta, beta.shape[-1])  # [B, Hkv or 1, T, 1]
    state = past.float().clone() if past is not None else \
        torch.zeros((b, hkv, dk, dv), dtype=torch.float32, device=query.device)
    scale = float(a.scale) if a.scale else 1.0 / math.sqrt(dk)
    group = hq // hkv
    out = torch.empty((b, hq, t, dv), dtype=torch.float32, device=query.device)
    for i in range(t):
        k_t, v_t = k4[:, :, i], v4[:, :, i]
        if g4 is not None:
            state = state * g4[:, :, i].unsqueeze(-1)
        if b4 is not None:
            retrieved = torch.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = b4[:, :, i] * (v_t - retrieved)
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        read = state if group == 1 else state.repeat_interleave(group, dim=1)
        out[:, :, i] = scale * torch.einsum("bhd,bhdm->bhm", q4[:, :, i], read)
    y = out.transpose(1, 2).reshape(b, t, hq * dv).to(query.dtype)
    return y, state.to(past.dtype if past is not None else query.dtype)


@register_kernel(OpType.LINEAR_ATTENTION)
def linear_attention_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: LinearAttentionAttrs = node.attrs

    def run(inputs: Inputs) -> list:
        return list(linear_attention(a, inputs[0], inputs[1], inputs[2], arg(inputs, 3), arg(inputs, 4),
                                     arg(inputs, 5)))

    return run


def rotary_embedding(a: RotaryEmbeddingAttrs, x: Tensor, cos: Tensor, sin: Tensor,
                     position_ids: Optional[Tensor]) -> Tensor:
    """ONNX RotaryEmbedding: each head's first ``rotary_embedding_dim`` dims rotate by the
    cached angles (gathered by ``position_ids`` when given), as halves or interleaved pairs."""
    shape = x.shape
    if x.dim() == 4:
        work = x.transpose(1, 2)  # [B, S, H, D]
    else:
        work = x.reshape(shape[0], shape[1], a.num_heads, shape[2] // a.num_heads)
    dim = a.rotary_embedding_dim or work.shape[-1]
    rot, rest = work[..., :dim], work[..., dim:]
    if position_ids is not None:
        cos, sin = cos[position_ids.long()], sin[position_ids.long()]
    if cos.shape[-1] != dim // 2 or sin.shape[-1] != dim // 2:
        raise ValueError(f"cos/sin caches' last dim ({cos.shape[-1]}, {sin.shape[-1]}) is not "
                         f"rotary_embedding_dim / 2 ({dim // 2})")
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
    if a.interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : dim // 2], rot[..., dim // 2:]
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = torch.stack((real, imag), dim=-1).reshape(rot.shape) if a.interleaved \
        else torch.cat((real, imag), dim=-1)
    out = torch.cat((rotated, rest), dim=-1)
    return out.transpose(1, 2).contiguous() if x.dim() == 4 else out.reshape(shape)


@register_kernel(OpType.ROTARY_EMBEDDING)
def rotary_embedding_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: RotaryEmbeddingAttrs = node.attrs
    return lambda inputs: [rotary_embedding(a, inputs[0], inputs[1], inputs[2], arg(inputs, 3))]
