"""Every zoo model through Ember (CPU, fp32) against ONNX Runtime: max relative error <= 1e-4.

Relative error is ``max|ember - ort| / max|ort|`` over each output. The four reference
architectures (ResNet-50, GoogLeNet, MobileNetV2, BERT-base) are the issue's bar; the small
siblings run the same ops at a fraction of the cost, also at batch > 1 and with dynamic batch.
"""
import functools

import onnx
import pytest

import ember
from ember import zoo
from ember.tools.runners import EmberRunner, OrtRunner, max_rel_error

TOLERANCE = 1e-4


@functools.cache
def _reference(path, name, batch):
    return OrtRunner(path, threads=2)(zoo.sample_inputs(name, batch))


def _check(engine, path, name, batch=1):
    feeds = zoo.sample_inputs(name, batch)
    with EmberRunner(engine) as runner:
        got = runner(feeds)
    ref = _reference(str(path), name, batch)
    assert set(got) == set(ref)
    for out in ref:
        assert got[out].shape == ref[out].shape
        err = max_rel_error(got[out], ref[out])
        assert err <= TOLERANCE, f"{name} batch {batch} output {out}: max relative error {err:.2e}"


def _layer_kinds(engine):
    return [layer.kind for layer in engine.plan.layers]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet-50", "googlenet", "mobilenet-v2", "bert-base"])
def test_reference_architectures_match_onnx_runtime(name):
    path = zoo.export_onnx(name)
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    _check(engine, path, name)
    assert "BatchNormalization" not in _layer_kinds(engine), "BatchNorm was not folded"
    assert len(engine.plan.layers) <= len(onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", ["resnet-18", "mobilenet-v3-small", "efficientnet-b0", "bert-tiny"])
def test_small_models_at_batch_2(name):
    path = zoo.export_onnx(name, batch=2)
    _check(ember.build(str(path), ember.BuildConfig(device="cpu")), path, name, batch=2)


def test_googlenet_layers_keep_caffe_names():
    path = zoo.export_onnx("googlenet")
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    origins = {o for layer in engine.plan.layers for o in layer.origin}
    assert {"conv1/7x7_s2", "pool1/norm1", "inception_3a/1x1", "loss3/classifier"} <= origins
    assert _layer_kinds(engine).count("LRN") == 2


def test_dynamic_batch_engine_with_a_profile():
    path = zoo.export_onnx("bert-tiny", dynamic_batch=True)
    config = ember.BuildConfig(device="cpu", profiles={
        name: ((1, 128), (2, 128), (4, 128)) for name in ("input_ids", "attention_mask", "token_type_ids")})
    engine = ember.build(str(path), config)
    for batch in (1, 3):
        _check(engine, path, "bert-tiny", batch)


def test_dynamo_export_through_ember():
    path = zoo.export_onnx("mobilenet-v3-small", dynamo=True)
    _check(ember.build(str(path), ember.BuildConfig(device="cpu")), path, "mobilenet-v3-small")


def test_engine_file_round_trip_gives_identical_outputs(tmp_path):
    path = zoo.export_onnx("mobilenet-v3-small")
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    engine.save(tmp_path / "m.ember")
    feeds = zoo.sample_inputs("mobilenet-v3-small")
    with EmberRunner(engine) as a, EmberRunner(ember.load(tmp_path / "m.ember")) as b:
        assert (a(feeds)["output"] == b(feeds)["output"]).all()
