"""The .ember file: round trip, and one clear error for each way a file can be wrong."""
from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest
import torch

import ember
from ember.builder.build import build
from ember.errors import DeviceError, EngineFileError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import (
    Activation,
    AutoPad,
    AxisAttrs,
    ClipAttrs,
    ConstantOfShapeAttrs,
    ConvAttrs,
    FusedConvAttrs,
)
from ember.ops.infer import infer_graph
from ember.runtime.engine import Engine
from ember.runtime.engine_file import FORMAT_VERSION, MANIFEST, MANIFEST_SHA256, WEIGHTS
from ember.runtime.serialize import decode_value, encode_value

from runtime_graphs import mlp_graph, mlp_reference

MLP = mlp_graph()  # the unoptimized graph: references use its weights


@pytest.fixture
def saved(tmp_path):
    engine = build(mlp_graph(), ember.BuildConfig(profiles={"x": ((1, 6), (2, 6), (4, 6))}))
    path = tmp_path / "mlp.ember"
    engine.save(path)
    return engine, path


def _rewrite(src, dst, change):
    """Copies the zip ``src`` to ``dst`` with ``change(name, data) -> data | None`` applied."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def test_round_trip_gives_identical_outputs(saved):
    engine, path = saved
    loaded = ember.load(path)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    with engine.create_context() as a, loaded.create_context() as b:
        out_a, out_b = a.infer({"x": x}), b.infer({"x": x})
    for k in ("y", "z"):
        np.testing.assert_array_equal(out_a[k], out_b[k])
        np.testing.assert_allclose(out_a[k], mlp_reference(MLP, x)[k], rtol=1e-5, atol=1e-6)
    assert [str(s) for s in loaded.inputs] == [str(s) for s in engine.inputs]
    assert loaded.inputs[0].max == (4, 6)
    assert loaded.plan.layers == engine.plan.layers
    assert loaded.plan.memory == engine.plan.memory
    assert loaded.plan.config == engine.plan.config
    assert loaded.plan.graph.nodes == engine.plan.graph.nodes


def test_manifest_holds_everything(saved):
    _, path = saved
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read(MANIFEST))
        assert z.read(MANIFEST_SHA256).decode() == hashlib.sha256(z.read(MANIFEST)).hexdigest()
    assert m["format_version"] == FORMAT_VERSION == 3
    assert m["ember_version"] == ember.__version__ and m["torch_version"] == torch.__version__
    assert m["device"]["type"] == "cpu" and m["device"]["isa"]
    assert m["config"]["profiles"]["x"] == {"min": [1, 6], "opt": [2, 6], "max": [4, 6]}
    assert [n["op"] for n in m["graph"]["nodes"]] == [layer["kind"] for layer in m["layers"]]
    assert all(layer["tactic"] and layer["precision"] == "fp32" for layer in m["layers"])
    assert m["memory_plan"]["arena_bytes"] > 0 and len(m["weights"]["sha256"]) == 64
    assert m["build_info"]["layers"] == len(m["layers"]) and m["build_info"]["build_seconds"] > 0
    assert m["build_info"]["source_nodes"] == 6
    assert m["records"]["schema"] == 1 and set(m["records"]["precision"].values()) == {"fp32"}


def test_constants_of_every_kind_survive(tmp_path):
    f = TensorType
    consts = {"s": np.array(2.5, np.float32), "i": np.array([1, -2], np.int64),
              "b": np.array([True, False]), "e": np.zeros((0, 2), np.float32)}
    nodes = [Node("mul", OpType.MUL, ("x", "s"), ("y",)),
             Node("w", OpType.WHERE, ("b", "y", "x"), ("o",))]
    types = {"x": f(DType.FLOAT32, (2,)), "y": f(DType.FLOAT32, (2,)), "o": f(DType.FLOAT32, (2,)),
             "s": f(DType.FLOAT32, ()), "i": f(DType.INT64, (2,)), "b": f(DType.BOOL, (2,)),
             "e": f(DType.FLOAT32, (0, 2))}
    engine = build(Graph("k", nodes, ["x"], ["o"], types, consts))
    engine.save(tmp_path / "k.ember")
    loaded = ember.load(tmp_path / "k.ember")
    for k, v in consts.items():
        got = loaded.plan.graph.constants.get(k)
        if k in engine.plan.graph.constants:  # the optimizer may drop unused constants
            assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v)
    with loaded.create_context() as ctx:
        np.testing.assert_array_equal(ctx.infer({"x": np.array([1, 2], np.float32)})["o"], [2.5, 2.0])


def test_attrs_encode_generically():
    conv = ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2, AutoPad.SAME_UPPER)
    values = [conv, FusedConvAttrs(conv, Activation.CLIP, (0.0, 6.0), True),
              ClipAttrs(-math.inf, math.inf), ConstantOfShapeAttrs(True, "bool"), None]
    for v in values:
        back = decode_value(json.loads(json.dumps(encode_value(v))))
        assert back == v and type(back) is type(v)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        bad = tmp_path / f"cut{cut}.ember"
        bad.write_bytes(data[:cut])
        with pytest.raises(EngineFileError, match=r"truncated.*rebuild it with `ember build`"):
            ember.load(bad)


def test_altered_weights(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.ember"

    def flip(name, data):
        if name != WEIGHTS:
            return data
        b = bytearray(data)
        b[-3] ^= 0xFF
        return bytes(b)

    _rewrite(path, bad, flip)
    with pytest.raises(EngineFileError, match="checksum does not match.*altered"):
        ember.load(bad)


def test_damaged_member_crc(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    at = data.find(b'"format_version"')  # inside the stored manifest: CRC no longer matches
    data[at + 1] = ord("F")
    bad = tmp_path / "crc.ember"
    bad.write_bytes(bytes(data))
    with pytest.raises(EngineFileError, match="damaged"):
        ember.load(bad)


def test_missing_member_and_not_a_zip(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "noweights.ember"
    _rewrite(path, bad, lambda n, d: None if n == WEIGHTS else d)
    with pytest.raises(EngineFileError, match="has no weights.safetensors"):
        ember.load(bad)
    junk = tmp_path / "junk.ember"
    junk.write_text("hello")
    with pytest.raises(EngineFileError, match="not an Ember engine file"):
        ember.load(junk)
    with pytest.raises(EngineFileError, match="does not exist"):
        ember.load(tmp_path / "nothing.ember")


def _edit_manifest(path, dst, edit, checksum=True):
    """A copy with ``edit(manifest dict)`` applied and (``checksum``) manifest.sha256 to match, as
    a file written that way would have (without it: dropped)."""
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read(MANIFEST))
    edit(m)
    raw = json.dumps(m).encode()

    def change(name, data):
        if name == MANIFEST:
            return raw
        if name == MANIFEST_SHA256:
            return hashlib.sha256(raw).hexdigest() if checksum else None
        return data

    _rewrite(path, dst, change)


def test_altered_manifest(saved, tmp_path):
    """A byte of the manifest changed and the zip rewritten (fresh CRCs): the manifest checksum
    catches it before anything in the manifest is believed."""
    _, path = saved
    for where in ("format_version", "sha256", "tactic"):
        bad = tmp_path / f"manifest-{where}.ember"

        def flip(name, data, where=where):
            if name != MANIFEST:
                return data
            b = bytearray(data)
            b[data.find(f'"{where}"'.encode()) + 3] ^= 0x01  # inside the key: still valid JSON
            return bytes(b)

        _rewrite(path, bad, flip)
        with pytest.raises(EngineFileError) as err:
            ember.load(bad)
        assert str(err.value) == (f"{bad} has a manifest whose sha256 does not match the one in its "
                                  f"manifest.sha256 (the file was altered or damaged); rebuild it with "
                                  f"`ember build`")


@pytest.mark.parametrize("version,checksum", [(1, False), (2, True)])
def test_files_of_older_formats_are_refused_with_a_rebuild_message(saved, tmp_path, version, checksum):
    """Formats 1 and 2 kept the passes' decisions in an untyped graph dictionary; they cannot be
    read as typed records, so they are refused, naming the file and what to do."""
    _, path = saved
    old = tmp_path / f"v{version}.ember"

    def downgrade(m):
        m.update(format_version=version, ember_version="0.0.9")
        m["graph"]["meta"] = {"layout": {"preferred": "nhwc"}}
        del m["records"]

    _edit_manifest(path, old, downgrade, checksum=checksum)
    with pytest.raises(EngineFileError, match=rf"{old}.*format {version} \(written by Ember 0\.0\.9\).*"
                                              r"no longer reads.*rebuild it from its model with `ember build`"):
        ember.load(old)


def test_format_3_file_without_its_manifest_checksum(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "nosum.ember"
    _rewrite(path, bad, lambda n, d: None if n == MANIFEST_SHA256 else d)
    with pytest.raises(EngineFileError, match=r"has no manifest\.sha256, which engine format 3 requires"):
        ember.load(bad)


def test_every_record_round_trips(tmp_path):
    """Layout, concat, precision and quantization records come back from the file as they went in."""
    import dataclasses

    from ember.plan import Layout, LayoutConversion, LayoutPlan, Precision, QuantDType, QuantizationPlan, QuantRecord
    from ember.plan.records import OUTPUT_READER

    nodes = [Node("r", OpType.RELU, ("x",), ("a",)), Node("s", OpType.SIGMOID, ("x",), ("b",)),
             Node("cat", OpType.CONCAT, ("a", "b"), ("y",), AxisAttrs(1))]
    types = {"x": TensorType(DType.FLOAT32, (1, 3, 4, 4))}
    engine = build(infer_graph(Graph("cat", nodes, ["x"], ["y"], types, {})))
    records = engine.plan.records
    assert records.layout is not None and records.concat and records.precision.layers
    quant = QuantizationPlan({
        "a": QuantRecord("a", QuantDType.INT8, (0.02,), (0,), None, "calibration:entropy"),
        "w": QuantRecord("w", QuantDType.INT8, (0.1, 0.2, 0.3), (0, 0, 0), 0, "qdq")})
    layout = LayoutPlan(Layout.NHWC, records.layout.nhwc, frozenset({"w"}),
                        (LayoutConversion("y", Layout.NCHW, OUTPUT_READER),))
    engine.plan.records = records.with_(layout=layout, quantization=quant,
                                        precision=dataclasses.replace(records.precision, layers={
                                            **records.precision.layers, "r": Precision.FP16}))
    engine.save(tmp_path / "r.ember")
    loaded = Engine.load(tmp_path / "r.ember", compile=False)
    assert loaded.plan.records == engine.plan.records
    assert loaded.plan.records.quantization.get("w").axis == 0


def test_newer_format_version(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "new.ember"
    _edit_manifest(path, bad, lambda m: m.update(format_version=FORMAT_VERSION + 1, ember_version="9.0"))
    with pytest.raises(EngineFileError, match=rf"format {FORMAT_VERSION + 1} \(written by Ember 9.0\).*"
                                              r"upgrade Ember or rebuild"):
        ember.load(bad)


def test_unknown_class_in_manifest(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "cls.ember"

    def edit(m):
        m["graph"]["nodes"][0]["attrs"]["__dataclass__"] = "os:system"

    _edit_manifest(path, bad, edit)
    with pytest.raises(EngineFileError, match="outside Ember"):
        ember.load(bad)


def test_cuda_engine_on_cpu_only_machine(saved, tmp_path, monkeypatch):
    _, path = saved
    bad = tmp_path / "model.ember"
    fp = {"type": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "cuda": "13.0"}

    def edit(m):
        m["device"] = fp
        m["config"]["device"] = "cuda"

    _edit_manifest(path, bad, edit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as err:
        ember.load(bad)
    assert str(err.value) == (f"{bad} was built for CUDA (NVIDIA H100 80GB HBM3, compute capability 9.0) "
                              f"but this machine has no GPU; rebuild it with --device cpu")
    # inspection needs no device
    assert ember.runtime.engine.Engine.load(bad, compile=False).plan.config.device == "cuda"
