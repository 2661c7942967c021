"""Ops that rearrange or repeat elements without computing on them: Tile, DepthToSpace,
SpaceToDepth.

Concat, Split, Slice, Reshape, Transpose and the other core data-movement ops are in
``ember.ops.shape``. Tile's repeats are an attr when constant at import (``None``: input 1).
"""
from __future__ import annotations

from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import DepthSpaceAttrs, TileAttrs
from ember.ops.common import (
    Consts,
    Types,
    const_at,
    const_ints,
    div_dim,
    fresh_dims,
    mul_dims,
    need_input,
    require,
)
from ember.ops.registry import register_op


@register_op(OpType.TILE, attrs=TileAttrs)
def infer_tile(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Tile(x, repeats): dim i becomes ``x.shape[i] * repeats[i]``."""
    x = need_input(in_types, 0, "input")
    repeats = node.attrs.repeats
    value = const_at(consts, 1)
    if repeats is None and value is not None:
        repeats = const_ints(value)
    if repeats is None:
        return [x.with_shape(fresh_dims(node.outputs[0], x.rank))]
    require(len(repeats) == x.rank, f"Tile repeats {tuple(repeats)} must have one entry per dim of {x}")
    require(all(r >= 0 for r in repeats), f"Tile repeats {tuple(repeats)} must not be negative")
    return [x.with_shape(tuple(mul_dims([d, r]) for d, r in zip(x.shape, repeats)))]


def _block_dim(dim: Dim, block: int, out: str, i: int) -> Dim:
    """``dim / block``; a fresh symbol when a symbolic dim does not divide exactly."""
    got = div_dim(dim, block)
    return got if got is not None else f"{out}_d{i}"


@register_op(OpType.DEPTH_TO_SPACE, attrs=DepthSpaceAttrs)
def infer_depth_to_space(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """[N, C, H, W] -> [N, C / b^2, H * b, W * b]."""
    x = need_input(in_types, 0, "input")
    b: int = node.attrs.blocksize
    require(x.rank == 4, f"DepthToSpace needs a 4-D input, got {x}")
    require(b >= 1, f"DepthToSpace blocksize {b} must be positive")
    n, c, h, w = x.shape
    if isinstance(c, int):
        require(c % (b * b) == 0, f"DepthToSpace channels {c} are not divisible by blocksize^2 {b * b}")
    return [x.with_shape((n, _block_dim(c, b * b, node.outputs[0], 1), mul_dims([h, b]), mul_dims([w, b])))]


@register_op(OpType.SPACE_TO_DEPTH, attrs=DepthSpaceAttrs)
def infer_space_to_depth(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """[N, C, H, W] -> [N, C * b^2, H / b, W / b]."""
    x = need_input(in_types, 0, "input")
    b: int = node.attrs.blocksize
    require(x.rank == 4 and b >= 1, f"SpaceToDepth needs a 4-D input and blocksize >= 1, got {x}, {b}")
    n, c, h, w = x.shape
    for d in (h, w):
        if isinstance(d, int):
            require(d % b == 0, f"SpaceToDepth spatial dims of {x} are not divisible by blocksize {b}")
    out = node.outputs[0]
    return [x.with_shape((n, mul_dims([c, b * b]), _block_dim(h, b, out, 2), _block_dim(w, b, out, 3)))]
