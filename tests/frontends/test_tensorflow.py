"""TensorFlow and Keras models through ``ember.frontends.load`` / ``ember.build`` (the
``tensorflow`` extra): a small CNN and an LSTM, saved by the test as .keras, .h5, SavedModel and
frozen .pb, give TensorFlow's own outputs (fp32, 1e-4); names and NHWC layouts are the model's.

Skipped where TensorFlow or tf2onnx is not installed (``pip install 'ember[tensorflow]'``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ember
from ember.cli import main as cli
from ember.errors import ModelLoadError
from ember.frontends import detect, load
from ember.frontends.tensorflow import to_onnx

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'ember[tensorflow]'")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed: pip install 'ember[tensorflow]'")
keras = pytest.importorskip("keras", reason="Keras is not installed: pip install 'ember[tensorflow]'")

CPU = ember.BuildConfig(device="cpu")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


def close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def infer(engine: ember.Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


def _randomize_batchnorm(model: Any, rng: np.random.Generator) -> None:
    """Moving statistics far from (0, 1), so a wrong folding of BatchNorm shows."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def _cnn(rng: np.random.Generator) -> Any:
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(image)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)  # TF's asymmetric SAME
    x = keras.layers.Conv2D(16, 1, activation="relu", name="conv2")(x)
    x = keras.layers.AveragePooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    probs = keras.layers.Softmax(name="probs")(x)
    model = keras.Model(image, probs, name="cnn")
    _randomize_batchnorm(model, rng)
    return model


def _lstm() -> Any:
    seq = keras.Input((7, 5), name="sequence")
    h = keras.layers.LSTM(12, return_sequences=True, name="lstm1")(seq)
    h = keras.layers.LSTM(6, name="lstm2")(h)
    out = keras.layers.Dense(3, name="head")(h)
    return keras.Model(seq, out, name="lstm")


def _frozen(model: Any) -> Any:
    """The model's frozen GraphDef, as TensorFlow 2 users write one."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(*spec)
    return convert_variables_to_constants_v2(fn).graph.as_graph_def()


def run_graph_def(graph_def: Any, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
    """TensorFlow's own run of a GraphDef (tensor names 'x:0')."""
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            return list(sess.run(fetches, feeds))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CNN and the LSTM, saved once in every form (TensorFlow's import alone takes seconds)."""
    root = tmp_path_factory.mktemp("tf")
    rng = np.random.default_rng(0)
    cnn, lstm = _cnn(rng), _lstm()
    out: dict[str, Any] = {"cnn": cnn, "lstm": lstm, "root": root}
    for name, model in (("cnn", cnn), ("lstm", lstm)):
        model.save(root / f"{name}.keras")
        model.save(root / f"{name}.h5")
        model.export(str(root / f"{name}_savedmodel"), verbose=False)
    graph_def = _frozen(cnn)
    tf.io.write_graph(graph_def, str(root), "cnn.pb", as_text=False)
    tf.io.write_graph(graph_def, str(root), "cnn.pbtxt", as_text=True)
    out["cnn_graph_def"] = graph_def
    out["image"] = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    out["sequence"] = rng.standard_normal((3, 7, 5)).astype(np.float32)
    return out


# ---- Keras files and models ------------------------------------------------------------------
@pytest.mark.parametrize("form", ["cnn.keras", "cnn.h5", "in memory"])
def test_keras_cnn_matches_tensorflow(models: dict[str, Any], form: str) -> None:
    source = models["cnn"] if form == "in memory" else models["root"] / form
    engine = ember.build(source, CPU)
    assert [s.name for s in engine.plan.inputs] == ["image"]  # the Input layer's name
    assert [s.name for s in engine.plan.outputs] == ["probs"]  # the output layer's name
    assert engine.plan.inputs[0].shape[1:] == (32, 32, 3)  # NHWC stays NHWC
    assert engine.plan.build_info["source_format"] == "keras"
    x = models["image"]
    close(infer(engine, {"image": x})["probs"], models["cnn"](x, training=False).numpy())


@pytest.mark.parametrize("form", ["lstm.keras", "lstm.h5"])
def test_keras_lstm_matches_tensorflow(models: dict[str, Any], form: str) -> None:
    graph = load(models["root"] / form)
    assert graph.inputs == ["sequence"] and graph.outputs == ["head"]
    assert sum(n.op.name == "LSTM" for n in graph.nodes) == 2  # tf2onnx's LSTM rewrite, not a Loop
    engine = ember.build(graph, CPU)
    s = models["sequence"]
    close(infer(engine, {"sequence": s})["head"], models["lstm"](s, training=False).numpy())


def test_fixed_shapes_reach_the_graph(models: dict[str, Any]) -> None:
    graph = load(models["root"] / "cnn.keras", shapes={"image": (4, 32, 32, 3)})
    assert graph.types["image"].shape == (4, 32, 32, 3) and graph.types["probs"].shape == (4, 10)
    dynamic = load(models["root"] / "cnn.keras")
    assert dynamic.types["image"].shape == ("image_d0", 32, 32, 3)  # not tf2onnx's "unk__N"


def test_keras_inputs_and_outputs_keep_their_names_and_order() -> None:
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    joined = keras.layers.Concatenate(name="join")([a, b])
    zeta = keras.layers.Dense(2, name="zeta")(joined)
    alpha = keras.layers.Dense(5, activation="tanh", name="alpha")(joined)
    model = keras.Model([a, b], [zeta, alpha])
    engine = ember.build(model, CPU)
    assert [s.name for s in engine.plan.inputs] == ["a", "b"]
    assert [s.name for s in engine.plan.outputs] == ["zeta", "alpha"]  # declared order, not sorted
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((3, 4)).astype(np.float32),
             "b": rng.standard_normal((3, 3)).astype(np.float32)}
    ours = infer(engine, feeds)
    theirs = model([feeds["a"], feeds["b"]], training=False)
    close(ours["zeta"], theirs[0].numpy())
    close(ours["alpha"], theirs[1].numpy())


