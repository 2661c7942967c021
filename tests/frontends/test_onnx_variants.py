"""Each attribute-vs-input form across opsets imports to the canonical attrs of ember.ops.attrs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from ember.errors import UnsupportedOpError
from ember.frontends.onnx import import_onnx
from ember.ir import DType, OpType
from ember.ops.attrs import (
    AutoPad,
    AxesAttrs,
    ClipAttrs,
    GemmAttrs,
    PadAttrs,
    ReduceAttrs,
    SliceAttrs,
    SoftmaxAttrs,
    SplitAttrs,
)
from tests.conformance.op_models import F32, I64, const, feed, graph_model, single

X = np.zeros((2, 3, 4), F32)
X4 = np.zeros((1, 2, 4, 5), F32)
AX = lambda *a: const("axes", np.array(a, I64))  # noqa: E731


def only(case, op=None):
    g = import_onnx(case.model)
    nodes = [n for n in g.nodes if op is None or n.op is op]
    assert len(nodes) == 1, g
    return g, nodes[0]


@pytest.mark.parametrize("opset, ins, attrs", [
    (11, [feed("x", np.zeros((3, 1, 4, 1), F32))], {"axes": [1, -1]}),
    (13, [feed("x", np.zeros((3, 1, 4, 1), F32)), const("a", np.array([1, -1], I64))], {}),
])
def test_squeeze_axes_attr_and_input(opset, ins, attrs):
    g, n = only(single("sq", "Squeeze", ins, opset=opset, **attrs))
    assert n.attrs == AxesAttrs(axes=(1, -1)) and n.inputs == ("x",)
    assert g.types[n.outputs[0]].shape == (3, 4)


def test_squeeze_13_without_axes_resolves_static_unit_dims():
    _, n = only(single("sq", "Squeeze", [feed("x", np.zeros((1, 4, 1), F32))], opset=13))
    assert n.attrs == AxesAttrs(axes=(0, 2))


def test_squeeze_13_runtime_axes_stay_an_input():
    _, n = only(single("sq", "Squeeze", [feed("x", np.zeros((3, 1), F32)), feed("a", np.array([1], I64))], opset=13))
    assert n.attrs == AxesAttrs(axes=None) and n.inputs == ("x", "a")


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_forms(opset):
    ins = [feed("x", X)] + ([const("a", np.array([0, -1], I64))] if opset >= 13 else [])
    g, n = only(single("u", "Unsqueeze", ins, opset=opset, **({"axes": [0, -1]} if opset < 13 else {})))
    assert n.attrs == AxesAttrs(axes=(0, -1)) and n.inputs == ("x",)
    assert g.types["y0"].shape == (1, 2, 3, 4, 1)


@pytest.mark.parametrize("op, opset, input_form", [
    ("ReduceMean", 13, False), ("ReduceMean", 18, True), ("ReduceSum", 11, False),
    ("ReduceSum", 13, True), ("ReduceMax", 17, False), ("ReduceMax", 18, True),
])
def test_reduce_axes_forms(op, opset, input_form):
    ins = [feed("x", X)] + ([AX(-1, 0)] if input_form else [])
    attrs = {} if input_form else {"axes": [-1, 0]}
    g, n = only(single("r", op, ins, opset=opset, keepdims=0, **attrs))
    assert n.attrs == ReduceAttrs(axes=(-1, 0), keepdims=False) and n.inputs == ("x",)
    assert g.types["y0"].shape == (3,)


def test_reduce_runtime_axes_and_noop():
    _, n = only(single("r", "ReduceSum", [feed("x", X), feed("axes", np.array([1], I64))], opset=13))
    assert n.attrs.axes is None and n.inputs == ("x", "axes")
    g, n = only(single("r", "ReduceSum", [feed("x", X)], opset=13, noop_with_empty_axes=1))
    assert n.attrs == ReduceAttrs(axes=None, keepdims=True, noop_with_empty_axes=True)
    assert g.types["y0"].shape == X.shape


@pytest.mark.parametrize("opset, ins, attrs, want", [
    (11, [feed("x", X)], {"split": [1, 2], "axis": 1}, SplitAttrs(axis=1, split=(1, 2))),
    (11, [feed("x", np.zeros((2, 4), F32))], {"axis": 1}, SplitAttrs(axis=1, num_outputs=2)),
    (13, [feed("x", X), const("s", np.array([1, 2], I64))], {"axis": 1}, SplitAttrs(axis=1, split=(1, 2))),
    (18, [feed("x", np.zeros((2, 5), F32))], {"axis": -1, "num_outputs": 2}, SplitAttrs(axis=-1, num_outputs=2)),
])
def test_split_forms(opset, ins, attrs, want):
    g, n = only(single("s", "Split", ins, opset=opset, n_out=2, **attrs))
    assert n.attrs == want and n.inputs == ("x",)
    if opset == 18:
        assert [g.types[o].shape for o in n.outputs] == [(2, 3), (2, 2)]


@pytest.mark.parametrize("opset, ins, attrs, want, n_inputs", [
    (10, [feed("x", X)], {"min": -1.0, "max": 2.0}, ClipAttrs(-1.0, 2.0), 1),
    (10, [feed("x", X)], {}, ClipAttrs(None, None), 1),
    (11, [feed("x", X), const("lo", np.array(0, F32)), const("hi", np.array(6, F32))], {}, ClipAttrs(0.0, 6.0), 1),
    (13, [feed("x", X), None, const("hi", np.array(6, F32))], {}, ClipAttrs(None, 6.0), 1),
    (13, [feed("x", X), feed("lo", np.array(0, F32))], {}, ClipAttrs(None, None), 3),
])
def test_clip_forms(opset, ins, attrs, want, n_inputs):
    _, n = only(single("c", "Clip", ins, opset=opset, **attrs))
    assert n.attrs == want and len(n.inputs) == n_inputs


def test_pad_forms():
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    _, n = only(single("p", "Pad", [feed("x", X4)], opset=10, pads=pads, value=1.5, mode="edge"))
    assert n.attrs == PadAttrs(mode="edge", pads=tuple(pads), value=1.5) and n.inputs == ("x",)
    _, n = only(single("p", "Pad", [feed("x", X4), const("p", np.array(pads, I64)),
                                    const("v", np.array(2.0, F32))], opset=13))
    assert n.attrs == PadAttrs(pads=tuple(pads), value=2.0) and n.inputs == ("x",)
    g, n = only(single("p", "Pad", [feed("x", X4), const("p", np.array([1, 1, 2, 2], I64)), None,
                                    const("a", np.array([-1, 1], I64))], opset=18))
    assert n.attrs.axes == (-1, 1) and g.types["y0"].shape == (1, 5, 4, 8)
    _, n = only(single("p", "Pad", [feed("x", X4), feed("p", np.array(pads, I64))], opset=13))
    assert n.attrs.pads is None and n.inputs == ("x", "p")


def test_pad_wrap_mode_is_imported():
    _, n = only(single("p", "Pad", [feed("x", X4), const("p", np.zeros(8, I64))], opset=19, mode="wrap"))
    assert n.op is OpType.PAD and n.attrs.mode == "wrap"


def test_slice_forms():
    _, n = only(single("s", "Slice", [feed("x", X)], opset=9, starts=[1], ends=[3], axes=[-1]))
    assert n.attrs == SliceAttrs(starts=(1,), ends=(3,), axes=(-1,), steps=(1,)) and n.inputs == ("x",)
    g, n = only(single("s", "Slice", [feed("x", X), const("s", np.array([0, -1], I64)),
                                      const("e", np.array([3, -4], I64)), None,
                                      const("st", np.array([2, -1], I64))], opset=13))
    assert n.attrs == SliceAttrs(starts=(0, -1), ends=(3, -4), axes=(0, 1), steps=(2, -1))
    assert g.types["y0"].shape == (1, 3, 4)
    g, n = only(single("s", "Slice", [feed("x", X), feed("s", np.array([0], I64)), const("e", np.array([1], I64)),
                                      const("a", np.array([2], I64))], opset=13))
    assert n.attrs == SliceAttrs() and n.inputs == ("x", "s", "e", "a")
    assert g.types["y0"].shape == (2, 3, "y0_d2")


@pytest.mark.parametrize("opset, axis, shape, want", [
    (11, None, (2, 3, 4), SoftmaxAttrs(axis=1, legacy_flatten=True)),
    (11, None, (2, 3), SoftmaxAttrs(axis=1, legacy_flatten=False)),
    (11, -1, (2, 3, 4), SoftmaxAttrs(axis=-1, legacy_flatten=False)),
    (13, None, (2, 3, 4), SoftmaxAttrs(axis=-1, legacy_flatten=False)),
    (13, 1, (2, 3, 4), SoftmaxAttrs(axis=1, legacy_flatten=False)),
])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_forms(op, opset, axis, shape, want):
    attrs = {} if axis is None else {"axis": axis}
    _, n = only(single("s", op, [feed("x", np.zeros(shape, F32))], opset=opset, **attrs))
    assert n.attrs == want


def test_resize_forms():
    scales = np.array([1, 1, 2, 2], F32)
    _, n = only(single("r", "Resize", [feed("x", X4), const("roi", np.zeros(0, F32)), const("s", scales)], opset=11))
    assert n.attrs.scales == (1, 1, 2, 2) and n.attrs.sizes is None and n.inputs == ("x",)
    g, n = only(single("r", "Resize", [feed("x", X4), None, None, const("z", np.array([1, 2, 3, 3], I64))],
                       opset=13, mode="linear", coordinate_transformation_mode="align_corners"))
    assert n.attrs.sizes == (1, 2, 3, 3) and n.attrs.mode == "linear"
    assert n.attrs.coordinate_transformation_mode == "align_corners"
    g, n = only(single("r", "Resize", [feed("x", X4), None, const("s", np.array([2, 3], F32))], opset=18, axes=[2, 3]))
    assert n.attrs.scales == (1, 1, 2, 3) and g.types["y0"].shape == (1, 2, 8, 15)
    _, n = only(single("r", "Resize", [feed("x", X4), None, None, feed("z", np.array([1, 2, 3, 3], I64))], opset=13))
    assert n.attrs.sizes is None and n.inputs == ("x", "", "", "z")


@pytest.mark.parametrize("attrs, why", [({"mode": "nearest", "antialias": 1}, "antialias=1 with mode='nearest'"),
                                        ({"coordinate_transformation_mode": "tf_crop_and_resize"}, "without a roi")])
def test_resize_unsupported_forms_are_named(attrs, why):
    case = single("r", "Resize", [feed("x", X4), None, const("s", np.ones(4, F32))], opset=19, **attrs)
    with pytest.raises(UnsupportedOpError, match=why):
        import_onnx(case.model)


def test_dropout_forms():
    g, n = only(single("d", "Dropout", [feed("x", X), const("r", np.array(0.2, F32))], opset=13))
    assert n.op is OpType.DROPOUT and n.inputs == ("x",)
    g = import_onnx(single("d", "Dropout", [feed("x", X)], opset=13, n_out=2).model)
    assert [n.op for n in g.nodes] == [OpType.DROPOUT] and g.constants["y1"].all()
    assert g.types["y1"].dtype is DType.BOOL and g.types["y1"].shape == X.shape
    g = import_onnx(single("d", "Dropout", [feed("x", X)], opset=13, n_out=2).model, shapes={"x": ("b", 3, 4)})
    assert [n.op for n in g.nodes] == [OpType.DROPOUT, OpType.SHAPE, OpType.CONSTANT_OF_SHAPE]
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        import_onnx(single("d", "Dropout", [feed("x", X), None, const("t", np.array(True))], opset=13).model)


def test_batch_norm_training_outputs_are_rejected():
    p = [const(k, np.ones(3, F32)) for k in "sbmv"]
    case = single("bn", "BatchNormalization", [feed("x", X), *p], opset=9, n_out=3)
    with pytest.raises(UnsupportedOpError, match="training-mode statistics output 'y1'"):
        import_onnx(case.model)


def test_max_pool_indices_are_imported():
    g, n = only(single("mp", "MaxPool", [feed("x", X4)], n_out=2, kernel_shape=[2, 2], storage_order=1))
    assert n.outputs == ("y0", "y1") and n.attrs.storage_order == 1 and g.types["y1"].dtype is DType.INT64


def test_gemm_defaults_gelu_hardswish_cast_shape():
    _, n = only(single("g", "Gemm", [feed("a", np.zeros((2, 3), F32)), const("b", np.zeros((3, 4), F32))], opset=13))
    assert n.attrs == GemmAttrs() and n.inputs == ("a", "b")
    _, n = only(single("g", "Gelu", [feed("x", X)], opset=20, approximate="tanh"))
    assert n.attrs.approximate == "tanh"
    assert only(single("h", "HardSwish", [feed("x", X)], opset=14))[1].op is OpType.HARD_SWISH
    g, n = only(single("c", "Cast", [feed("x", X)], to=onnx.TensorProto.INT64))
    assert n.attrs.to is DType.INT64 and g.types["y0"].dtype is DType.INT64
    g, n = only(single("s", "Shape", [feed("x", X)], opset=15, start=1, end=-1))
    assert (n.attrs.start, n.attrs.end) == (1, -1) and g.types["y0"].shape == (1,)


def test_layer_norm_statistics_outputs_are_computed():
    case = single("ln", "LayerNormalization", [feed("x", X), const("g", np.ones(4, F32))], opset=17, n_out=3)
    g = import_onnx(case.model)
    assert g.nodes[0].op is OpType.LAYER_NORM
    assert g.types["y1"].shape == (2, 3, 1) and g.types["y2"].shape == (2, 3, 1)
    assert OpType.RECIPROCAL in [n.op for n in g.nodes]


def test_conv_auto_pad_resolved_when_static_kept_when_symbolic():
    w = const("w", np.zeros((4, 2, 3, 3), F32))
    _, n = only(single("c", "Conv", [feed("x", X4), w], auto_pad="SAME_UPPER", strides=[2, 2]))
    assert n.attrs.auto_pad is AutoPad.NOTSET and n.attrs.pads == (0, 1, 1, 1)
    assert n.attrs.kernel_shape == (3, 3)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2, "h", "w"])
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])
    model = helper.make_model(helper.make_graph(
        [node], "g", [x], [helper.make_value_info("y", onnx.TypeProto())],
        initializer=[onnx.numpy_helper.from_array(np.zeros((4, 2, 3, 3), F32), "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    g = import_onnx(model)
    assert g.nodes[0].attrs.auto_pad is AutoPad.SAME_LOWER
    assert g.types["y"].shape == ("n", 4, "ceil(h/2)", "ceil(w/2)")


def test_conv_transpose_output_shape_and_padding():
    w = const("w", np.zeros((2, 3, 3, 3), F32))
    g, n = only(single("ct", "ConvTranspose", [feed("x", X4), w], strides=[2, 2], output_shape=[9, 11]))
    assert n.attrs.output_shape == (9, 11) and g.types["y0"].shape == (1, 3, 9, 11)
    g, n = only(single("ct", "ConvTranspose", [feed("x", X4), w], strides=[2, 2], pads=[1, 1, 1, 1],
                       output_padding=[1, 0]))
    assert n.attrs.output_padding == (1, 0) and g.types["y0"].shape == (1, 3, 8, 9)


def test_constant_node_forms_become_constants():
    values = {"value": helper.make_tensor("t", onnx.TensorProto.FLOAT, [2], [1, 2]),
              "value_float": 1.5, "value_floats": [1.0, 2.0], "value_int": 3, "value_ints": [1, 2, 3]}
    nodes, outs = [], []
    for k, (attr, v) in enumerate(values.items()):
        nodes.append(helper.make_node("Constant", [], [f"c{k}"], **{attr: v}))
        nodes.append(helper.make_node("Identity", [f"c{k}"], [f"y{k}"]))
        outs.append(f"y{k}")
    g = import_onnx(graph_model("consts", nodes, [], outs, 13).model)
    assert not g.inputs and all(n.op is OpType.IDENTITY for n in g.nodes)
    assert g.constants["c1"].shape == () and g.constants["c1"].dtype == np.float32
    assert g.constants["c4"].tolist() == [1, 2, 3] and g.constants["c4"].dtype == np.int64


def test_string_constant_is_rejected():
    nodes = [helper.make_node("Constant", [], ["c"], value_string="hi"), helper.make_node("Identity", ["x"], ["y"])]
    with pytest.raises(UnsupportedOpError, match="string"):
        import_onnx(graph_model("s", nodes, [feed("x", X)], ["y"], 13).model)


def test_initializer_listed_as_input_is_a_constant():
    case = single("a", "Add", [feed("x", X), const("b", np.ones(4, F32))])
    case.model.graph.input.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4]))
    g = import_onnx(case.model)
    assert g.inputs == ["x"] and "b" in g.constants


def test_max_min_variadic_become_binary_chains():
    g = import_onnx(single("m", "Max", [feed("a", X), feed("b", X), feed("c", X)], opset=13).model)
    assert [n.op for n in g.nodes] == [OpType.MAX, OpType.MAX] and g.nodes[-1].outputs == ("y0",)


def _if_model(dim1, else_node=None):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, dim1])
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_value_info("t", onnx.TypeProto())])
    else_g = helper.make_graph([else_node or helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_value_info("e", onnx.TypeProto())])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Equal", ["d", "three"], ["c"]),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    inits = [onnx.numpy_helper.from_array(np.array(1, I64), "one"),
             onnx.numpy_helper.from_array(np.array(3, I64), "three")]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_value_info("y", onnx.TypeProto())], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dim1, taken", [(3, OpType.RELU), (4, OpType.NEG)])
def test_if_with_build_time_condition_is_inlined(dim1, taken):
    g = import_onnx(_if_model(dim1))
    assert taken in [n.op for n in g.nodes] and g.nodes[-1].op is OpType.IDENTITY
    assert g.types["y"].shape == (2, dim1)


def test_if_with_run_time_condition_computes_both_branches_and_selects():
    g = import_onnx(_if_model("n"))
    ops = [n.op for n in g.nodes]
    assert OpType.RELU in ops and OpType.NEG in ops and ops[-1] is OpType.WHERE
    assert g.types["y"].shape == (2, "n")
    assert import_onnx(_if_model("n"), shapes={"x": (2, 3)}).nodes[-2].op is OpType.RELU
    other_shape = helper.make_node("ReduceSum", ["x"], ["e"], keepdims=0)
    with pytest.raises(UnsupportedOpError, match=r"If .*'branch'.*condition is only known at run time"):
        import_onnx(_if_model("n", other_shape))


def test_local_functions_are_inlined_and_squeeze_without_axes_on_symbolic_input():
    fn = helper.make_function("custom", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Double", ["x"], ["y"], domain="custom"), helper.make_node("Squeeze", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 3])],
                              [helper.make_value_info("z", onnx.TypeProto())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[fn])
    g = import_onnx(model)
    assert [n.op for n in g.nodes] == [OpType.ADD, OpType.SQUEEZE]
    assert g.nodes[1].attrs == AxesAttrs(axes=None) and g.types["z"].shape == ("n", 3)


@pytest.mark.parametrize("slope_is_input", [False, True])
def test_prelu_before_opset_7_applies_a_channel_slope_per_channel(slope_is_input):
    """PRelu-6: a 1-D slope of the channel count multiplies axis 1 (PyTorch's ``nn.PReLU(C)`` as
    exported then; ONNX's backend cases ``test_PReLU_*d_multiparam``), constant or a graph input."""
    import ember

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    slope = np.array([0.1, 0.5, 2.0], np.float32)
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)]
    inits = []
    if slope_is_input:
        inputs.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, slope.shape))
    else:
        inits.append(onnx.numpy_helper.from_array(slope, "s"))
    g = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"])], "prelu6", inputs,
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    feeds = {"x": x, **({"s": slope} if slope_is_input else {})}
    with engine.create_context() as ctx:
        y = ctx.infer(feeds)["y"]
    want = np.where(x >= 0, x, x * slope.reshape(3, 1, 1))
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-6)


