"""RoiAlign (opsets 10, 16, 22): pooling of bilinearly sampled points over regions of interest."""
from __future__ import annotations

from ember.errors import ShapeError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import choice, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import RoiAlignAttrs, RoiAlignMode, RoiCoordinateTransform


@onnx_op("RoiAlign", since=10)
def import_roi_align(ctx: ImportContext, n: OnnxNode) -> None:
    """Opset 10 has no ``coordinate_transformation_mode`` and behaves as ``output_half_pixel``
    (ROI corners not shifted); opset 16 added the attribute with ``half_pixel`` as default."""
    default = RoiCoordinateTransform.OUTPUT_HALF_PIXEL if n.opset < 16 else RoiCoordinateTransform.HALF_PIXEL
    coord = choice(n, "coordinate_transformation_mode", default) if n.opset >= 16 else default
    mode = choice(n, "mode", RoiAlignMode.AVG)
    if not all(n.input(i) for i in range(3)):
        raise reject("it needs its three inputs X, rois and batch_indices")
    try:
        attrs = RoiAlignAttrs(mode=mode, coordinate_transformation_mode=coord,
                              output_height=int(n.attr("output_height", 1)),
                              output_width=int(n.attr("output_width", 1)),
                              sampling_ratio=int(n.attr("sampling_ratio", 0)),
                              spatial_scale=float(n.attr("spatial_scale", 1.0)))
    except ValueError as e:
        raise ShapeError(f"{n.label}: {e}") from None
    ctx.emit(n, OpType.ROI_ALIGN, n.inputs[:3], n.outputs[:1], attrs)
