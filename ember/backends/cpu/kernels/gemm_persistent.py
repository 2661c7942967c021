"""INT8 GEMMs on persistent oneDNN matmul primitives: the CPU tactic ``onednn_persistent`` for
``QGemm`` (issues 14 and 19).

``qlayers``' QGemm kernel calls ``torch.ops.onednn.qlinear_pointwise``, which rebuilds memory
descriptors, the post-op attribute and a primitive descriptor on every call before its
primitive-cache hit; a BERT-base runs ~72 of them. This tactic runs Ember's compiled extension
(``ember.backends.cpu.native``, ``persistent_conv.cpp``'s ``Linear`` / ``Matmul``): the int8 weight
is reordered once (per weight layout a primitive asks for, shared by every row count), a matmul
primitive is made once per row count ``M`` (the product of the input's leading dims: at compile
time for a static shape, else at the first run of each, kept on the kernel, at most
``MAX_SHAPES``), and a call only binds the tensors and executes, with the GIL released.

It computes what ``qlayers``' kernel computes, with the same numbers:

- the weight ``op(b)`` as ``[N, K]``, times the SmoothQuant divisor along K where there is one,
  quantized per output column with ``attrs.w_scales`` (``qlayers.quantize_weight``);
- a float input quantized with ``attrs.x`` (``qlayers.quantize``, the smoothing divisor folded
  into the multiplier), an 8-bit one used as it is;
- the bias ``beta * c``; the input's zero point folded into it (``sum (q - zp) w = sum q w -
  zp sum w``: a constant per column), so oneDNN does no zero-point compensation per call;
- ReLU and GELU (erf / tanh) fused before the requantization to ``attrs.out`` (8-bit output), or
  a float32 output; other activations applied to a float32 result, then quantized, as ``qlayers``
  does. 8-bit inputs hold no NaN, so the fused activation is always used.

Where the extension is absent (or ``EMBER_ONEDNN_PERSISTENT=0``) the registry's default, ``qlayers``'
kernel, runs instead. Runtime (non-constant) weights, ``trans_a`` and ``alpha != 1`` (which the
INT8 pass never makes) keep ``qlayers``' kernel too.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

import torch

from ember.backends.activations import activation_fn
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu import native
from ember.backends.cpu.kernels import qlayers
from ember.backends.cpu.kernels.common import Inputs, const_input
from ember.backends.cpu.kernels.conv_persistent import TACTIC, available
from ember.backends.cpu.kernels.qlayers import gemm_input, qgemm, quantize, quantize_weight, saturates
from ember.backends.cpu.registry import register_kernel
from ember.backends.tensors import torch_dtype
from ember.errors import BuildError, EmberError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, QGemmAttrs
from ember.plan.records import Records

#: Row counts a dynamic-shape kernel keeps primitives for (the oldest is dropped past it).
MAX_SHAPES = 32

_DT = {DType.UINT8: "u8", DType.INT8: "s8"}
#: The oneDNN eltwise post-op of each activation ``qlayers`` fuses into its INT8 linear.
_FUSED = {Activation.NONE: "none", Activation.RELU: "relu", Activation.GELU_ERF: "gelu_erf",
          Activation.GELU_TANH: "gelu_tanh"}


def qgemm_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """QGemms with a constant 2-D weight (and constant bias), ``alpha == 1`` and no ``trans_a``
    (the registry asks ``available()`` separately)."""
    if graph is None or not isinstance(node.attrs, QGemmAttrs) or not const_input(node, graph, 1):
        return False
    if node.input(2) and not const_input(node, graph, 2):
        return False
    a: QGemmAttrs = node.attrs
    return graph.constants[node.input(1)].ndim == 2 and not a.gemm.trans_a and a.gemm.alpha == 1.0


def qgemm_offered(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """Whether a build here offers the tactic: as ``conv_persistent.qconv_offered``."""
    if not qlayers.int8_saturates() or graph is None:
        return True
    try:
        _, _, qw, _ = _int8_weight(node, torch.from_numpy(graph.constants[node.input(1)]))
    except (BuildError, RuntimeError, TypeError, ValueError):
        return True  # the kernel says what is wrong
    return not saturates(qw, node.attrs.x)


def _int8_weight(node: Node, w: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """A QGemm's constant [K, N] (or [N, K] with ``trans_b``) weight as the kernel runs it: K, the
    per-column scales, the [N, K] int8 weight (SmoothQuant's factors folded in) and the input's
    multipliers (``inv``; None without smoothing)."""
    a: QGemmAttrs = node.attrs
    w_nk = (w if a.gemm.trans_b else w.t()).to(torch.float32).contiguous()  # [N, K]
    n, k = (int(d) for d in w_nk.shape)
    inv: Optional[torch.Tensor] = None
    if a.smooth:  # x @ w == (x / s) @ (s * w)
        if len(a.smooth) != k:
            raise BuildError(f"INT8 layer {node.name!r}: {len(a.smooth)} smoothing divisors for K = {k}")
        s = torch.tensor(a.smooth, dtype=torch.float64)
        w_nk = (w_nk.double() * s[None, :]).to(torch.float32)
        inv = (1.0 / (s * a.x.scale)).to(torch.float32)
    if len(a.w_scales) != n:
        raise BuildError(f"INT8 layer {node.name!r}: {len(a.w_scales)} weight scales for N = {n} output columns")
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    return k, w_scales, quantize_weight(w_nk, w_scales, 0), inv


@register_kernel(OpType.QGEMM, tactic=TACTIC, rank=5, when=qgemm_applies, available=available,
                 offered=qgemm_offered)
def qgemm_persistent(node: Node, ctx: CompileContext) -> Kernel:
    """QGemm on persistent oneDNN INT8 matmul primitives (see the module docstring)."""
    ext = native.extension()
    if ext is None:
        raise BuildError(f"node {node.name!r}: CPU tactic {TACTIC!r} needs Ember's oneDNN extension, which is "
                         f"unavailable here ({native.unavailable_reason()}); rebuild the engine on this machine")
    a: QGemmAttrs = node.attrs
    w = ctx.const(node.input(1))
    if w is None or w.dim() != 2:
        raise BuildError(f"INT8 layer {node.name!r}: tactic {TACTIC!r} needs a constant 2-D weight")
    k, w_scales, qw, inv = _int8_weight(node, w)
    n = int(qw.shape[0])
    xp = a.x
    if saturates(qw, xp):  # could saturate oneDNN's 8-bit kernels here: qlayers' float32 kernel
        return qgemm(node, ctx)
    c = ctx.const(node.input(2))
    bias = (c.reshape(-1).to(torch.float32) * a.gemm.beta) if c is not None else None
    if bias is not None and bias.numel() != n:
        raise BuildError(f"INT8 layer {node.name!r}: bias of {bias.numel()} values for N = {n} output columns")
    if xp.zero_point:  # sum (q - zp) w = sum q w - zp sum w: a constant per column, in the bias
        comp = (xp.zero_point * xp.scale) * w_scales.double() * qw.double().sum(dim=1)
        bias = ((bias.double() if bias is not None else 0.0) - comp).to(torch.float32)
    out_p = a.out
    fused = _FUSED.get(a.activation)
    after, requant = None, None
    if fused is None:  # float32 result, then the activation and the quantization (as qlayers)
        after = activation_fn(a.activation, tuple(a.act_params))
        fused, dst_p, requant = "none", None, out_p
    else:
        dst_p = out_p
    layer = ext.Linear(qw.contiguous(), None if bias is None else bias.contiguous(), w_scales,
                       activation=fused, src_dtype=_DT[xp.dtype], src_scale=xp.scale, src_zp=0,
                       dst_dtype="f32" if dst_p is None else _DT[dst_p.dtype],
                       dst_scale=1.0 if dst_p is None else dst_p.scale,
                       dst_zp=0 if dst_p is None else dst_p.zero_point)
    rows = _RowCache(layer)
    t = ctx.graph.types.get(node.input(0)) if ctx.graph is not None else None
    if t is not None and len(t.shape) >= 2 and all(isinstance(d, int) and d > 0 for d in t.shape):
        m = 1
        for d in t.shape[:-1]:
            m *= int(d)
        rows.get(m)  # a static shape: its primitive now, at compile time
    dst_dtype = torch.float32 if dst_p is None else torch_dtype(dst_p.dtype)
    name = node.name

    def run(inputs: Inputs) -> list:
        x = gemm_input(inputs[0], xp, inv, name)
        if x.dim() < 1 or x.shape[-1] != k:
            raise EmberError(f"INT8 layer {name!r}: input of shape {list(x.shape)}, the weight expects "
                             f"[..., {k}]")
        lead = tuple(x.shape[:-1])
        x2 = x.reshape(-1, k)
        if x2.shape[0] == 0:
            y = torch.empty((0, n), dtype=dst_dtype)
        else:
            y = torch.empty((x2.shape[0], n), dtype=dst_dtype)
            rows.get(int(x2.shape[0])).run(x2, y)
        if after is not None:
            y = after(y)
        if requant is not None:
            y = quantize(y, requant)
        return [y.reshape(*lead, n)]

    return run


class _RowCache:
    """The layer's primitives per row count, made on first use under a lock."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.prims: dict[int, Any] = {}
        self.lock = threading.Lock()

    def get(self, m: int) -> Any:
        hit = self.prims.get(m)
        if hit is not None:
            return hit
        with self.lock:
            hit = self.prims.get(m)
            if hit is None:
                hit = self.layer.prepare(m)
                if len(self.prims) >= MAX_SHAPES:
                    self.prims.pop(next(iter(self.prims)))
                self.prims = {**self.prims, m: hit}  # readers outside the lock see a whole dict
        return hit


__all__ = ["MAX_SHAPES", "qgemm_applies", "qgemm_persistent"]
