"""String attributes of ONNX nodes become the enums of ``ember.ops.attrs`` once, at import; a
value outside them is rejected naming the node, the attribute and the values allowed; the enums
survive an engine file round trip."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import ember
from ember.errors import UnsupportedOpError
from ember.frontends import load
from ember.ir import DType, OpType
from ember.ops.attrs import (
    CoordinateTransform,
    DepthToSpaceMode,
    GeluApproximate,
    GridSampleMode,
    GridSamplePadding,
    NearestMode,
    PadMode,
    ResizeMode,
    RNNActivation,
    RNNDirection,
    ScatterReduction,
)
from tests.conformance.op_models import F32, I64, const, feed, graph_model, rnd, single

X4 = rnd(np.random.default_rng(0), 1, 2, 4, 4)


def _node(case):
    g = load(case.model)
    return g, g.nodes[-1]


def _rejected(op: str, ins, opset: int = 13, **attrs) -> str:
    """The import error of a one-node model named ``bad_node`` (built without ONNX's checker,
    which would refuse the bad attribute first)."""
    names = [i.name if i is not None else "" for i in ins]
    node = helper.make_node(op, names, ["y"], name="bad_node", **attrs)
    feeds = [helper.make_tensor_value_info(i.name, helper.np_dtype_to_tensor_dtype(i.value.dtype),
                                           i.value.shape) for i in ins if i is not None and not i.const]
    inits = [onnx.numpy_helper.from_array(i.value, i.name) for i in ins if i is not None and i.const]
    outs = [helper.make_value_info("y", onnx.TypeProto())]
    graph = helper.make_graph([node], "g", feeds, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with pytest.raises(UnsupportedOpError) as info:
        load(model)
    return str(info.value)


# ---- strings become enums ----------------------------------------------------------------
def test_resize_pad_cast_attrs_are_enums():
    _, n = _node(single("r", "Resize", [feed("x", X4), None, const("s", np.array([1, 1, 2, 2], F32))],
                        opset=13, mode="linear", coordinate_transformation_mode="align_corners"))
    assert n.attrs.mode is ResizeMode.LINEAR and n.attrs.mode == "linear"  # StrEnum: old comparisons hold
    assert n.attrs.coordinate_transformation_mode is CoordinateTransform.ALIGN_CORNERS
    assert n.attrs.nearest_mode is NearestMode.ROUND_PREFER_FLOOR
    _, n = _node(single("p", "Pad", [feed("x", X4), const("p", np.ones(8, I64))], opset=13, mode="edge"))
    assert n.attrs.mode is PadMode.EDGE
    _, n = _node(single("c", "Cast", [feed("x", X4)], to=onnx.TensorProto.FLOAT16))
    assert n.attrs.to is DType.FLOAT16


def test_other_string_attrs_are_enums():
    x = rnd(np.random.default_rng(1), 1, 8, 2, 2)
    assert _node(single("g", "Gelu", [feed("x", x)], opset=20, approximate="tanh"))[1].attrs.approximate \
        is GeluApproximate.TANH
    assert _node(single("d", "DepthToSpace", [feed("x", x)], blocksize=2, mode="CRD"))[1].attrs.mode \
        is DepthToSpaceMode.CRD
    data, idx = np.zeros((4, 3), F32), np.array([[1], [3]], I64)
    n = _node(single("s", "ScatterND", [feed("d", data), const("i", idx), feed("u", np.ones((2, 3), F32))],
                     opset=18, reduction="max"))[1]
    assert n.attrs.reduction is ScatterReduction.MAX
    grid = np.zeros((1, 3, 3, 2), F32)
    n = _node(single("gs", "GridSample", [feed("x", X4), feed("g", grid)], opset=20, mode="cubic",
                     padding_mode="border"))[1]
    assert (n.attrs.mode, n.attrs.padding_mode) == (GridSampleMode.BICUBIC, GridSamplePadding.BORDER)


def test_rnn_direction_and_activations_are_enums():
    r = np.random.default_rng(2)
    ins = [feed("x", rnd(r, 5, 2, 3)), const("w", rnd(r, 2, 6, 3)), const("r", rnd(r, 2, 6, 2))]
    n = _node(single("gru", "GRU", ins, opset=14, n_out=2, hidden_size=2, direction="bidirectional",
                     activations=["sigmoid", "TANH", "Sigmoid", "Tanh"]))[1]
    assert n.attrs.direction is RNNDirection.BIDIRECTIONAL
    assert n.attrs.activations == (RNNActivation.SIGMOID, RNNActivation.TANH) * 2
    assert all(isinstance(a, RNNActivation) for a in n.attrs.activations)


# ---- a bad string names the node, the attribute and the allowed values --------------------
def test_bad_resize_mode_names_node_attribute_and_allowed_values():
    msg = _rejected("Resize", [feed("x", X4), None, const("s", np.array([1, 1, 2, 2], F32))], mode="bogus")
    assert "Resize (domain ai.onnx, opset 13): node 'bad_node'" in msg
    assert "attribute mode='bogus' is not one of 'nearest', 'linear', 'cubic'" in msg


def test_valid_but_unimplemented_value_says_not_supported():
    from ember.frontends.onnx.context import OnnxNode
    from ember.frontends.onnx.handlers.common import choice
    from ember.ops.attrs import PadMode

    n = OnnxNode("bad_node", "Pad", "", ("x",), ("y",), {"mode": "wrap"}, 19)
    with pytest.raises(UnsupportedOpError) as info:
        choice(n, "mode", PadMode.CONSTANT, supported=(PadMode.CONSTANT, PadMode.EDGE))
    assert "mode='wrap' is not supported by Ember (supported: 'constant', 'edge')" in str(info.value)


@pytest.mark.parametrize("op,ins,attrs,expect", [
    ("Pad", [feed("x", X4), const("p", np.ones(8, I64))], {"mode": "mirror"},
     "attribute mode='mirror' is not one of 'constant', 'reflect', 'edge'"),
    ("Gelu", [feed("x", X4)], {"approximate": "fast"},
     "attribute approximate='fast' is not one of 'none', 'tanh'"),
    ("DepthToSpace", [feed("x", X4)], {"blocksize": 2, "mode": "RCD"},
     "attribute mode='RCD' is not one of 'DCR', 'CRD'"),
    ("Resize", [feed("x", X4), None, const("s", np.array([1, 1, 2, 2], F32))],
     {"coordinate_transformation_mode": "corners"}, "attribute coordinate_transformation_mode='corners'"),
    ("Resize", [feed("x", X4), None, const("s", np.array([1, 1, 2, 2], F32))],
     {"nearest_mode": "round"}, "'round_prefer_floor', 'round_prefer_ceil', 'floor', 'ceil'"),
])
def test_bad_strings_are_rejected_with_allowed_values(op, ins, attrs, expect):
    msg = _rejected(op, ins, opset=20 if op == "Gelu" else 13, **attrs)
    assert f"{op} (domain ai.onnx" in msg and "node 'bad_node'" in msg and expect in msg


def _lstm_model(**attrs) -> onnx.ModelProto:
    """One LSTM node, built without ONNX's checker (which would reject the bad attributes)."""
    r = np.random.default_rng(3)
    weights = [onnx.numpy_helper.from_array(rnd(r, 1, 8, 3), "w"),
               onnx.numpy_helper.from_array(rnd(r, 1, 8, 2), "r")]
    node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm1", hidden_size=2, **attrs)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 2, 3])
    graph = helper.make_graph([node], "g", [x], [helper.make_value_info("y", onnx.TypeProto())],
                              initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_bad_rnn_direction_and_activation():
    with pytest.raises(UnsupportedOpError, match=r"'lstm1'.*direction='sideways' is not one of 'forward', "
                                                 r"'reverse', 'bidirectional'"):
        load(_lstm_model(direction="sideways"))
    with pytest.raises(UnsupportedOpError,
                       match=r"'lstm1'.*activations: 'Swish' is not one of 'Sigmoid', 'Tanh'"):
        load(_lstm_model(activations=["Sigmoid", "Swish", "Tanh"]))


# ---- the engine file keeps them --------------------------------------------------------------
def test_resize_and_pad_round_trip_through_an_engine_file(tmp_path):
    x = rnd(np.random.default_rng(4), 1, 2, 3, 3)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
             helper.make_node("Resize", ["p", "", "scales"], ["r"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Cast", ["r"], ["y"], to=onnx.TensorProto.FLOAT)]
    ins = [feed("x", x), const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], I64)),
           const("scales", np.array([1, 1, 2, 2], F32))]
    case = graph_model("pad-resize", nodes, ins, ["y"], 13)
    engine = ember.build(case.model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        want = ctx.infer({"x": x})["y"]
    path = tmp_path / "pad_resize.ember"
    engine.save(path)
    loaded = ember.load(path)
    by_op = {n.op: n.attrs for n in loaded.plan.graph.nodes}
    assert by_op[OpType.RESIZE].mode is ResizeMode.LINEAR
    assert by_op[OpType.RESIZE].coordinate_transformation_mode is CoordinateTransform.HALF_PIXEL
    assert by_op[OpType.PAD].mode is PadMode.REFLECT
    assert {n.op: n.attrs for n in engine.plan.graph.nodes} == by_op
    with loaded.create_context() as ctx:
        np.testing.assert_array_equal(ctx.infer({"x": x})["y"], want)