# ---- SavedModel ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, feed", [("cnn", "image"), ("lstm", "sequence")])
def test_saved_model_matches_tensorflow(models: dict[str, Any], name: str, feed: str) -> None:
    folder = models["root"] / f"{name}_savedmodel"
    assert detect(folder).name == "tensorflow"
    engine = ember.build(folder, CPU)
    assert [s.name for s in engine.plan.inputs] == [feed]
    x = models[feed]
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    theirs = {k: v.numpy() for k, v in signature(**{feed: tf.constant(x)}).items()}
    ours = infer(engine, {feed: x})
    assert set(ours) == set(theirs) == {"output_0"}  # the signature's output key
    close(ours["output_0"], theirs["output_0"])


def test_saved_model_pb_inside_the_folder_means_the_folder(models: dict[str, Any]) -> None:
    folder = models["root"] / "cnn_savedmodel"
    graph = load(folder / "saved_model.pb")
    assert graph.inputs == ["image"] and graph.source.startswith(str(folder))


def test_tf_function_with_a_signature() -> None:
    w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def f(x: Any) -> dict[str, Any]:
        return {"y": tf.nn.relu(tf.matmul(x, w) - 0.5)}

    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    engine = ember.build(f, CPU)
    close(infer(engine, {"x": x})["y"], f(x)["y"].numpy())


# ---- frozen graphs -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn.pb", "cnn.pbtxt", "graph_def", "bytes"])
def test_frozen_graph_matches_tensorflow(models: dict[str, Any], name: str) -> None:
    graph_def = models["cnn_graph_def"]
    source = {"graph_def": graph_def, "bytes": graph_def.SerializeToString()}.get(name, models["root"] / name)
    engine = ember.build(source, CPU)
    # the placeholder and the one sink computed from it
    assert [s.name for s in engine.plan.inputs] == ["image"]
    assert [s.name for s in engine.plan.outputs] == ["Identity"]
    x = models["image"]
    (theirs,) = run_graph_def(graph_def, {"image:0": x}, ["Identity:0"])
    close(infer(engine, {"image": x})["Identity"], theirs)


