"""Tile, DepthToSpace, SpaceToDepth (the core data-movement ops are in ``handlers.shape``)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import choice, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import DepthSpaceAttrs, DepthToSpaceMode, TileAttrs


@onnx_op("Tile", since=6)
def import_tile(ctx: ImportContext, n: OnnxNode) -> None:
    repeats = ctx.const_ints(n.input(1))
    ctx.emit(n, OpType.TILE, n.inputs[:1] if repeats is not None else n.inputs[:2], n.outputs[:1],
             TileAttrs(repeats=repeats))


def _blocksize(n: OnnxNode) -> int:
    b = n.attr("blocksize")
    if b is None or int(b) < 1:
        raise reject(f"blocksize {b!r} is missing or not positive")
    return int(b)


@onnx_op("DepthToSpace", since=1)
def import_depth_to_space(ctx: ImportContext, n: OnnxNode) -> None:
    """``mode`` exists from opset 11 (DCR: depth-column-row, the default; CRD: PixelShuffle)."""
    mode = choice(n, "mode", DepthToSpaceMode.DCR) if n.opset >= 11 else DepthToSpaceMode.DCR
    ctx.emit(n, OpType.DEPTH_TO_SPACE, n.inputs[:1], n.outputs[:1], DepthSpaceAttrs(_blocksize(n), mode))


@onnx_op("SpaceToDepth", since=1)
def import_space_to_depth(ctx: ImportContext, n: OnnxNode) -> None:
    """``mode`` exists from opset 28 (DCR, the default, or CRD: PixelUnshuffle)."""
    mode = choice(n, "mode", DepthToSpaceMode.DCR) if n.opset >= 28 else DepthToSpaceMode.DCR
    ctx.emit(n, OpType.SPACE_TO_DEPTH, n.inputs[:1], n.outputs[:1], DepthSpaceAttrs(_blocksize(n), mode))
