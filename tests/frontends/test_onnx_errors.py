"""Loading problems and unsupported models give one clear EmberError naming what is wrong."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from ember.errors import EmberError, ModelLoadError, ShapeError, UnsupportedOpError
from ember.frontends.onnx import import_onnx, supported_ops
from ember.frontends.onnx.registry import find_handler
from ember.ir import OpType
from tests.conformance.op_models import F32, I64, const, feed, graph_model, single

X = np.zeros((2, 3), F32)


def _model_with(nodes, opset=13, extra_opsets=()):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    outs = [helper.make_value_info(nodes[-1].output[0], onnx.TypeProto())]
    graph = helper.make_graph(nodes, "g", [x], outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *[helper.make_opsetid(d, v) for d, v in extra_opsets]])


def test_unsupported_ops_are_all_listed_with_nodes_domain_and_opset():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("TfIdfVectorizer", ["a"], ["b"], name="tfidf_1"),
             helper.make_node("TfIdfVectorizer", ["b"], ["c"], name="tfidf_2"),
             helper.make_node("StringNormalizer", ["c"], ["d"], name="strnorm"),
             helper.make_node("MyOp", ["d"], ["e"], name="custom", domain="com.example")]
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(_model_with(nodes, opset=15, extra_opsets=[("com.example", 2)]))
    msg = str(info.value)
    lines = msg.splitlines()
    assert "opset 15" in lines[0] and "3 operator(s)" in lines[0]
    assert any("TfIdfVectorizer (domain ai.onnx, opset 15)" in ln and "'tfidf_1', 'tfidf_2'" in ln for ln in lines)
    assert any("StringNormalizer" in ln and "'strnorm'" in ln for ln in lines)
    assert any("MyOp (domain com.example, opset 2)" in ln and "'custom'" in ln for ln in lines)
    assert "Ember supports:" in msg and "Conv" in msg and "README" in msg


def test_unsupported_forms_are_collected_across_nodes():
    x4 = np.zeros((1, 2, 4, 4), F32)
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["a"], name="r1", antialias=1),
             helper.make_node("Pad", ["a", "p"], ["b"], name="p1", mode="mirror")]
    case = graph_model("forms", nodes, [feed("x", x4), const("s", np.ones(4, F32)),
                                        const("p", np.zeros(8, I64))], ["b"], 19)
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(case.model)
    assert "'r1'" in str(info.value) and "antialias" in str(info.value)


@pytest.mark.parametrize("opset", [0, 29])
def test_opset_out_of_range_names_opset_and_range(opset):
    with pytest.raises(UnsupportedOpError, match=rf"opset {opset}; Ember imports opsets 1 through 28"):
        import_onnx(_model_with([helper.make_node("Relu", ["x"], ["y"])], opset=opset))


def test_ai_onnx_domain_alias():
    m = _model_with([helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")])
    m.opset_import[0].domain = "ai.onnx"
    assert import_onnx(m).nodes[0].op is OpType.RELU


def test_malformed_and_truncated_files(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00\xffnot a protobuf at all" * 7)
    with pytest.raises(ModelLoadError, match="garbage.onnx.*(not a valid ONNX model|not an ONNX)"):
        import_onnx(bad)
    good = single("relu", "Relu", [feed("x", X)]).model.SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx.*(truncated|not an ONNX)"):
        import_onnx(str(cut))
    with pytest.raises(ModelLoadError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="pass a path"):
        import_onnx(12)


def test_path_bytes_and_proto_give_the_same_graph(tmp_path):
    model = single("relu", "Relu", [feed("x", X)]).model
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    graphs = [import_onnx(path), import_onnx(str(path)), import_onnx(path.read_bytes()), import_onnx(model)]
    assert len({str(g) for g in graphs}) == 1
    assert graphs[0].source == str(path) and graphs[0].source_info.nodes == 1


def test_external_data_round_trip_and_missing_file(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(F32)
    model = single("mm", "MatMul", [feed("x", np.zeros((2, 64), F32)), const("w", w)]).model
    path = tmp_path / "sub" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").exists()
    g = import_onnx(path)
    np.testing.assert_array_equal(g.constants["w"], w)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"external data file 'weights.bin'.*missing.*next to the model"):
        import_onnx(path)


def test_input_shapes_symbolic_and_overrides():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", None, 3])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                            [helper.make_value_info("y", onnx.TypeProto())]),
                          opset_imports=[helper.make_opsetid("", 13)])
    assert import_onnx(m).types["y"].shape == ("batch", "x_d1", 3)
    assert import_onnx(m, shapes={"x": (4, 5, 3)}).types["y"].shape == (4, 5, 3)
    with pytest.raises(ShapeError, match=r"input 'x' has rank 2.*declares rank 3"):
        import_onnx(m, shapes={"x": (4, 3)})
    with pytest.raises(ShapeError, match=r"conflicts with the model's fixed dim 2 = 3"):
        import_onnx(m, shapes={"x": (4, 5, 6)})
    with pytest.raises(ShapeError, match=r"not inputs.*\['x'\]"):
        import_onnx(m, shapes={"nope": (1,)})


def test_shape_errors_name_the_node():
    ins = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in (("a", [2, 3]), ("b", [4, 5]))]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g", ins,
                              [helper.make_value_info("y", onnx.TypeProto())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ShapeError, match=r"node 'y'.*inner dims 3 and 4"):
        import_onnx(model)


def test_errors_are_ember_errors():
    assert issubclass(UnsupportedOpError, EmberError) and issubclass(ModelLoadError, EmberError)


def test_handler_registry_picks_highest_version_not_above_opset():
    assert find_handler("", "Squeeze", 12).since == 1
    assert find_handler("", "Squeeze", 13).since == 13
    assert find_handler("ai.onnx", "ReduceMean", 17).since == 1
    assert find_handler("", "ReduceMean", 21).since == 18
    assert find_handler("", "Gelu", 19) is None
    assert find_handler("com.example", "Relu", 13) is None


def test_supported_ops_table_rows():
    rows = supported_ops()
    assert ("", "Squeeze", 1, 12) in rows and ("", "Squeeze", 13, 28) in rows
    assert ("", "Gelu", 20, 28) in rows and ("", "HardSwish", 14, 28) in rows
    required = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Sigmoid",
                "Tanh", "HardSigmoid", "HardSwish", "Clip", "Gelu", "Erf", "Add", "Sub", "Mul", "Div", "Pow",
                "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Max", "Min", "MaxPool", "AveragePool",
                "GlobalAveragePool", "LRN", "Gemm", "MatMul", "Softmax", "LogSoftmax", "LayerNormalization",
                "Concat", "Split", "Slice", "Gather", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                "Expand", "Shape", "ConstantOfShape", "Cast", "Where", "Equal", "Less", "Greater", "Not",
                "Range", "ReduceMean", "ReduceSum", "ReduceMax", "Pad", "Resize", "Identity", "Dropout",
                "Constant"}
    assert required <= {op for _, op, _, _ in rows}
    for _, op, lo, hi in rows:
        assert 1 <= lo <= hi <= 28, op
