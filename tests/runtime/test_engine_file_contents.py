"""Engine files hold only the dtypes and record kinds Ember writes (issue 17): anything else is
refused by ``load_plan`` with an ``EngineFileError`` naming the file and the field."""
from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import ember
from ember.builder.build import build
from ember.errors import EngineFileError
from ember.runtime.engine_file import MANIFEST, MANIFEST_SHA256, WEIGHTS, load_plan, manifest_digest

from runtime_graphs import mlp_graph


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("contents") / "mlp.ember"
    build(mlp_graph(), ember.BuildConfig(profiles={"x": ((1, 6), (2, 6), (4, 6))})).save(path)
    return path


def _rewrite(src, dst, manifest_edit=None, weights_edit=None):
    """``src`` copied to ``dst`` with the manifest and/or weights changed and every checksum made
    to match again: what a tool (not damage) writing a foreign file looks like."""
    with zipfile.ZipFile(src) as z:
        manifest, weights = json.loads(z.read(MANIFEST)), z.read(WEIGHTS)
    if weights_edit is not None:
        arrays = dict(st_load(weights))
        weights_edit(arrays)
        weights = st_save(arrays)
        manifest["weights"]["sha256"] = hashlib.sha256(weights).hexdigest()
        manifest["weights"]["bytes"] = len(weights)
    if manifest_edit is not None:
        manifest_edit(manifest)
    raw = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(MANIFEST, raw)
        z.writestr(MANIFEST_SHA256, manifest_digest(raw))
        z.writestr(WEIGHTS, weights)
    return dst


def test_a_file_ember_wrote_loads(saved):
    assert load_plan(saved).inputs[0].name == "x"


def _first_weight(arrays):
    return sorted(arrays)[0]


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_weights_of_a_foreign_dtype(saved, tmp_path, dtype):
    def edit(arrays):
        name = _first_weight(arrays)
        arrays[name] = arrays[name].astype(dtype)
    try:
        bad = _rewrite(saved, tmp_path / "w.ember", weights_edit=edit)
    except Exception:  # safetensors cannot even write this dtype: nothing to load
        pytest.skip(f"safetensors does not store {np.dtype(dtype)}")
    with pytest.raises(EngineFileError, match=r"w\.ember: weight '.*' has dtype .*which Ember does not write"):
        load_plan(bad)


@pytest.mark.parametrize("field, edit", [
    ("graph.types['x'].dtype", lambda m: m["graph"]["types"]["x"].update(dtype="complex64")),
    ("graph.types['x'].dtype", lambda m: m["graph"]["types"]["x"].update(dtype=["float32"])),
    ("inputs['x'].dtype", lambda m: m["inputs"][0].update(dtype="float8_e4m3")),
    ("outputs[", lambda m: m["outputs"][0].update(dtype="object")),
    ("records.plugin_hooks", lambda m: m["records"].update(plugin_hooks={"run": "os.system"})),
    ("records.quantization['x'].dtype", lambda m: m["records"]["quantization"].update(
        x={"dtype": "int4", "scale": [1.0], "zero_point": [0], "axis": None})),
    ("precision", lambda m: m["layers"][0].update(precision="fp4")),
])
def test_manifest_fields_of_a_foreign_kind(saved, tmp_path, field, edit):
    bad = _rewrite(saved, tmp_path / "m.ember", manifest_edit=edit)
    with pytest.raises(EngineFileError) as info:
        load_plan(bad)
    message = str(info.value)
    assert str(bad) in message and field in message and "which Ember does not write" in message, message


def _attrs_edit(change):
    def edit(m):
        node = next(n for n in m["graph"]["nodes"] if isinstance(n["attrs"], dict))
        change(node["attrs"])
    return edit


@pytest.mark.parametrize("change, says", [
    (lambda a: a.update(extra={"__ndarray__": [1, 2], "dtype": "|O", "shape": [2]}), "array of dtype '|O'"),
    (lambda a: a.update(extra={"__ndarray__": [1, 2], "dtype": "<c8", "shape": [2]}), "array of dtype '<c8'"),
    (lambda a: a.update(extra={"__ndarray__": [1], "dtype": "not a dtype", "shape": [1]}), "array of dtype"),
    (lambda a: a.update(extra={"__ndarray__": [1], "dtype": "<f4", "shape": [-1]}), "array of shape"),
    (lambda a: a.update(extra=[{"__enum__": "ember.serve.config:Device", "value": "cpu"}]), "outside Ember's IR"),
    (lambda a: a.update(extra={"__dataclass__": "ember.serve.server:ServerOptions", "fields": {}}),
     "outside Ember's IR"),
])
def test_node_attributes_of_a_foreign_kind(saved, tmp_path, change, says):
    bad = _rewrite(saved, tmp_path / "a.ember", manifest_edit=_attrs_edit(change))
    with pytest.raises(EngineFileError, match=r"a\.ember: node '.*' attrs.*") as info:
        load_plan(bad)
    assert says in str(info.value)


@pytest.mark.parametrize("depth", [40, 5000])
def test_deeply_nested_attributes_are_refused_without_recursion(saved, tmp_path, depth):
    """Ember's attributes nest a few levels; a deep one is refused before anything recurses on
    it (40: JSON reads it, the check refuses it; 5000: too deep for JSON itself)."""
    deep = "[" * depth + "]" * depth
    bad = tmp_path / "deep.ember"
    _rewrite(saved, bad, manifest_edit=_attrs_edit(lambda a: a.update(extra="DEEP")))
    with zipfile.ZipFile(bad) as z:
        raw = z.read(MANIFEST).replace(b'"DEEP"', deep.encode())
        weights = z.read(WEIGHTS)
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr(MANIFEST, raw)
        z.writestr(MANIFEST_SHA256, manifest_digest(raw))
        z.writestr(WEIGHTS, weights)
    with pytest.raises(EngineFileError, match="deeper than 32 levels" if depth == 40 else "not valid JSON"):
        load_plan(bad)
