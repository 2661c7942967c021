"""ONNX export of zoo models: faithful to PyTorch (checked with ONNX Runtime), cached, named, dynamic."""
import functools
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from ember import zoo
from ember.errors import ModelLoadError
from ember.tools.runners import OrtRunner, TorchRunner, max_rel_error
from ember.zoo import export as zoo_export


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@functools.cache
def _model(name):
    return zoo.build_model(name)


def _torch_vs_ort(name, path, batch=1):
    spec = zoo.get(name)
    feeds = zoo.sample_inputs(name, batch)
    ref = TorchRunner(_model(name), [i.name for i in spec.inputs], spec.outputs)(feeds)
    got = OrtRunner(path, threads=2)(feeds)
    return max(max_rel_error(got[k], ref[k]) for k in spec.outputs)


@pytest.mark.parametrize("name", ["resnet-18", "googlenet", "mobilenet-v2", "mobilenet-v3-small", "bert-tiny"])
def test_export_matches_pytorch(name):
    assert _torch_vs_ort(name, zoo.export_onnx(name)) < 1e-4


def test_export_names_the_inputs_and_outputs():
    cnn = onnx.load(str(zoo.export_onnx("resnet-18")))
    assert [i.name for i in cnn.graph.input] == ["input"] and [o.name for o in cnn.graph.output] == ["output"]
    bert = onnx.load(str(zoo.export_onnx("bert-tiny")))
    assert [i.name for i in bert.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in bert.graph.output] == ["last_hidden_state"]


def test_batchnorm_is_kept_for_ember_to_fold():
    ops = _ops(zoo.export_onnx("resnet-18"))
    assert ops["BatchNormalization"] == 20 and ops["Conv"] == 20


def test_googlenet_has_caffe_layer_names_and_real_lrn():
    model = onnx.load(str(zoo.export_onnx("googlenet")))
    by_name = {n.name: n.op_type for n in model.graph.node}
    assert by_name["conv1/7x7_s2"] == "Conv" and by_name["conv1/relu_7x7"] == "Relu"
    assert by_name["pool1/norm1"] == "LRN" and by_name["conv2/norm2"] == "LRN"
    assert by_name["inception_3a/1x1"] == "Conv" and by_name["inception_5b/pool_proj"] == "Conv"
    assert by_name["inception_4e/output"] == "Concat" and by_name["loss3/classifier"] == "Gemm"
    lrn = next(n for n in model.graph.node if n.name == "pool1/norm1")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
    assert attrs["size"] == 5 and attrs["alpha"] == pytest.approx(1e-4) and attrs["beta"] == pytest.approx(0.75)
    ops = _ops(zoo.export_onnx("googlenet"))
    assert ops["LRN"] == 2 and ops["Concat"] == 9 and ops["Conv"] == 57 and "BatchNormalization" not in ops
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in pools for a in n.attribute if a.name == "ceil_mode")


def test_node_names_are_unique_and_follow_module_paths():
    model = onnx.load(str(zoo.export_onnx("resnet-18")))
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    assert "layer1/0/conv1" in names and "layer2/0/downsample/0" in names and "fc" in names
    bert = {n.name for n in onnx.load(str(zoo.export_onnx("bert-tiny"))).graph.node}
    assert {"encoder/layer/1/attention/self/query", "encoder/layer/0/output/LayerNorm"} <= bert


def test_dynamic_batch_runs_any_batch():
    path = zoo.export_onnx("mobilenet-v3-small", dynamic_batch=True)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert _torch_vs_ort("mobilenet-v3-small", path, batch=3) < 1e-4


@pytest.mark.parametrize("name", ["googlenet", "bert-tiny", "mobilenet-v3-small"])
def test_dynamo_exporter(name):
    path = zoo.export_onnx(name, dynamo=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert _torch_vs_ort(name, path) < 1e-4
    if name == "googlenet":
        assert _ops(path)["LRN"] == 2
        assert "inception_3a/1x1" in {n.name for n in model.graph.node}
    if name == "mobilenet-v3-small":
        assert _ops(path)["BatchNormalization"] == 34, "the dynamo path must not fold BatchNorm either"


def test_dynamo_dynamic_batch():
    path = zoo.export_onnx("bert-tiny", dynamo=True, dynamic_batch=True)
    assert _torch_vs_ort("bert-tiny", path, batch=3) < 1e-4


def test_other_opsets():
    path = zoo.export_onnx("mobilenet-v3-small", opset=13)
    assert onnx.load(str(path)).opset_import[0].version == 13
    assert _torch_vs_ort("mobilenet-v3-small", path) < 1e-4


def test_cache_serves_the_second_call_and_copies_to_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path / "cache"))
    first = zoo.export_onnx("bert-tiny", batch=2)
    assert first.parent == tmp_path / "cache" / "zoo" and first.exists()

    def fail(*args, **kwargs):
        raise AssertionError("exported again although the file was cached")

    monkeypatch.setattr(zoo_export, "export_module", fail)
    assert zoo.export_onnx("bert-tiny", batch=2) == first
    copy = zoo.export_onnx("bert-tiny", tmp_path / "out" / "m.onnx", batch=2)
    assert copy.read_bytes() == first.read_bytes()
    with pytest.raises(AssertionError, match="exported again"):
        zoo.export_onnx("bert-tiny", batch=2, opset=16)  # another key is another file


def test_a_failed_export_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zoo_export, "name_nodes_after_modules", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        zoo.export_onnx("bert-tiny")
    assert list((tmp_path / "zoo").iterdir()) == []


def test_batch_is_baked_into_static_exports():
    model = onnx.load(str(zoo.export_onnx("resnet-18", batch=2)))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_bad_batch_is_rejected():
    with pytest.raises(ModelLoadError, match="batch must be >= 1"):
        zoo.export_onnx("resnet-18", batch=0)


def test_export_module_of_any_module(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    path = zoo.export_module(module, {"x": torch.randn(2, 4)}, ["y"], tmp_path / "m.onnx",
                             dynamic={"x": {0: "batch"}})
    x = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    got = OrtRunner(path)({"x": x})["y"]
    np.testing.assert_allclose(got, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert [n.name for n in onnx.load(str(path)).graph.node] == ["0", "1"]
