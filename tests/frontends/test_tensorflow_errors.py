"""Bad TensorFlow and Keras input: each error names the file, and the layer, node or op at fault,
and says what to do. Skipped where TensorFlow or tf2onnx is not installed."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ember.errors import ModelLoadError, UnsupportedOpError
from ember.frontends import load

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'ember[tensorflow]'")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed: pip install 'ember[tensorflow]'")
keras = pytest.importorskip("keras", reason="Keras is not installed: pip install 'ember[tensorflow]'")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


@keras.saving.register_keras_serializable(package="ember_tests")
class Igamma(keras.layers.Layer):
    """A layer built on an op tf2onnx does not convert (the regularized incomplete gamma)."""

    def call(self, x: Any) -> Any:
        return tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 2.0)


@keras.saving.register_keras_serializable(package="ember_tests")
class Repeat(keras.layers.Layer):
    """A data-dependent loop: tf2onnx writes an ONNX Loop, which Ember does not import."""

    def call(self, x: Any) -> Any:
        def body(i: Any, y: Any) -> tuple[Any, Any]:
            return i + 1, tf.sin(y) * 0.5

        steps = tf.cast(tf.reduce_sum(x) > 0, tf.int32) + 2
        return tf.while_loop(lambda i, y: i < steps, body, [tf.constant(0), x])[1]


def _with(layer: Any, name: str) -> Any:
    v = keras.Input((4,), name="v")
    return keras.Model(v, layer(keras.layers.Dense(4, name="dense")(v)), name=name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf_errors")
    _with(Igamma(name="weird"), "gamma").save(root / "gamma.keras")
    _with(Igamma(name="weird"), "gamma").save(root / "gamma.h5")
    cnn = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Conv2D(2, 3, name="c")])
    cnn.export(str(root / "sm"), verbose=False)
    return root


# ---- Keras -----------------------------------------------------------------------------------
def _rename_class(src: Path, dst: Path, old: str, new: str) -> None:
    """A copy of a .keras archive whose config names a class no one registered."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "config.json":
                cfg = json.loads(data)
                data = json.dumps(cfg).replace(f'"{old}"', f'"{new}"').replace(f">{old}", f">{new}").encode()
            zout.writestr(item, data)


def test_unknown_keras_layer_class_is_named(saved: Path, tmp_path: Path) -> None:
    path = tmp_path / "mystery.keras"
    _rename_class(saved / "gamma.keras", path, "Igamma", "NoSuchLayer")
    with pytest.raises(ModelLoadError) as info:
        load(path)
    msg = str(info.value)
    assert "mystery.keras" in msg and "'weird' (class NoSuchLayer)" in msg
    assert "register_keras_serializable" in msg and "custom_objects=" in msg


