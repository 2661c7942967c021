"""Region-of-interest ops: RoiAlign."""
from __future__ import annotations

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import RoiAlignAttrs
from ember.ops.common import Consts, Types, need_input, require
from ember.ops.registry import register_op


@register_op(OpType.ROI_ALIGN, attrs=RoiAlignAttrs)
def infer_roi_align(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """RoiAlign(X[N, C, H, W], rois[R, 4], batch_indices[R]) -> X's type [R, C, oh, ow].

    R may be 0 (no ROIs: an empty output) or a symbol known only at run time.
    """
    x = need_input(in_types, 0, "X")
    rois = need_input(in_types, 1, "rois")
    idx = need_input(in_types, 2, "batch_indices")
    a: RoiAlignAttrs = node.attrs
    require(x.rank == 4 and x.dtype.is_float, f"RoiAlign X must be a float [N, C, H, W] tensor, got {x}")
    require(rois.rank == 2 and (not isinstance(rois.shape[1], int) or rois.shape[1] == 4),
            f"RoiAlign rois must be [num_rois, 4] (x1, y1, x2, y2 per ROI), got {rois}")
    require(rois.dtype is x.dtype, f"RoiAlign rois ({rois.dtype}) must have X's type ({x.dtype})")
    require(idx.rank == 1 and idx.dtype in (DType.INT64, DType.INT32),
            f"RoiAlign batch_indices must be a 1-D int64 tensor [num_rois], got {idx}")
    r, k = rois.shape[0], idx.shape[0]
    require(not (isinstance(r, int) and isinstance(k, int)) or r == k,
            f"RoiAlign has {r} rois but {k} batch_indices; give one batch index per ROI")
    return [x.with_shape((r, x.shape[1], a.output_height, a.output_width))]
