"""Build configs for ONNX models, the engine cache key, and the served signature's checks."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from ember.plan.config import BuildConfig, Profile
from ember.serve.config import parse_config
from ember.serve.engines import content_hash, onnx_build_config
from ember.serve.errors import BadRequestError, ModelConfigError
from ember.serve.signature import resolve_signature

from servekit import FakeEngine, fixed_model, matmul_relu_model, two_io_model


def cfg(data: dict, name: str = "m"):
    return parse_config(data, name, f"{name}/config.yaml")


@pytest.fixture
def onnx_file(tmp_path):
    def save(model: onnx.ModelProto):
        path = tmp_path / "model.onnx"
        onnx.save(model, path)
        return path
    return save


def test_batch_profile_follows_max_batch_size_and_preferred_sizes(onnx_file):
    path = onnx_file(matmul_relu_model())
    plain = onnx_build_config(path, cfg({"max_batch_size": 8}))
    assert plain.profiles == {"x": Profile((1, 4), (1, 4), (8, 4))}
    batched = onnx_build_config(path, cfg({"max_batch_size": 16, "device": "cpu",
                                           "dynamic_batching": {"preferred_batch_size": [4, 8]}}))
    assert batched.profiles == {"x": Profile((1, 4), (8, 4), (16, 4))}


def test_dynamic_dims_take_the_config_profile(onnx_file):
    path = onnx_file(two_io_model())
    prof = {"min": [2], "opt": [8], "max": [32]}
    bc = onnx_build_config(path, cfg({"max_batch_size": 4, "inputs": [
        {"name": "a", "shape": [-1], "profile": prof}, {"name": "b", "shape": [-1], "profile": prof},
        {"name": "k", "shape": [2]}]}))
    assert bc.profiles["a"] == Profile((1, 2), (1, 8), (4, 32)) and bc.profiles["k"] == Profile((1, 2), (1, 2), (4, 2))
    with pytest.raises(ModelConfigError, match="input 'a' has dynamic dims .* give their range as profile"):
        onnx_build_config(path, cfg({"max_batch_size": 4}))
    with pytest.raises(ModelConfigError, match="takes input .b., which the config.s inputs do not list"):
        onnx_build_config(path, cfg({"max_batch_size": 4, "inputs": [{"name": "a", "shape": [3]}]}))


def test_fixed_shapes_without_batching(onnx_file):
    path = onnx_file(two_io_model())
    bc = onnx_build_config(path, cfg({"inputs": [{"name": "a", "shape": [2, 5]}, {"name": "b", "shape": [2, 5]},
                                                 {"name": "k", "shape": [2, 2]}]}))
    assert bc.shapes == {"a": (2, 5), "b": (2, 5), "k": (2, 2)} and not bc.profiles
    assert onnx_build_config(onnx_file(fixed_model()), cfg({})) == BuildConfig()


def test_model_without_dynamic_batch_dim_cannot_batch(onnx_file):
    with pytest.raises(ModelConfigError, match="no dynamic batch dim.*max_batch_size: 0"):
        onnx_build_config(onnx_file(fixed_model()), cfg({"max_batch_size": 4}))


def test_batch_one_model_serves_with_max_batch_size_one(onnx_file):
    fixed_batch = onnx_file(fixed_model())          # x: float32[2, 3]: dim 0 is no batch dim
    with pytest.raises(ModelConfigError, match="no dynamic batch dim"):
        onnx_build_config(fixed_batch, cfg({"max_batch_size": 1}))
    sig = resolve_signature(cfg({"max_batch_size": 1}), fake_engine(shape=(1, 4), out=(1, 4)))
    assert sig.full_shape(sig.inputs[0]) == [-1, 4] and sig.check({"x": np.zeros((1, 4), np.float32)}) == 1
    with pytest.raises(BadRequestError, match="exceeds max_batch_size 1"):
        sig.check({"x": np.zeros((2, 4), np.float32)})


def test_config_shape_must_agree_with_the_model(onnx_file):
    with pytest.raises(ModelConfigError, match="dim 0 is 5 in the config but 4"):
        onnx_build_config(onnx_file(matmul_relu_model()),
                          cfg({"max_batch_size": 2, "inputs": [{"name": "x", "shape": [5]}]}))


def test_unreadable_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelConfigError, match="cannot read the ONNX model"):
        onnx_build_config(bad, cfg({}))


def test_content_hash_follows_files_and_build_config(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    h1 = content_hash(tmp_path, BuildConfig())
    assert content_hash(tmp_path, BuildConfig()) == h1
    assert content_hash(tmp_path, BuildConfig(precision="fp16")) != h1
    (tmp_path / "model.onnx").write_bytes(b"abd")
    assert content_hash(tmp_path, BuildConfig()) != h1


def fake_engine(shape=("batch", 4), out=("batch", 4), maxs=None):
    r = FakeEngine(lambda f: f, [("x", np.float32, shape)], [("y", np.float32, out)])
    if maxs is not None:
        r.inputs[0].min, r.inputs[0].max = tuple(1 for _ in shape), maxs
    return r


def test_signature_from_engine_and_config():
    sig = resolve_signature(cfg({"max_batch_size": 8}), fake_engine())
    assert sig.full_shape(sig.inputs[0]) == [-1, 4] and sig.inputs[0].datatype == "FP32"
    assert sig.check({"x": np.zeros((3, 4), np.float32)}) == 3
    pinned = resolve_signature(cfg({"max_batch_size": 2, "inputs": [{"name": "x", "shape": [6]}]}),
                               fake_engine(("batch", "n")))
    assert pinned.inputs[0].dims == (6,)
    with pytest.raises(BadRequestError, match="dim 1 must be 6"):
        pinned.check({"x": np.zeros((1, 5), np.float32)})


@pytest.mark.parametrize("data, r, words", [
    ({"max_batch_size": 2, "inputs": [{"name": "x", "datatype": "FP16"}]}, fake_engine(),
     "FP16 in the config but FP32"),
    ({"max_batch_size": 2, "inputs": [{"name": "z"}]}, fake_engine(), "differ from the engine's ['x']"),
    ({"max_batch_size": 2, "inputs": [{"name": "x", "shape": [4, 4]}]}, fake_engine(), "in the engine"),
    ({"max_batch_size": 2, "inputs": [{"name": "x", "shape": [3]}]}, fake_engine(), "dim 0 is 3 in the config but 4"),
    ({"max_batch_size": 2}, fake_engine(shape=(1, 4)), "no dynamic batch dim"),
    ({"max_batch_size": 16}, fake_engine(maxs=(8, 4)), "accepts batches up to 8"),
])
def test_signature_errors(data, r, words):
    with pytest.raises(ModelConfigError) as info:
        resolve_signature(cfg(data), r)
    assert words in str(info.value)


def test_bfloat16_engine_interface_is_refused():
    from ember.ir.dtype import DType

    r = fake_engine()
    r.inputs[0].dtype = DType.BFLOAT16
    with pytest.raises(ModelConfigError, match="bfloat16, which the KServe protocol cannot carry"):
        resolve_signature(cfg({"max_batch_size": 2}), r)