def test_unknown_layer_in_an_h5_file_is_named(saved: Path, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "mystery.h5"
    shutil.copy(saved / "gamma.h5", path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace("Igamma", "NoSuchLayer")
    with pytest.raises(ModelLoadError,
                       match=r"mystery\.h5 uses 1 layer\(s\).*'weird' \(class (ember_tests>)?NoSuchLayer\)"):
        load(path)


@pytest.mark.parametrize("name", ["gamma.keras", "gamma.h5"])
def test_op_tf2onnx_cannot_convert_names_op_node_layer_and_file(saved: Path, name: str) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        load(saved / name)
    msg = str(info.value)
    assert str(saved / name) in msg and "tf2onnx cannot convert 1 TensorFlow op type(s)" in msg
    assert "- Igamma: node '" in msg and "Keras layer 'weird', class Igamma" in msg


def test_op_ember_cannot_import_names_the_layer() -> None:
    with pytest.raises(UnsupportedOpError) as info:
        load(_with(Repeat(name="looper"), "loopy"))
    msg = str(info.value)
    assert "the Keras model 'loopy' (as converted to ONNX by tf2onnx)" in msg and "- Loop" in msg
    assert "Keras layer 'looper', class Repeat" in msg


def test_keras_file_that_is_not_one(tmp_path: Path) -> None:
    for name, data in (("broken.keras", b"not a zip"), ("broken.h5", b"not hdf5")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError, match=rf"{name} is not an? .*truncated"):
            load(tmp_path / name)


def test_subclassed_keras_model_without_inputs() -> None:
    class Bare(keras.Model):
        def call(self, x: Any) -> Any:
            return x * 2

    with pytest.raises(ModelLoadError, match="declares no inputs.*model.export"):
        load(Bare())


def test_options_are_checked(saved: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"Keras frontend takes no option\(s\) inputs"):
        load(saved / "gamma.keras", inputs=["v"])
    with pytest.raises(ModelLoadError, match=r"'nope', which are not inputs.*'v'"):
        load(saved / "gamma.keras", shapes={"nope": (1, 4)})
    with pytest.raises(ModelLoadError, match="signature apply to a SavedModel only"):
        load(tf.compat.v1.GraphDef(), format="tensorflow", signature="serve")


# ---- SavedModels ---------------------------------------------------------------------------
def test_saved_model_signature_and_tags_are_checked(saved: Path) -> None:
    listing = r"sm has no signature 'nope'; its signatures are 'serve' \(inputs \['img'\].*; 'serving_default'"
    with pytest.raises(ModelLoadError, match=listing):
        load(saved / "sm", signature="nope")
    with pytest.raises(ModelLoadError, match=r"no meta graph tagged \['train'\]; its tag sets are \[\['serve'\]\]"):
        load(saved / "sm", tags=["train"])
    assert load(saved / "sm", signature="serve").inputs == ["img"]


def test_saved_model_without_variables_names_the_folder(saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "half"
    shutil.copytree(saved / "sm", folder)
    shutil.rmtree(folder / "variables")
    with pytest.raises(ModelLoadError, match=r"could not load the SavedModel .*half.*saved_model.pb and variables/"):
        load(folder)


def test_folder_that_is_not_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="holds no saved_model.pb"):
        load(tmp_path, format="tensorflow")


# ---- frozen graphs -------------------------------------------------------------------------
def test_pb_that_is_not_a_graph(tmp_path: Path) -> None:
    path = tmp_path / "junk.pb"
    path.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(ModelLoadError, match=r"junk\.pb is not a TensorFlow GraphDef"):
        load(path)
    text = tmp_path / "junk.pbtxt"
    text.write_text("node { name: ")
    with pytest.raises(ModelLoadError, match=r"junk\.pbtxt is not a text-format TensorFlow GraphDef"):
        load(text)


def _graph(fn: Any, *specs: Any) -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(tf.function(fn).get_concrete_function(*specs)).graph.as_graph_def()


def test_unknown_input_and_output_names_list_the_candidates(tmp_path: Path) -> None:
    graph_def = _graph(lambda x: tf.nn.relu(x, name="act"), tf.TensorSpec((None, 3), tf.float32, name="x"))
    with pytest.raises(ModelLoadError, match=r"no node 'y' \(from inputs=\['y'\]\); its inputs candidates are 'x'"):
        load(graph_def, inputs=["y"])
    with pytest.raises(ModelLoadError, match=r"no node 'out' .*outputs candidates are 'Identity'"):
        load(graph_def, outputs=["out"])
    with pytest.raises(ModelLoadError, match=r"node 'act' has no output 'act:3'"):
        load(graph_def, outputs=["act:3"])


def test_placeholder_of_unknown_rank_asks_for_its_shape() -> None:
    graph_def = _graph(lambda x: x * 2.0, tf.TensorSpec(None, tf.float32, name="x"))
    with pytest.raises(ModelLoadError, match=r"input 'x' has an unknown rank; give its shape: shapes="):
        load(graph_def)
    assert load(graph_def, shapes={"x": (2, 3)}).types["x"].shape == (2, 3)


def test_unfrozen_graph_says_to_freeze_it() -> None:
    v = tf.Variable([1.0, 2.0])
    graph_def = tf.function(lambda x: x * v).get_concrete_function(
        tf.TensorSpec((2,), tf.float32, name="x")).graph.as_graph_def()
    with pytest.raises(ModelLoadError, match=r"is not frozen: it reads .*variable.*convert_variables_to_constants_v2"):
        load(graph_def)


def test_rnn_lowered_by_freezing_says_how_to_freeze(tmp_path: Path) -> None:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    seq = keras.Input((4, 2), name="seq")
    model = keras.Model(seq, keras.layers.LSTM(3, name="lstm")(seq))
    fn = tf.function(lambda s: model(s, training=False)).get_concrete_function(
        tf.TensorSpec((None, 4, 2), tf.float32, name="seq"))
    path = tmp_path / "lowered.pb"
    path.write_bytes(convert_variables_to_constants_v2(fn).graph.as_graph_def().SerializeToString())
    with pytest.raises(UnsupportedOpError) as info:
        load(path)
    msg = str(info.value)
    assert "lowered.pb: tf2onnx cannot convert" in msg and "- TensorListReserve" in msg
    assert "lower_control_flow=False" in msg
    kept = convert_variables_to_constants_v2(fn, lower_control_flow=False).graph.as_graph_def()
    assert [n.op.name for n in load(kept).nodes].count("LSTM") == 1  # as the hint says, it converts
