"""Resize against ONNX Runtime: every nearest_mode and coordinate transformation, scales and sizes."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import ResizeAttrs

F32 = np.float32
COORDS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _inputs(rng, scales=None, sizes=None, shape=(1, 2, 5, 7)):
    return {"x": rng.standard_normal(shape).astype(F32), "roi": None,
            "scales": None if scales is None else np.array(scales, F32),
            "sizes": None if sizes is None else np.array(sizes, np.int64)}


@pytest.mark.parametrize("coord", COORDS + ["tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest", NEAREST)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 1.5), (1, 1, 0.6, 0.5)])
def test_resize_nearest_scales(check, rng, coord, nearest, scales):
    onnx_attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    a = ResizeAttrs("nearest", coord, nearest)
    check("Resize", _inputs(rng, scales=scales), OpType.RESIZE, a, onnx_attrs, opset=13, const=(2,))
    check("Resize", _inputs(rng, scales=scales), OpType.RESIZE,
          ResizeAttrs("nearest", coord, nearest, scales=scales), onnx_attrs, opset=13)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest", NEAREST)
def test_resize_nearest_sizes(check, rng, coord, nearest):
    onnx_attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    sizes = (1, 2, 8, 4)
    check("Resize", _inputs(rng, sizes=sizes), OpType.RESIZE, ResizeAttrs("nearest", coord, nearest),
          onnx_attrs, opset=13)
    check("Resize", _inputs(rng, sizes=sizes), OpType.RESIZE,
          ResizeAttrs("nearest", coord, nearest, sizes=sizes), onnx_attrs, opset=13)


@pytest.mark.parametrize("coord", COORDS + ["half_pixel_symmetric"])
@pytest.mark.parametrize("scales,sizes", [((1, 1, 2.0, 2.0), None), ((1, 1, 0.5, 1.7), None),
                                          (None, (1, 2, 9, 3)), (None, (1, 2, 1, 1))])
def test_resize_linear(check, rng, coord, scales, sizes):
    onnx_attrs = {"mode": "linear", "coordinate_transformation_mode": coord}
    opset = 19 if coord == "half_pixel_symmetric" else 13
    check("Resize", _inputs(rng, scales=scales, sizes=sizes), OpType.RESIZE,
          ResizeAttrs("linear", coord), onnx_attrs, opset=opset, rtol=1e-5, atol=1e-6)


def test_resize_linear_3d_input_and_opset10(check, rng):
    x = rng.standard_normal((2, 6, 4)).astype(F32)
    check("Resize", {"x": x, "roi": None, "scales": np.array([1, 1.5, 2], F32)}, OpType.RESIZE,
          ResizeAttrs("linear", "half_pixel"), {"mode": "linear"}, opset=13, rtol=1e-5, atol=1e-6)
    check("Resize", {"x": x, "scales": np.array([1, 2, 3], F32)}, OpType.RESIZE,
          ResizeAttrs("nearest", "asymmetric", "floor"), {"mode": "nearest"}, opset=10)
