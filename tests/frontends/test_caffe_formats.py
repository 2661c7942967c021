"""The Caffe frontend's ways in and its errors: V1 networks, old input forms, phases, in-place
layers, the loader and CLI routes, and bad input (a prototxt that does not parse, weights that do
not match, missing weights, unknown layers)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from caffe_util import caffemodel, net

import ember
from ember.errors import ModelLoadError, ShapeError, UnsupportedOpError
from ember.frontends import detect, load
from ember.frontends.caffe import caffe_pb2, supported_layers
from ember.frontends.caffe import load as load_caffe

RNG = np.random.default_rng(3)
W, B = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
FW, FB = RNG.standard_normal((5, 4 * 3 * 3)).astype(np.float32), RNG.standard_normal(5).astype(np.float32)
X = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)

V2 = net('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
         'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }',
         'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }',
         'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX '
         'kernel_size: 2 stride: 2 } }',
         'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }',
         'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }',
         inputs='layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 '
                'dim: 5 } } }')

V1 = '''name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "drop" type: DROPOUT bottom: "pool" top: "pool" include { phase: TEST } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
'''
WEIGHTS = {"conv": [W, B], "fc": [FW, FB]}


def same_result(got: np.ndarray, want: np.ndarray) -> None:
    """Two builds of one network agree to float32 rounding: a CPU build times its GEMMs' tactics
    (oneDNN or MKL), so two builds may round a product differently (1.5e-5 relative, seen once)."""
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)


def infer(graph: ember.ir.Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    engine = ember.build(graph, ember.BuildConfig(device="cpu"), progress=False)
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    return infer(load_caffe(V2, caffemodel(WEIGHTS)), {"data": X})["prob"]


def test_in_place_layers_keep_blob_names_for_last_values() -> None:
    g = load_caffe(V2, caffemodel(WEIGHTS))
    conv, relu = g.nodes[0], g.nodes[1]
    assert (conv.name, conv.outputs, relu.name, relu.outputs) == ("conv", ("conv/out",), "relu", ("conv",))
    assert g.outputs == ["prob"] and g.inputs == ["data"]


def test_v1_network_with_legacy_blobs_matches_v2(expected: np.ndarray) -> None:
    weights = caffemodel(WEIGHTS, legacy=True, v1=True)  # 4-D num/channels/height/width shapes
    g = load_caffe(V1, weights)
    assert [n.name for n in g.nodes][:2] == ["conv", "relu"] and g.outputs == ["prob"]  # TRAIN loss dropped
    same_result(infer(g, {"data": X})["prob"], expected)


def test_old_input_shape_form_and_shapes_override(expected: np.ndarray) -> None:
    text = V2.replace('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: '
                      '5 dim: 5 } } }',
                      'input: "data"\ninput_shape { dim: 7 dim: 3 dim: 5 dim: 5 }')
    g = load_caffe(text, caffemodel(WEIGHTS), shapes={"data": (2, 3, 5, 5)})
    same_result(infer(g, {"data": X})["prob"], expected)
    dynamic = load_caffe(text, caffemodel(WEIGHTS), shapes={"data": ("batch", 3, 5, 5)})
    assert dynamic.types["prob"].shape == ("batch", 5)
    with pytest.raises(ShapeError, match="rank 3"):
        load_caffe(text, caffemodel(WEIGHTS), shapes={"data": (3, 5, 5)})
    with pytest.raises(ShapeError, match="not inputs"):
        load_caffe(text, caffemodel(WEIGHTS), shapes={"image": (1, 3, 5, 5)})


def test_loader_routes_and_detection(tmp_path: Path, expected: np.ndarray) -> None:
    proto, weights = tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel"
    proto.write_text(V2)
    weights.write_bytes(caffemodel(WEIGHTS))
    assert detect(str(proto)).name == "caffe" and detect((proto, weights)).name == "caffe"
    odd = tmp_path / "net.txt"
    odd.write_text(V2)
    assert detect(odd).name == "caffe"  # recognized by content
    for graph in (load(str(proto), weights=str(weights)), load((str(proto), str(weights))),
                  load(odd, format="caffe", weights=weights.read_bytes())):
        same_result(infer(graph, {"data": X})["prob"], expected)
    engine = ember.build(str(proto), ember.BuildConfig(device="cpu", shapes={"data": (1, 3, 5, 5)}),
                         weights=str(weights), progress=False)
    with engine.create_context() as ctx:
        np.testing.assert_allclose(ctx.infer({"data": X[:1]})["prob"], expected[:1], atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"trained weights, not its definition.*--weights"):
        load(str(weights))


def test_cli_build_with_weights(tmp_path: Path) -> None:
    proto, weights, out = tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel", tmp_path / "m.ember"
    proto.write_text(V2)
    weights.write_bytes(caffemodel(WEIGHTS))
    run = subprocess.run([sys.executable, "-m", "ember", "build", str(proto), "--weights", str(weights),
                          "-o", str(out), "--shapes", "data:1x3x5x5"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "from 6 Caffe layers" in run.stdout and out.is_file()
    assert ember.load(out).plan.inputs[0].shape == (1, 3, 5, 5)
    bad = subprocess.run([sys.executable, "-m", "ember", "build", str(proto), "-o", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "have no trained weights" in bad.stderr and "Traceback" not in bad.stderr


# ---- bad input ---------------------------------------------------------------------------------
def test_prototxt_that_does_not_parse_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.prototxt"
    path.write_text(V2.replace("kernel_size: 3 pad: 1", "kernal_size: 3 pad: 1"))
    with pytest.raises(ModelLoadError, match=re.escape(str(path)) + r":3:\d+: .*kernal_size"):
        load_caffe(path)
    path.write_text(V2.replace("num_output: 5 }", "num_output: 5"))
    with pytest.raises(ModelLoadError, match=re.escape(str(path)) + r":\d+:\d+: the Caffe network does not parse"):
        load_caffe(path)


def test_weights_that_do_not_match_name_layer_blob_and_shapes() -> None:
    wrong = {"conv": [W[:, :2], B], "fc": [FW, FB]}
    with pytest.raises(ModelLoadError, match=r"layer 'conv' \(Convolution\): blob 0 \(weights\) has shape "
                                             r"\(4, 2, 3, 3\) but the network needs \(4, 3, 3, 3\)"):
        load_caffe(V2, caffemodel(wrong))
    with pytest.raises(ModelLoadError, match=r"'fc' \(InnerProduct\) has 3 blobs but the layer takes 2"):
        load_caffe(V2, caffemodel({"conv": [W, B], "fc": [FW, FB, FB]}))
    with pytest.raises(ModelLoadError, match="not a Caffe weights file"):
        load_caffe(V2, b"\xff\xff\xff garbage")


def test_missing_weights_list_every_layer() -> None:
    with pytest.raises(ModelLoadError) as e:
        load_caffe(V2, caffemodel({"conv": [W, B]}))
    assert "layer 'fc' (InnerProduct): needs 2 blob(s); the caffemodel has no layer of this name" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        load_caffe(V2)
    assert "'conv' (Convolution)" in str(e.value) and "'fc' (InnerProduct)" in str(e.value)
    assert "no weights were given" in str(e.value) and "weights=" in str(e.value)


def test_unknown_layer_types_are_listed_with_how_to_supply_them() -> None:
    text = net('layer { name: "pb1" type: "PriorBox" bottom: "data" top: "pb1" prior_box_param { min_size: 30 } }',
               'layer { name: "pb2" type: "PriorBox" bottom: "data" top: "pb2" }',
               'layer { name: "up" type: "Upsample" bottom: "data" top: "up" }',
               'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    with pytest.raises(UnsupportedOpError) as e:
        load_caffe(text)
    msg = str(e.value)
    assert "2 Caffe layer type(s)" in msg
    assert "PriorBox: layers 'pb1', 'pb2'" in msg and "Upsample: layer 'up'" in msg
    assert "@ember.plugin('PriorBox', domain='caffe')" in msg


def test_v0_layers_and_mixed_formats_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="V0 format.*upgrade_net_proto_text"):
        load_caffe('layers { layer { name: "old" type: "conv" } }')
    with pytest.raises(ModelLoadError, match="mixes current layers"):
        load_caffe('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }')


def test_supported_layers_and_schema_module_agree_with_the_proto() -> None:
    wanted = {"Convolution", "Pooling", "LRN", "BatchNorm", "Scale", "Permute", "Crop", "Input"}
    assert wanted <= set(supported_layers())
    text = (Path(caffe_pb2.__file__).parent / "caffe.proto").read_text()
    for message, body in re.findall(r"^message (\w+) \{(.*?)^\}", text, re.S | re.M):
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        fields = dict(re.findall(r"^\s+(?:optional|repeated|required) [\w.]+ (\w+) = (\d+)", body, re.M))
        assert {f.name: str(f.number) for f in desc.fields} == fields, message


def test_unknown_caffe_layer_served_by_a_plugin():
    """A layer type Ember does not convert runs through ``@ember.plugin(type, domain="caffe")``,
    with the fields of the layer's parameter message and its blobs as attributes (``threshold``, ``blob_0``)."""
    import torch

    from ember.ops.plugin import unregister_plugin

    proto = net('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }',
                'layer { name: "gate" type: "ScaledGate" bottom: "conv" top: "gate" '
                'threshold_param { threshold: 0.25 } }',
                inputs='layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 '
                       'dim: 5 dim: 5 } } }')
    scale = np.linspace(0.5, 2.0, 4, dtype=np.float32)
    with pytest.raises(UnsupportedOpError, match=r"(?s)ScaledGate: layer 'gate'.*domain='caffe'"):
        load_caffe(proto, caffemodel({"conv": [W, B], "gate": [scale]}))

    @ember.plugin("ScaledGate", domain="caffe")
    class ScaledGate:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="any")
        def run(self, inputs, attrs):
            s = torch.as_tensor(np.asarray(attrs["blob_0"]), dtype=inputs[0].dtype).view(1, -1, 1, 1)
            x = inputs[0]
            return [torch.where(x > float(attrs["threshold"]), x * s, torch.zeros_like(x))]

    try:
        graph = load_caffe(proto, caffemodel({"conv": [W, B], "gate": [scale]}))
        got = infer(graph, {"data": X})["gate"]
    finally:
        unregister_plugin("caffe", "ScaledGate")
    conv = torch.nn.functional.conv2d(torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(B), padding=1)
    want = torch.where(conv > 0.25, conv * torch.from_numpy(scale).view(1, -1, 1, 1), torch.zeros(()))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
