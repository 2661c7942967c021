"""Resize against ONNX Runtime: every nearest_mode and coordinate transformation, scales and sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.backends.cpu.kernels.resize import resize
from ember.errors import UnsupportedOpError
from ember.ir.optype import OpType
from ember.ops.attrs import ResizeAttrs

F32 = np.float32
COORDS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _inputs(rng, scales=None, sizes=None, shape=(1, 2, 5, 7)):
    return {"x": rng.standard_normal(shape).astype(F32), "roi": None,
            "scales": None if scales is None else np.array(scales, F32),
            "sizes": None if sizes is None else np.array(sizes, np.int64)}


def _fractional(shape, scales) -> bool:
    """Some resized axis of more than one output gets a fractional length ``in * scale``."""
    return any(int(d * s) > 1 and d * s != int(d * s) for d, s in zip(shape, scales))


def _refused(rng, a: ResizeAttrs, scales) -> None:
    """align_corners with a fractional output length: ONNX's reference divides by that length
    less one, ONNX Runtime (and the spec's formula) by the integer one; Ember refuses the form."""
    x = torch.from_numpy(_inputs(rng, scales=scales)["x"])
    with pytest.raises(UnsupportedOpError, match="align_corners.*fractional output length"):
        resize(x, a, [float(s) for s in scales], None)


@pytest.mark.parametrize("coord", COORDS + ["tf_half_pixel_for_nn"])
@pytest.mark.parametrize("nearest", NEAREST)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 1.5), (1, 1, 0.6, 0.5)])
def test_resize_nearest_scales(check, rng, coord, nearest, scales):
    onnx_attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    a = ResizeAttrs("nearest", coord, nearest)
    if coord == "align_corners" and _fractional((1, 2, 5, 7), scales):
        _refused(rng, a, scales)
        return
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
    if coord == "align_corners" and scales is not None and _fractional((1, 2, 5, 7), scales):
        _refused(rng, ResizeAttrs("linear", coord), scales)
        return
    opset = 19 if coord == "half_pixel_symmetric" else 13
    check("Resize", _inputs(rng, scales=scales, sizes=sizes), OpType.RESIZE,
          ResizeAttrs("linear", coord), onnx_attrs, opset=opset, rtol=1e-5, atol=1e-6)


def test_resize_linear_3d_input_and_opset10(check, rng):
    x = rng.standard_normal((2, 6, 4)).astype(F32)
    check("Resize", {"x": x, "roi": None, "scales": np.array([1, 1.5, 2], F32)}, OpType.RESIZE,
          ResizeAttrs("linear", "half_pixel"), {"mode": "linear"}, opset=13, rtol=1e-5, atol=1e-6)
    check("Resize", {"x": x, "scales": np.array([1, 2, 3], F32)}, OpType.RESIZE,
          ResizeAttrs("nearest", "asymmetric", "floor"), {"mode": "nearest"}, opset=10)


@pytest.mark.parametrize("extra", [
    {"mode": "cubic"},
    {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    {"mode": "cubic", "coordinate_transformation_mode": "asymmetric"},
    {"mode": "cubic", "coordinate_transformation_mode": "align_corners"},
    {"mode": "linear", "antialias": 1},
    {"mode": "cubic", "antialias": 1},
])
@pytest.mark.parametrize("scales,sizes", [((1, 1, 0.6, 1.8), None), (None, (1, 2, 3, 9))])
def test_resize_cubic_and_antialias(check, rng, extra, scales, sizes):
    if extra.get("coordinate_transformation_mode") == "align_corners" and scales is not None:
        scales = (1, 1, 0.4, 3.0)  # whole output lengths (5 x 0.4, 7 x 3)
    a = ResizeAttrs(extra["mode"], extra.get("coordinate_transformation_mode", "half_pixel"),
                    cubic_coeff_a=extra.get("cubic_coeff_a", -0.75),
                    exclude_outside=bool(extra.get("exclude_outside", 0)),
                    antialias=bool(extra.get("antialias", 0)))
    check("Resize", _inputs(rng, scales=scales, sizes=sizes), OpType.RESIZE, a, extra, opset=19,
          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_resize_keep_aspect_ratio(check, rng, policy):
    extra = {"mode": "nearest", "keep_aspect_ratio_policy": policy, "axes": [2, 3]}
    x = rng.standard_normal((1, 2, 5, 7)).astype(F32)
    check("Resize", {"x": x, "roi": None, "scales": None, "sizes": np.array([8, 8], np.int64)},
          OpType.RESIZE, ResizeAttrs("nearest", keep_aspect_ratio_policy=policy, axes=(2, 3)),
          extra, opset=19)


def test_resize_tf_crop_and_resize(check, rng):
    extra = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
             "extrapolation_value": 10.0}
    x = rng.standard_normal((1, 2, 5, 7)).astype(F32)
    roi = np.array([0, 0, 0.4, -0.2, 1, 1, 1.2, 0.8], F32)
    check("Resize", {"x": x, "roi": roi, "scales": None, "sizes": np.array([1, 2, 4, 6], np.int64)},
          OpType.RESIZE, ResizeAttrs("linear", "tf_crop_and_resize", extrapolation_value=10.0),
          extra, opset=19, rtol=1e-5, atol=1e-6)
