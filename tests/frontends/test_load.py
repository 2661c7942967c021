"""``ember.frontends.load``: one way in for every kind of source, and an error that says what
to pass for every kind it cannot read."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ember.errors import ModelLoadError, ShapeError
from ember.frontends import FRONTENDS, detect, formats, load
from ember.frontends.onnx import source as onnx_source
from ember.frontends.sniff import LEN, VARINT, message_fields
from ember.ir import Graph, OpType
from tests.conformance.op_models import F32, feed, single

MODEL = single("relu", "Relu", [feed("x", np.zeros((2, 3), F32))]).model


def _save(path: Path, model: onnx.ModelProto = MODEL) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ---- each kind of source -----------------------------------------------------------------
def test_graph_is_returned_as_it_is():
    g = load(MODEL)
    assert load(g) is g


def test_model_proto_bytes_and_paths_give_the_same_graph(tmp_path):
    path = _save(tmp_path / "m.onnx")
    graphs = [load(MODEL), load(MODEL.SerializeToString()), load(bytearray(MODEL.SerializeToString())),
              load(path), load(str(path))]
    assert len({str(g) for g in graphs}) == 1
    assert graphs[0].nodes[0].op is OpType.RELU and graphs[3].source == str(path)


def test_path_without_onnx_suffix_is_recognized_by_content(tmp_path):
    path = _save(tmp_path / "model.bin")
    assert detect(path).name == "onnx"
    assert str(load(path)) == str(load(MODEL)).replace("<onnx.ModelProto>", str(path))


def test_format_names_the_frontend(tmp_path):
    path = _save(tmp_path / "weights.dat")
    assert load(path, format="onnx").nodes[0].op is OpType.RELU
    assert load(path, format="ONNX").nodes[0].op is OpType.RELU


def test_shapes_reach_the_frontend():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_value_info("y", onnx.TypeProto())])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    assert load(model).types["y"].shape == ("batch", 3)
    assert load(model, shapes={"x": (4, 3)}).types["y"].shape == (4, 3)
    with pytest.raises(ShapeError, match="not inputs"):
        load(model, shapes={"nope": (1,)})


def test_the_table_and_detect():
    assert formats() == [f.name for f in FRONTENDS] and formats()[0] == "onnx"
    assert {"network", "torch"} <= set(formats())
    assert detect(MODEL).name == "onnx" and detect(MODEL.SerializeToString()).name == "onnx"
    assert ".onnx" in FRONTENDS[0].suffixes


def test_import_ember_frontends_does_not_import_onnx():
    code = ("import sys, ember.frontends; from ember.frontends import load, formats; "
            "assert 'onnx' not in sys.modules, 'onnx imported'; print(formats())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "onnx" in out.stdout


def test_model_field_table_matches_onnx_descriptor():
    """The content sniffer's field table (it may not import onnx) agrees with onnx.proto."""
    fd = onnx.ModelProto.DESCRIPTOR
    wire = {f.number: VARINT if f.type in (f.TYPE_INT64, f.TYPE_INT32) else LEN for f in fd.fields}
    assert onnx_source._MODEL_FIELDS == wire


def test_sniffer_walks_top_level_fields_only():
    fields = message_fields(MODEL.SerializeToString())
    assert fields is not None and fields[7] == LEN and fields[1] == VARINT
    assert message_fields(b"\x00\xffnot a protobuf") is None
    assert message_fields(MODEL.SerializeToString()[:-3]) is None  # stops short of the end
    assert not onnx_source.recognizes(b"") and not onnx_source.recognizes(b"\x08\x07")  # no graph


# ---- each error ----------------------------------------------------------------------------
def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model file .*nope\.onnx does not exist"):
        load(tmp_path / "nope.onnx")


def test_engine_file_says_to_use_ember_load(tmp_path):
    path = tmp_path / "model.ember"
    path.write_bytes(b"PK\x03\x04 an engine")
    with pytest.raises(ModelLoadError,
                       match=r"model\.ember is already a built engine.*ember\.load\(\).*ember run"):
        load(path)


def test_unrecognized_file_lists_the_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError) as info:
        load(path)
    msg = str(info.value)
    assert "notes.txt" in msg and "onnx (an ONNX model" in msg and "format='onnx'" in msg
    with pytest.raises(ModelLoadError, match="folder"):
        load(tmp_path)


def test_unrecognized_objects_and_bytes_list_the_formats():
    with pytest.raises(ModelLoadError) as info:
        load(12)
    msg = str(info.value)
    assert msg.startswith("cannot import an object of type int:")
    assert "onnx (an ONNX model" in msg and "ember.ir.Graph" in msg
    with pytest.raises(ModelLoadError, match="(?s)the given bytes.*onnx \\("):
        load(b"\x00\xffnot a model at all")


def test_truncated_onnx_file_gets_the_onnx_frontends_error(tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(MODEL.SerializeToString()[:20])
    with pytest.raises(ModelLoadError, match="cut.onnx.*(truncated|not an ONNX)"):
        load(path)


def test_unknown_format_and_options_are_named():
    with pytest.raises(ModelLoadError, match=r"unknown model format 'mxnet'; Ember reads onnx"):
        load(MODEL, format="mxnet")
    with pytest.raises(ModelLoadError, match=r"no option\(s\) weights.*shapes="):
        load(MODEL, weights="w.caffemodel")


def test_graph_takes_no_options():
    g = load(MODEL)
    assert isinstance(g, Graph)
    with pytest.raises(ModelLoadError, match="already Ember's IR.*BuildConfig"):
        load(g, shapes={"x": (2, 3)})
