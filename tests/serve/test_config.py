"""Model config parsing: Ember's keys, Triton's spellings, and an error naming each mistake."""
from __future__ import annotations

import json

import pytest

from ember.serve.config import VersionPolicy, parse_config, read_config
from ember.serve.errors import ModelConfigError


def parse(data: dict):
    return parse_config(data, "m", "m/config.yaml")


def test_defaults():
    cfg = parse({})
    assert (cfg.max_batch_size, cfg.device, cfg.precision, cfg.instance_count) == (0, "cpu", "fp32", 1)
    assert cfg.inputs is None and cfg.dynamic_batching is None and cfg.default_timeout_us == 0


def test_full_config_in_ember_keys():
    cfg = parse({
        "max_batch_size": 16, "device": "cuda", "precision": "fp16", "instance_count": 3,
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1],
                    "profile": {"min": [1], "opt": [64], "max": [128]}}],
        "outputs": [{"name": "emb", "datatype": "fp32", "shape": [384]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 250, "preferred_batch_size": [8, 4],
                             "max_queue_size": 100, "default_timeout_microseconds": 5000},
        "version_policy": {"latest": 2},
    })
    assert cfg.max_batch_size == 16 and cfg.device == "cuda" and cfg.instance_count == 3
    assert cfg.inputs[0].datatype == "INT64" and cfg.inputs[0].profile == ((1,), (64,), (128,))
    assert cfg.outputs[0].datatype == "FP32" and cfg.outputs[0].dims == (384,)
    b = cfg.dynamic_batching
    assert (b.max_queue_delay_us, b.preferred_batch_sizes, b.max_queue_size, b.default_timeout_us) == \
        (250, (4, 8), 100, 5000)
    assert cfg.version_policy == VersionPolicy(kind="latest", latest=2)


def test_triton_spellings():
    cfg = parse({
        "max_batch_size": 8, "input": [{"name": "x", "data_type": "TYPE_FP16", "dims": [3, 224, 224]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1000]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}],
        "dynamic_batching": {"preferred_batch_size": 4,
                             "default_queue_policy": {"max_queue_size": 7, "default_timeout_microseconds": 9}},
        "version_policy": {"specific": {"versions": [1, 3]}},
    })
    assert cfg.inputs[0].datatype == "FP16" and cfg.inputs[0].dims == (3, 224, 224)
    assert cfg.instance_count == 3
    assert cfg.max_queue_size == 7 and cfg.default_timeout_us == 9
    assert cfg.version_policy.select([1, 2, 3, 4]) == [1, 3]


@pytest.mark.parametrize("data, words", [
    ({"max_batch": 8}, ["unknown config keys", "max_batch"]),
    ({"name": "other"}, ["'other'", "folder 'm'"]),
    ({"max_batch_size": -1}, ["max_batch_size", ">= 0"]),
    ({"device": "tpu"}, ["device 'tpu'"]),
    ({"precision": "int4"}, ["precision 'int4'"]),
    ({"dynamic_batching": {}}, ["needs max_batch_size > 0"]),
    ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}}, ["exceeds max_batch_size 4"]),
    ({"max_batch_size": 4, "dynamic_batching": {"max_delay": 3}}, ["unknown keys", "max_delay"]),
    ({"inputs": [{"name": "x", "datatype": "COMPLEX"}]}, ["input 'x'", "COMPLEX"]),
    ({"inputs": [{"name": "x", "shape": [0, 3]}]}, ["0 dim"]),
    ({"inputs": [{"name": "x", "shape": [-1], "profile": {"min": [4], "opt": [2], "max": [8]}}]},
     ["min <= opt <= max"]),
    ({"inputs": [{"name": "x", "shape": [-1], "profile": {"min": [1]}}]}, ["profile must be"]),
    ({"inputs": [{"name": "x"}, {"name": "x"}]}, ["names repeat"]),
    ({"inputs": [{"name": "x", "dims": [1], "shape": [1]}]}, ["'shape' or 'dims', not both"]),
    ({"instance_count": 0}, ["instance_count", ">= 1"]),
    ({"instance_count": 2, "instance_group": [{"count": 1}]}, ["not both"]),
    ({"version_policy": "newest"}, ["version_policy"]),
])
def test_errors_name_the_mistake(data, words):
    with pytest.raises(ModelConfigError) as info:
        parse(data)
    msg = str(info.value)
    assert "m/config.yaml" in msg
    for w in words:
        assert w in msg


def test_version_policies():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(kind="all").select([3, 1, 2]) == [1, 2, 3]
    assert parse({"version_policy": "all"}).version_policy.kind == "all"
    assert parse({"version_policy": {"latest": {"num_versions": 2}}}).version_policy.select([1, 2, 3]) == [2, 3]


def test_read_yaml_json_and_replacement(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("max_batch_size: 4\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"max_batch_size": 2}))
    assert read_config(tmp_path / "a").max_batch_size == 4
    assert read_config(tmp_path / "b").max_batch_size == 2
    assert read_config(tmp_path / "a", {"max_batch_size": 1}).max_batch_size == 1


def test_read_errors(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelConfigError, match="no config.yaml"):
        read_config(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("max_batch_size: [\n")
    with pytest.raises(ModelConfigError, match="cannot read the model config"):
        read_config(tmp_path / "bad")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelConfigError, match="must be a mapping"):
        read_config(tmp_path / "list")


def test_serve_refuses_a_non_positive_switch_interval(capsys, tmp_path):
    from ember.serve.cli import main

    assert main([str(tmp_path), "--switch-interval-us", "0"]) == 2
    assert "--switch-interval-us must be > 0" in capsys.readouterr().err
