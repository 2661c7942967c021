"""Gemm and MatMul (numpy matmul semantics: batch broadcasting, 1-D operands)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import GemmAttrs
from ember.ops.common import broadcast_shapes, need, require, same_dtype
from ember.ops.registry import register_op

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


def _inner(a: Dim, b: Dim, what: str) -> None:
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ShapeError(f"{what}: inner dims {a} and {b} differ")


def matmul_shape(a: tuple[Dim, ...], b: tuple[Dim, ...], what: str = "MatMul") -> tuple[Dim, ...]:
    """Output shape of ``np.matmul(a, b)`` for shapes with possibly symbolic dims."""
    require(len(a) >= 1 and len(b) >= 1, f"{what} operands must have rank >= 1, got {a} and {b}")
    a2 = (1, a[0]) if len(a) == 1 else a
    b2 = (b[0], 1) if len(b) == 1 else b
    _inner(a2[-1], b2[-2], what)
    batch = broadcast_shapes(tuple(a2[:-2]), tuple(b2[:-2]))
    out: tuple[Dim, ...] = (*batch, a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
    return out


@register_op(OpType.MATMUL)
def infer_matmul(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    require(len(in_types) == 2, f"MatMul takes 2 inputs, got {len(in_types)}")
    a, b = need(in_types[0], "A"), need(in_types[1], "B")
    dtype = same_dtype([a, b], "MatMul inputs")
    return [TensorType(dtype, matmul_shape(a.shape, b.shape))]


def gemm_shape(a: TensorType, b: TensorType, c: Optional[TensorType], attrs: GemmAttrs,
               what: str = "Gemm") -> tuple[Dim, ...]:
    """Gemm: op(a)[M, K] @ op(b)[K, N] (+ c broadcast to [M, N]) -> [M, N]."""
    require(a.rank == 2 and b.rank == 2, f"{what} needs 2-D A and B, got {a} and {b}")
    m, k = (a.shape[1], a.shape[0]) if attrs.trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if attrs.trans_b else b.shape
    _inner(k, k2, what)
    if c is not None:
        require(c.rank <= 2, f"{what} C must have rank <= 2, got {c}")
        out = broadcast_shapes((m, n), c.shape)
        require(len(out) == 2, f"{what} C {c} does not broadcast to [{m}, {n}]")
        for want, got in zip((m, n), out):
            if isinstance(want, int) and isinstance(got, int) and want != got:
                raise ShapeError(f"{what} C {c} does not broadcast to [{m}, {n}]")
    return (m, n)


@register_op(OpType.GEMM, attrs=GemmAttrs)
def infer_gemm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a, b = need(in_types[0], "A"), need(in_types[1] if len(in_types) > 1 else None, "B")
    c = in_types[2] if len(in_types) > 2 else None
    dtype = same_dtype([a, b, c], "Gemm inputs")
    return [TensorType(dtype, gemm_shape(a, b, c, node.attrs))]