@pytest.mark.parametrize("axis,b_shape", [(1, (3,)), (None, (5,)), (-3, (3, 4)), (0, (2, 3, 4, 5))])
def test_binary_ops_before_opset_7_broadcast_b_at_axis(axis, b_shape):
    """Add/Mul... before opset 7: ``broadcast=1`` aligns B with A at ``axis`` (PyTorch's 2017
    exports: a per-channel bias at axis 1), not from the right as numpy does from opset 7."""
    import ember

    a = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal(b_shape).astype(np.float32)
    attrs = {"broadcast": 1, **({"axis": axis} if axis is not None else {})}
    g = helper.make_graph([helper.make_node("Mul", ["a", "b"], ["y"], **attrs)], "mul6",
                          [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, a.shape)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, a.shape)],
                          [onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    with engine.create_context() as ctx:
        y = np.asarray(ctx.infer({"a": a})["y"])
    start = (axis + 4 if axis < 0 else axis) if axis is not None else 4 - len(b_shape)
    want = a * b.reshape(b_shape + (1,) * (4 - start - len(b_shape)))
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_batch_norm_before_opset_7_in_training_mode_is_refused():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1, 2, 3, 3))
    inits = [onnx.numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("s", "b", "m", "v")]
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], is_test=0)],
                          "bn6", [x], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (1, 2, 3, 3))],
                          inits)
    with pytest.raises(UnsupportedOpError, match="is_test=0"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)]))
