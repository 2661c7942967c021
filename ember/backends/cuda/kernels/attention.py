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

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import arg
from ember.backends.cpu.kernels.linalg import nan_in_hidden_rows
from ember.backends.cuda.device import cast_float, compute_dtype, per_forward, tf32_scope
from ember.backends.cuda.registry import register_cuda_kernel
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedAttentionAttrs
from ember.plan.records import Records

Tensor = torch.Tensor

_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}


def _mask(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """An additive mask in the compute dtype, with -inf/-3.4e38 clamped to the dtype's minimum (a
    row of -3.4e38 then gives a uniform softmax, as in fp32); a row that is -inf for every key
    is NaN first (``nan_in_hidden_rows``: ONNX's softmax of it is NaN, and the clamp keeps NaN).
    Once per forward for a mask every layer reads (``per_forward``): five small kernels a layer
    cost BERT-base about 0.1 ms of its 0.7 ms at batch 1 on the H100."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return per_forward(mask, ("attention_mask", dtype), lambda m: _prepared(m, dtype))


def _prepared(mask: Tensor, dtype: torch.dtype) -> Tensor:
    m = nan_in_hidden_rows(mask.to(torch.float32)).clamp(min=torch.finfo(dtype).min)  # type: ignore[union-attr]
    return m.to(dtype)


def _float_mask(mask: Tensor) -> Tensor:
    """The additive mask in float32, once per forward (``per_forward``)."""
    return mask if mask.dtype == torch.float32 else per_forward(mask, "float32_mask", lambda m: m.float())


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


def _graph_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """4-D q/k/v and no mask or a float one, where the cuDNN frontend is installed."""
    from ember.backends.cuda.libs import cudnn_graph

    if graph is not None:
        types = [graph.types.get(i) for i in node.inputs[:3]]
        if any(t is None or t.rank != 4 for t in types):
            return False
        m = graph.types.get(node.input(3)) if node.input(3) else None
        if m is not None and (m.dtype.value == "bool" or m.rank > 4):
            return False
    return cudnn_graph.available()


@register_cuda_kernel(OpType.FUSED_ATTENTION, "sdpa_cudnn_graph", rank=5, when=_graph_applies)
def attention_cudnn_graph(node: Node, ctx: CompileContext) -> Kernel:
    """cuDNN's fused attention through the cuDNN frontend (``ember.backends.cuda.libs.cudnn_graph``):
    the same kind of kernel as ``sdpa_cudnn``, but it writes its result wherever it is told
    (``WriteInto``: its place in the context's arena), any strides with the last dim packed."""
    from ember.backends.cuda.libs import cudnn_graph

    a: FusedAttentionAttrs = node.attrs
    if ctx.precision not in ("fp16", "bf16"):
        raise ValueError(f"node {node.name!r}: the sdpa_cudnn_graph tactic runs fp16/bf16 layers, not "
                         f"{ctx.precision}; choose another tactic for this layer")
    dtype, scale, kt = compute_dtype(ctx.precision), float(a.scale), a.k_transposed

    def operands(inputs):  # any strides with the last dim packed: QKV-split views are not copied
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in _qkv(inputs, dtype, kt))
        mask = _mask(arg(inputs, 3), dtype)
        if mask is not None:
            mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        return q, k, v, mask

    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], out: Tensor) -> bool:
        if not accepts(out) or tuple(out.shape) != (*q.shape[:-1], v.shape[-1]):
            return False

        def reference(_: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                  attn_mask=None if mask is None else mask.float(), scale=scale)

        tensors = {"q": q, "k": k, "v": v, "out": out}
        if mask is not None:
            tensors["bias"] = mask
        try:
            graph = cudnn_graph.sdpa_graph(q, k, v, mask, out, scale, check=reference)
        except BuildError as e:
            raise BuildError(f"node {node.name!r} (sdpa_cudnn_graph tactic): {e}; rebuild the engine on "
                             f"this machine so the builder picks a tactic that runs here") from e
        graph.run(tensors)
        return True

    def write(inputs, out: Tensor) -> bool:
        return accepts(out) and attend(*operands(inputs), out)

    def accepts(out: Tensor) -> bool:
        return out.dim() == 4 and out.dtype == dtype and out.stride(-1) == 1

    def run(inputs) -> list:
        q, k, v, mask = operands(inputs)
        b, h, s, _ = q.shape  # laid out [b, s, h, d], as PyTorch's fused SDPA kernels return it:
        out = torch.empty((b, s, h, v.shape[-1]), dtype=dtype, device=q.device).transpose(1, 2)
        # the usual transpose + reshape back to [b, s, h * d] is then a view, not a copy
        if not attend(q, k, v, mask, out):
            raise BuildError(f"node {node.name!r}: the sdpa_cudnn_graph tactic cannot run these shapes")
        return [out]

    return with_write_into(run, WriteInto(write, accepts))


@register_cuda_kernel(OpType.FUSED_ATTENTION, "explicit", rank=10)
def attention_explicit(node: Node, ctx: CompileContext) -> Kernel:
    """Two batched cuBLAS products around a softmax computed in fp32. An additive mask and the
    scale are applied in one pass that also widens the scores to fp32 (``mask + scale * s``;
    five kernels a layer where there were seven: at batch 1 BERT-base's layers are launch-bound)."""
    a: FusedAttentionAttrs = node.attrs
    dtype, scale, kt, prec = compute_dtype(ctx.precision), float(a.scale), a.k_transposed, ctx.precision

    def run(inputs) -> list:
        q, k, v = _qkv(inputs, dtype, kt)
        mask = arg(inputs, 3)
        with tf32_scope(prec):
            s = torch.matmul(q, k.transpose(-1, -2))
            if mask is not None and mask.dtype != torch.bool:
                s = torch.add(_float_mask(mask), s, alpha=scale)  # float32, the scores' shape
            else:
                s = s.float() * scale
                if mask is not None:
                    s = s.masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1).to(dtype)
            return [torch.matmul(p, v)]

    return run
