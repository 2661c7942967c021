"""Conformance models for the data-movement and shape ops (see ``op_models``)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tests.conformance.op_models import F32, I64, OpCase, _rng, const, feed, graph_model, rnd, single


def _concat_split_slice(r) -> list[OpCase]:
    x = rnd(r, 2, 6, 5)
    big = np.iinfo(np.int64).max
    return [
        single("Concat-axis-neg", "Concat", [feed("a", x), feed("b", rnd(r, 2, 6, 3)), const("c", rnd(r, 2, 6, 1))],
               axis=-1),
        single("Concat-int64", "Concat", [feed("a", np.array([1, 2], I64)), const("b", np.array([3], I64))], axis=0),
        single("Split-11-attr", "Split", [feed("x", x)], opset=11, n_out=2, axis=1, split=[2, 4]),
        single("Split-11-equal", "Split", [feed("x", x)], opset=11, n_out=3, axis=1),
        single("Split-13-input", "Split", [feed("x", x), const("s", np.array([1, 4], I64))], opset=13, n_out=2,
               axis=-1),
        single("Split-13-equal", "Split", [feed("x", x)], opset=13, n_out=2, axis=0),
        single("Split-18-num-outputs-uneven", "Split", [feed("x", x)], opset=18, n_out=2, axis=2, num_outputs=2),
        single("Slice-9-attrs", "Slice", [feed("x", x)], opset=9, starts=[1, 0], ends=[5, -1], axes=[1, 2]),
        single("Slice-9-no-axes", "Slice", [feed("x", x)], opset=9, starts=[0, 1], ends=[1, 100]),
        single("Slice-13-const", "Slice", [feed("x", x), const("s", np.array([1, -3], I64)),
                                           const("e", np.array([big, -1], I64)), const("a", np.array([1, 2], I64))],
               opset=13),
        single("Slice-13-steps", "Slice", [feed("x", x), const("s", np.array([0], I64)), const("e", np.array([6], I64)),
                                           const("a", np.array([-2], I64)), const("st", np.array([2], I64))], opset=13),
        single("Slice-13-negative-step", "Slice", [feed("x", x), const("s", np.array([-1], I64)),
                                                   const("e", np.array([-big], I64)), const("a", np.array([1], I64)),
                                                   const("st", np.array([-2], I64))], opset=13),
        single("Slice-13-runtime-starts", "Slice", [feed("x", x), feed("s", np.array([1], I64)),
                                                    feed("e", np.array([4], I64)), const("a", np.array([1], I64))],
               opset=13),
    ]


def _gather_reshape(r) -> list[OpCase]:
    x = rnd(r, 3, 4, 5)
    return [
        single("Gather-axis0-scalar", "Gather", [feed("x", x), const("i", np.array(1, I64))]),
        single("Gather-axis1-2d-neg", "Gather", [feed("x", x), const("i", np.array([[0, -1], [2, 1]], I64))], axis=1),
        single("Gather-int32-indices", "Gather", [feed("x", x), feed("i", np.array([2, 0], np.int32))], axis=-1),
        single("Reshape-zero-minus-one", "Reshape", [feed("x", x), const("s", np.array([0, -1], I64))]),
        single("Reshape-14-allowzero", "Reshape", [feed("x", x), const("s", np.array([5, 12], I64))], opset=14,
               allowzero=1),
        single("Reshape-7", "Reshape", [feed("x", x), const("s", np.array([-1, 2, 5], I64))], opset=7),
        single("Flatten-axis0", "Flatten", [feed("x", x)], axis=0),
        single("Flatten-default", "Flatten", [feed("x", x)]),
        single("Flatten-neg", "Flatten", [feed("x", x)], axis=-1),
        single("Transpose-perm", "Transpose", [feed("x", x)], perm=[2, 0, 1]),
        single("Transpose-default", "Transpose", [feed("x", x)]),
        single("Squeeze-11-attr", "Squeeze", [feed("x", rnd(r, 3, 1, 4, 1))], opset=11, axes=[1, -1]),
        single("Squeeze-13-input", "Squeeze", [feed("x", rnd(r, 3, 1, 4, 1)), const("a", np.array([-1], I64))],
               opset=13),
        single("Squeeze-13-all", "Squeeze", [feed("x", rnd(r, 1, 4, 1))], opset=13),
        single("Unsqueeze-11-attr", "Unsqueeze", [feed("x", x)], opset=11, axes=[0, 4]),
        single("Unsqueeze-13-neg", "Unsqueeze", [feed("x", x), const("a", np.array([-1, 1], I64))], opset=13),
        single("Expand", "Expand", [feed("x", rnd(r, 3, 1)), const("s", np.array([2, 1, 4], I64))]),
        single("Expand-smaller-shape", "Expand", [feed("x", rnd(r, 2, 3, 1)), const("s", np.array([1, 4], I64))]),
    ]


def _shape_generators(r) -> list[OpCase]:
    x = rnd(r, 2, 3, 4)
    range_nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Squeeze", ["s", "zero"], ["n"]),
        helper.make_node("Range", ["start", "n", "one"], ["y0"]),
    ]
    cos_nodes = [helper.make_node("Shape", ["x"], ["s"]),
                 helper.make_node("ConstantOfShape", ["s"], ["y0"],
                                  value=helper.make_tensor("v", onnx.TensorProto.INT64, [1], [7]))]
    return [
        single("Shape", "Shape", [feed("x", x)]),
        single("Shape-15-start-end", "Shape", [feed("x", x)], opset=15, start=-2),
        single("Shape-15-end", "Shape", [feed("x", x)], opset=15, end=-1),
        graph_model("Range-from-shape", range_nodes,
                    [feed("x", x), const("zero", np.array([0], I64)), const("start", np.array(0, I64)),
                     const("one", np.array(1, I64))], ["y0"], 15),
        graph_model("ConstantOfShape-int64", cos_nodes, [feed("x", x)], ["y0"], 15),
        single("ConstantOfShape-default", "ConstantOfShape", [const("s", np.array([2, 3], I64))]),
    ]


def _pad(r) -> list[OpCase]:
    x = rnd(r, 1, 2, 4, 5)
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)
    cases = [
        single("Pad-10-attrs", "Pad", [feed("x", x)], opset=10, pads=pads.tolist(), value=1.5),
        single("Pad-10-reflect", "Pad", [feed("x", x)], opset=10, pads=pads.tolist(), mode="reflect"),
        single("Pad-13-const", "Pad", [feed("x", x), const("p", pads), const("v", np.array(-1.0, F32))], opset=13),
        single("Pad-13-edge", "Pad", [feed("x", x), const("p", pads)], opset=13, mode="edge"),
        single("Pad-13-reflect", "Pad", [feed("x", x), const("p", pads)], opset=13, mode="reflect"),
        single("Pad-18-axes", "Pad", [feed("x", x), const("p", np.array([1, 2, 3, 0], I64)), None,
                                      const("a", np.array([-1, 2], I64))], opset=18),
        single("Pad-13-negative", "Pad", [feed("x", x), const("p", np.array([0, 0, -1, 1, 0, 0, 0, -2], I64))],
               opset=13),
    ]
    return cases


def _resize(r) -> list[OpCase]:
    x = rnd(r, 1, 2, 4, 5)
    empty = np.zeros((0,), F32)
    scales = np.array([1, 1, 2, 1.5], F32)
    sizes = np.array([1, 2, 7, 3], I64)
    cases = [
        single("Resize-13-nearest-scales", "Resize", [feed("x", x), None, const("sc", scales)], opset=13),
        single("Resize-13-nearest-sizes-floor", "Resize", [feed("x", x), None, None, const("sz", sizes)], opset=13,
               nearest_mode="floor", coordinate_transformation_mode="asymmetric"),
        single("Resize-11-roi-scales", "Resize", [feed("x", x), const("roi", empty), const("sc", scales)], opset=11,
               mode="nearest"),
        single("Resize-11-sizes", "Resize", [feed("x", x), const("roi", empty), const("sc", empty), const("sz", sizes)],
               opset=11, mode="linear"),
        # align_corners with whole output lengths (4 x 2, 5 x 3): with a fractional one (5 x 1.5)
        # ONNX's reference and ONNX Runtime disagree, and Ember refuses it
        single("Resize-13-linear-align", "Resize",
               [feed("x", x), None, const("sc", np.array([1, 1, 2, 3], F32))], opset=13, mode="linear",
               coordinate_transformation_mode="align_corners"),
        single("Resize-13-linear-pytorch", "Resize", [feed("x", x), None, None, const("sz", sizes)], opset=13,
               mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
        single("Resize-13-linear-half-pixel-down", "Resize",
               [feed("x", x), None, const("sc", np.array([1, 1, 0.5, 0.6], F32))], opset=13, mode="linear"),
        single("Resize-18-axes", "Resize", [feed("x", x), None, const("sc", np.array([2, 3], F32))], opset=18,
               axes=[2, 3]),
        single("Resize-13-ceil-asym", "Resize", [feed("x", x), None, const("sc", scales)], opset=13,
               nearest_mode="ceil", coordinate_transformation_mode="asymmetric"),
    ]
    return cases


def _runtime_params(r) -> list[OpCase]:
    """Parameters fed at run time (not constants): the node keeps them as inputs."""
    x = rnd(r, 2, 1, 4, 5)
    i64 = lambda *v: np.array(v, I64)  # noqa: E731
    return [
        single("Pad-13-runtime-pads", "Pad", [feed("x", x), feed("p", i64(0, 0, 1, 2, 0, 0, 2, 1))], opset=13),
        single("Squeeze-13-runtime-axes", "Squeeze", [feed("x", x), feed("a", i64(1))], opset=13),
        single("Unsqueeze-13-runtime-axes", "Unsqueeze", [feed("x", x), feed("a", i64(0, -1))], opset=13),
        single("ReduceMean-18-runtime-axes", "ReduceMean", [feed("x", x), feed("a", i64(-1))], opset=18),
        single("Reshape-runtime-shape", "Reshape", [feed("x", x), feed("s", i64(4, -1))]),
        single("Expand-runtime-shape", "Expand", [feed("x", x), feed("s", i64(3, 2, 1, 1, 5))]),
        single("Split-13-runtime-sizes", "Split", [feed("x", x), feed("s", i64(1, 3))], opset=13, n_out=2, axis=2),
        single("ConstantOfShape-runtime", "ConstantOfShape", [feed("s", i64(2, 3))],
               value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5])),
        single("Range-runtime", "Range", [feed("a", np.array(1, I64)), feed("b", np.array(9, I64)),
                                          feed("c", np.array(3, I64))]),
        single("Resize-13-runtime-scales", "Resize", [feed("x", x), None, feed("sc", np.array([1, 1, 2, 2], F32))],
               opset=13),
        single("Slice-13-runtime-all", "Slice", [feed("x", x), feed("s", i64(0, 1)), feed("e", i64(-1, 4)),
                                                 feed("a", i64(3, 2)), feed("st", i64(2, 1))], opset=13),
    ]


def shape_cases() -> list[OpCase]:
    r = _rng("shape")
    return (_concat_split_slice(r) + _gather_reshape(r) + _shape_generators(r) + _pad(r) + _resize(r)
            + _runtime_params(r))
