"""Helpers shared by the CPU kernel families: axes, attrs-or-inputs, dtypes, padding.

Epilogue activations of fused layers are in ``ember.backends.activations`` (shared with CUDA)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ember.backends import tensors
from ember.backends.base import CompileContext
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ops.attrs import AutoPad

Tensor = torch.Tensor
Inputs = Sequence[Optional[Tensor]]

def torch_dtype(name: str | DType) -> torch.dtype:
    """The torch dtype of an Ember dtype (``"float32"``, ``DType.INT64`` ...)."""
    dt = name if isinstance(name, DType) else DType.parse(name)
    return tensors.torch_dtype(dt)


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[0, rank)``; negative axes count from the end, as in ONNX."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [norm_axis(int(a), rank) for a in axes]


def ints(t: Optional[Tensor]) -> Optional[list[int]]:
    """The values of a small integer tensor as Python ints (``None`` passes through)."""
    if t is None:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


def floats(t: Optional[Tensor]) -> Optional[list[float]]:
    if t is None:
        return None
    return [float(v) for v in t.reshape(-1).tolist()]


def arg(inputs: Inputs, i: int) -> Optional[Tensor]:
    """Input ``i`` or ``None`` when the node has fewer inputs or the slot is omitted."""
    return inputs[i] if i < len(inputs) else None


def int_param(node: Node, ctx: CompileContext, value: Optional[Sequence[int]],
              i: int) -> Callable[[Inputs], Optional[list[int]]]:
    """An int-list parameter resolved as early as possible: the attribute, else input ``i``'s
    constant value read once at compile time, else input ``i`` read at every run."""
    if value is not None:
        fixed = [int(v) for v in value]
        return lambda inputs: fixed
    t = ctx.const(node.input(i)) if i < len(node.inputs) else None
    if t is not None:
        known = ints(t)
        return lambda inputs: known
    return lambda inputs: ints(arg(inputs, i))


def scalar_param(node: Node, ctx: CompileContext, value: Optional[int], i: int) -> Callable[[Inputs], int]:
    """``int_param`` for a single int (CumSum's axis, TopK's k, Trilu's k, OneHot's depth)."""
    get = int_param(node, ctx, None if value is None else (value,), i)

    def resolve(inputs: Inputs) -> int:
        got = get(inputs)
        if not got:
            raise ValueError(f"node {node.name!r} ({node.op}) needs input {i} (or its attribute): "
                             f"it is missing or empty")
        return got[0]

    return resolve


def const_input(node: Node, graph: Optional[Graph], i: int) -> bool:
    """Whether input ``i`` of ``node`` is a graph constant (so a tactic may prepack it)."""
    name = node.input(i)
    return bool(name) and graph is not None and name in graph.constants


# ---- spatial padding (Conv, ConvTranspose, pools) --------------------------------------------

def auto_pads(auto_pad: AutoPad, pads: Sequence[int], in_spatial: Sequence[int],
              kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """Explicit ``(begins..., ends...)`` pads for Conv/pool, resolving ``auto_pad`` on real sizes.

    SAME_*: output = ceil(input / stride); the odd pixel of padding goes at the end (UPPER) or
    the beginning (LOWER). VALID: no padding.
    """
    n = len(kernel)
    if auto_pad is AutoPad.NOTSET:
        return list(pads) if pads else [0] * (2 * n)
    if auto_pad is AutoPad.VALID:
        return [0] * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        if auto_pad is AutoPad.SAME_UPPER:
            begins.append(small)
            ends.append(big)
        else:
            begins.append(big)
            ends.append(small)
    return begins + ends


def split_pads(pads: Sequence[int]) -> tuple[list[int], list[int]]:
    n = len(pads) // 2
    return list(pads[:n]), list(pads[n:])


def torch_pad_arg(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """``F.pad``'s argument (last dim first) for per-spatial-dim begin/end pads."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [int(b), int(e)]
    return out


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy broadcasting of concrete shapes, as ``torch.broadcast_shapes`` computes it, in a
    microsecond or two where that takes about 45 (it runs PyTorch's Python reference code): the
    kernels call it on every run. Raises RuntimeError where the shapes do not broadcast, and
    ValueError for a negative dim (an Expand to -1), as torch's."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        offset = rank - len(s)
        for i, d in enumerate(s):
            d = int(d)
            if d < 0:
                raise ValueError(f"shapes {[tuple(x) for x in shapes]}: a dim of negative length ({d}) "
                                 f"cannot be broadcast")
            o = out[offset + i]
            if d != o:
                if o == 1:
                    out[offset + i] = d
                elif d != 1:
                    raise RuntimeError(f"shapes {[tuple(x) for x in shapes]} cannot be broadcast together "
                                       f"(axis {offset + i - rank}: {o} and {d})")
    return tuple(out)