def _two_headed() -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    w = tf.constant(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def f(x: Any) -> tuple[Any, Any]:
        hidden = tf.nn.relu(tf.matmul(x, w), name="hidden")
        return tf.identity(tf.nn.softmax(hidden), name="scores"), tf.identity(hidden * 2.0, name="twice")

    return convert_variables_to_constants_v2(f.get_concrete_function()).graph.as_graph_def()


def test_frozen_graph_with_several_sinks_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "two.pb"
    path.write_bytes(_two_headed().SerializeToString())
    with pytest.raises(ModelLoadError) as info:
        load(path)
    msg = str(info.value)
    assert "two.pb has 2 possible outputs" in msg and "'Identity' (Identity, float32 [?, 3])" in msg
    assert "outputs=['Identity', 'Identity_1']" in msg


def test_frozen_graph_inputs_and_outputs_by_name(tmp_path: Path) -> None:
    graph_def = _two_headed()
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    engine = ember.build(graph_def, CPU, outputs=["Identity_1", "Identity:0"])
    assert [s.name for s in engine.plan.outputs] == ["Identity_1", "Identity"]
    ours = infer(engine, {"x": x})
    theirs = run_graph_def(graph_def, {"x:0": x}, ["Identity_1:0", "Identity:0"])
    close(ours["Identity_1"], theirs[0])
    close(ours["Identity"], theirs[1])
    # an input that is not a placeholder cuts the graph there
    hidden = np.abs(x[:, :3])
    cut = ember.build(graph_def, CPU, inputs=["hidden"], outputs=["Identity"])
    assert [s.name for s in cut.plan.inputs] == ["hidden"]
    (theirs_cut,) = run_graph_def(graph_def, {"hidden:0": hidden}, ["Identity:0"])
    close(infer(cut, {"hidden": hidden})["Identity"], theirs_cut)


# ---- the command line and the ONNX in between ------------------------------------------------
@pytest.mark.parametrize("form", ["cnn.keras", "cnn_savedmodel", "cnn.pb"])
def test_ember_build_command(models: dict[str, Any], tmp_path: Path, form: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn.ember"
    assert cli(["build", str(models["root"] / form), "-o", str(out)]) == 0
    assert f"built {out}" in capsys.readouterr().out
    engine = ember.load(out)
    x = models["image"]
    (ours,) = infer(engine, {"image": x}).values()
    close(ours, models["cnn"](x, training=False).numpy())


def test_to_onnx_gives_the_model_ember_imports(models: dict[str, Any]) -> None:
    proto = to_onnx(models["root"] / "cnn.keras")
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probs"]
    import onnxruntime as ort

    x = models["image"]
    (theirs,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"image": x})
    close(theirs, models["cnn"](x, training=False).numpy())


# ---- architectures beyond the two small models -----------------------------------------------
def test_keras_mobilenet_v2_matches_tensorflow() -> None:
    """keras.applications' MobileNetV2 (random weights, no download): depthwise convolutions,
    ReLU6, residual adds, BatchNorm with moving statistics, global pooling."""
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=10,
                                           classifier_activation=None)
    rng = np.random.default_rng(4)
    _randomize_batchnorm(model, rng)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    engine = ember.build(model, CPU)
    (name,) = [s.name for s in engine.plan.outputs]
    close(infer(engine, {engine.plan.inputs[0].name: x})[name], model(x, training=False).numpy())


def test_keras_text_model_with_integer_inputs_matches_tensorflow() -> None:
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(100, 16, name="embed")(tokens)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    x = keras.layers.Conv1D(8, 3, padding="causal", activation="gelu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(tokens, keras.layers.Dense(4, activation="sigmoid", name="scores")(x))
    ids = np.random.default_rng(5).integers(0, 100, (3, 12)).astype(np.int32)
    engine = ember.build(model, CPU)
    close(infer(engine, {"tokens": ids})["scores"], model(ids, training=False).numpy())


def test_erfc_which_tf2onnx_lacks_is_converted() -> None:
    """Keras's exact GELU is written with Erfc, which tf2onnx 1.17 leaves unconverted; Ember
    hands tf2onnx a rewrite (1 - Erf) and keeps float32's absolute error over the whole range."""

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.float32, name="x")])
    def f(x: Any) -> Any:
        return tf.math.erfc(x)

    x = np.linspace(-6, 6, 241, dtype=np.float32)
    graph = load(f)
    assert "ERF" in {n.op.name for n in graph.nodes}
    (ours,) = infer(ember.build(graph, CPU), {"x": x}).values()
    np.testing.assert_allclose(ours, f(x).numpy(), rtol=0, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("name, feed, out", [("cnn.keras", "image", "probs"), ("lstm.keras", "sequence", "head")])
def test_keras_models_on_cuda(models: dict[str, Any], name: str, feed: str, out: str) -> None:
    """The same imports built for CUDA (fp32) give TensorFlow's outputs."""
    engine = ember.build(models["root"] / name, ember.BuildConfig(device="cuda"))
    x = models[feed]
    got = np.asarray(infer(engine, {feed: x})[out])
    close(got, models[name.split(".")[0]](x, training=False).numpy())
