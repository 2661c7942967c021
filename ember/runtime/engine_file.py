"""The ``.ember`` engine file: a zip of ``manifest.json``, ``manifest.sha256`` and
``weights.safetensors``.

The manifest holds the format version, the Ember/torch/Python versions, the device fingerprint,
the build configuration, the optimized graph (nodes with op, inputs, outputs, attributes,
origin and rule), the input/output specs, the layers with tactics and precisions, the memory
plan, the passes' typed decision records (layout, concat, precision, quantization: schema in
``ember.plan.records``), build facts, and the sha256 of the weights member. ``manifest.sha256`` holds the sha256 of
the manifest's bytes (hex), so an edited manifest is caught even when the zip around it was
rewritten with fresh CRCs. Loading checks every one of these and fails with one sentence saying
what is wrong and what to do.

``plugins`` lists the plugins the engine's Plugin nodes need (name, domain, version, the module
that declares them): loading fails naming them and their modules unless they are registered,
and imports those modules only when asked (``import_plugins``).

Format versions: 2 added ``manifest.sha256``; 3 stores the decision records with a schema
(``records``) instead of an untyped graph dictionary. Files of an older format are refused with
a message that names the file and says to rebuild it: their decisions cannot be read as records.

>>> save_plan(engine.plan, "model.ember")          # doctest: +SKIP
>>> plan = load_plan("model.ember")                # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ember._version import __version__
from ember.errors import EmberError, EngineFileError
from ember.ir.dtype import DType
from ember.ops.plugin import PluginRecord, get_plugin, plugins_of
from ember.plan.config import BuildConfig, Precision
from ember.plan.memory import MemoryPlan
from ember.plan.plan import Layer, Plan, TensorSpec
from ember.plan.records import QuantDType, Records
from ember.runtime.device import check_compatible
from ember.runtime.serialize import graph_from_json, graph_to_json

FORMAT = "ember-engine"
FORMAT_VERSION = 3
OLDEST_READABLE = 3  # older files keep decisions in an untyped dictionary: rebuild them
MANIFEST_CHECKSUM_SINCE = 2  # the first format version with a manifest checksum member
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
WEIGHTS = "weights.safetensors"
_REQUIRED = ("format_version", "ember_version", "device", "config", "graph", "inputs", "outputs",
             "layers", "memory_plan", "records", "weights")
_REBUILD = "rebuild it with `ember build`"


def _ember_version() -> str:
    return __version__


#: safetensors metadata key naming the weights stored as their bytes (uint8) and their real type
_FLOAT8_KEY = "ember_float8"


def encode_weights(constants: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of the graph constants (0-d, empty, bool and int64 arrays included).
    8-bit float constants (ml_dtypes' types, which safetensors' numpy side does not take) are
    stored as their bytes, uint8, and named with their type in the file's metadata."""
    tensors: dict[str, np.ndarray] = {}
    float8: dict[str, str] = {}
    for k, v in constants.items():
        # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
        v = v if v.flags.c_contiguous else v.copy(order="C")
        if v.dtype.name.startswith("float8_"):
            float8[k] = v.dtype.name
            v = v.view(np.uint8)
        tensors[k] = v
    return st_save(tensors, metadata={_FLOAT8_KEY: json.dumps(float8)} if float8 else None)


def decode_weights(weights: bytes) -> dict[str, np.ndarray]:
    """``encode_weights``'s inverse (8-bit float constants viewed back as their type)."""
    constants = st_load(weights)
    float8 = json.loads(_metadata(weights).get(_FLOAT8_KEY, "{}"))
    for name, dtype in float8.items():
        if name not in constants or constants[name].dtype != np.uint8 or not DType(dtype).is_float8:
            raise ValueError(f"metadata names {name!r} as a {dtype} weight stored as bytes, and it is not")
        constants[name] = constants[name].view(DType(dtype).to_numpy())
    return constants


def _metadata(weights: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (its header: a little-endian u64 length, then
    JSON)."""
    n = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def manifest_of(plan: Plan, weights: bytes) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ember_version": _ember_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": plan.device,
        "config": plan.config.to_json(),
        "graph": graph_to_json(plan.graph),
        "inputs": [s.to_json() for s in plan.inputs],
        "outputs": [s.to_json() for s in plan.outputs],
        "layers": [layer.to_json() for layer in plan.layers],
        "memory_plan": plan.memory.to_json(),
        "records": plan.records.to_json(),
        "build_info": plan.build_info,
        "plugins": [r.to_json() for r in plugins_of(plan.graph)],
        "weights": {"member": WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest(),
                    "bytes": len(weights), "count": len(plan.graph.constants)},
    }


def manifest_digest(manifest: bytes) -> str:
    """What ``manifest.sha256`` holds for these manifest bytes: their sha256, in hex."""
    return hashlib.sha256(manifest).hexdigest()


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    """Writes ``plan`` to ``path`` atomically (a crash never leaves a half-written engine)."""
    path = Path(path)
    weights = encode_weights(plan.graph.constants)
    manifest = json.dumps(manifest_of(plan, weights), indent=1, allow_nan=True).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, manifest)
            z.writestr(MANIFEST_SHA256, manifest_digest(manifest))
            z.writestr(WEIGHTS, weights)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_members(path: Path) -> tuple[dict[str, Any], bytes]:
    if not path.exists():
        raise EngineFileError(f"engine file {path} does not exist; build one with `ember build`")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for member in (MANIFEST, WEIGHTS):
                if member not in names:
                    raise EngineFileError(f"{path} has no {member}; it is not a complete Ember "
                                          f"engine file; {_REBUILD}")
            raw_manifest, weights = z.read(MANIFEST), z.read(WEIGHTS)
            stored_digest = z.read(MANIFEST_SHA256) if MANIFEST_SHA256 in names else None
    except zipfile.BadZipFile as e:
        what = "is damaged" if "CRC" in str(e) else "is truncated or not an Ember engine file"
        raise EngineFileError(f"{path} {what} ({e}); {_REBUILD}") from None
    except (OSError, EOFError, ValueError) as e:  # zipfile raises these on cut-off members
        raise EngineFileError(f"{path} is truncated or unreadable ({e}); {_REBUILD}") from None
    # checked before the manifest is parsed or believed: an altered version or field must not
    # produce some other, misleading, error first
    if stored_digest is not None and stored_digest.strip() != manifest_digest(raw_manifest).encode("ascii"):
        raise EngineFileError(f"{path} has a manifest whose sha256 does not match the one in its "
                              f"{MANIFEST_SHA256} (the file was altered or damaged); {_REBUILD}")
    try:
        manifest = json.loads(raw_manifest)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EngineFileError(f"{path} has a manifest that is not valid JSON (the file was altered); "
                              f"{_REBUILD}") from None
    if not isinstance(manifest, dict):
        raise EngineFileError(f"{path} has a malformed manifest; {_REBUILD}")
    version = manifest.get("format_version")
    if stored_digest is None and isinstance(version, int) and MANIFEST_CHECKSUM_SINCE <= version <= FORMAT_VERSION:
        raise EngineFileError(f"{path} has no {MANIFEST_SHA256}, which engine format {version} requires; "
                              f"it is not a complete Ember engine file; {_REBUILD}")
    return manifest, weights


def _check_manifest(path: Path, m: Mapping[str, Any], weights: bytes) -> None:
    if m.get("format") != FORMAT:
        raise EngineFileError(f"{path} is not an Ember engine file (format {m.get('format')!r}); {_REBUILD}")
    version = m.get("format_version")
    if not isinstance(version, int):
        raise EngineFileError(f"{path} has no valid format version; {_REBUILD}")
    if version > FORMAT_VERSION:
        raise EngineFileError(
            f"{path} uses engine format {version} (written by Ember {m.get('ember_version', '?')}) but "
            f"this Ember {_ember_version()} reads formats up to {FORMAT_VERSION}; upgrade Ember or "
            f"rebuild the engine with this version")
    if version < OLDEST_READABLE:
        raise EngineFileError(
            f"{path} uses engine format {version} (written by Ember {m.get('ember_version', '?')}), "
            f"which this Ember {_ember_version()} no longer reads (it reads formats "
            f"{OLDEST_READABLE} to {FORMAT_VERSION}); rebuild it from its model with `ember build`")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise EngineFileError(f"{path} has a manifest without {', '.join(missing)}; {_REBUILD}")
    digest = hashlib.sha256(weights).hexdigest()
    if digest != m["weights"].get("sha256"):
        raise EngineFileError(f"{path} has weights whose checksum does not match its manifest (the "
                              f"file was altered or damaged); {_REBUILD}")


#: numpy dtypes of the tensors Ember writes (``DType``; bfloat16 has no numpy form)
_WRITTEN_DTYPES = frozenset(d.to_numpy().str for d in DType if d is not DType.BFLOAT16)
#: packages whose dataclasses and enums the graph's attributes are made of
_ATTR_PACKAGES = ("ember.ops", "ember.ir", "ember.plan")
_ATTR_DEPTH = 32  # Ember's attributes nest a few levels (a dataclass of tuples of dataclasses)


def check_contents(path: Path, m: Mapping[str, Any], constants: Mapping[str, np.ndarray]) -> None:
    """Refuses an engine file holding a dtype or record kind Ember does not write: weights,
    tensor types, engine inputs and outputs of ``DType``s only; node attributes made of Ember's
    IR classes and arrays of those dtypes; decision records of the kinds ``Records`` writes.

    Each error names the file and the field (``EngineFileError``): such a file was altered or
    written by something else, and reading on would fail somewhere far from the cause.
    """
    def bad(field: str, what: str) -> EngineFileError:
        return EngineFileError(f"{path}: {field} {what}, which Ember does not write (the file was "
                               f"altered or not written by Ember); {_REBUILD}")

    for name, arr in constants.items():
        if arr.dtype.str not in _WRITTEN_DTYPES and arr.dtype.newbyteorder("<").str not in _WRITTEN_DTYPES:
            raise bad(f"weight {name!r}", f"has dtype {arr.dtype.name}")
    dtypes = {d.value for d in DType}

    def known(value: Any, allowed: set[str]) -> bool:
        return isinstance(value, str) and value in allowed

    graph = m.get("graph")
    if not isinstance(graph, Mapping) or not isinstance(graph.get("types"), Mapping):
        raise bad("the graph", "has no tensor types")
    for name, t in graph["types"].items():
        if not known(_field(t, "dtype"), dtypes):
            raise bad(f"graph.types[{name!r}].dtype", f"is {_short(_field(t, 'dtype'))}")
    for key in ("inputs", "outputs"):
        for i, spec in enumerate(m.get(key) or []):
            if not known(_field(spec, "dtype"), dtypes):
                raise bad(f"{key}[{_field(spec, 'name') or i!r}].dtype", f"is {_short(_field(spec, 'dtype'))}")
    for node in graph.get("nodes") or []:
        if isinstance(node, Mapping):
            _check_attr_value(node.get("attrs"), f"node {_short(node.get('name'))} attrs", bad)
    precisions = {p.value for p in Precision}
    for layer in m.get("layers") or []:
        if isinstance(layer, Mapping) and not known(layer.get("precision"), precisions):
            raise bad(f"layer {_short(layer.get('name'))} precision", f"is {_short(layer.get('precision'))}")
    records = m.get("records")
    if isinstance(records, Mapping):
        kinds = set(Records().to_json())
        for kind in records:
            if kind not in kinds:
                raise bad(f"records.{kind}", "is a kind of decision record")
        quant = records.get("quantization")
        qtypes = {q.value for q in QuantDType}
        if isinstance(quant, Mapping):
            for tensor, q in quant.items():
                if isinstance(q, Mapping) and not known(q.get("dtype"), qtypes):
                    raise bad(f"records.quantization[{tensor!r}].dtype", f"is {_short(q.get('dtype'))}")


def _field(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _check_attr_value(value: Any, field: str, bad: Any) -> None:
    """Node attributes: ``encode_value``'s forms only, nested at most ``_ATTR_DEPTH`` levels
    (iterative: a hostile file nests deep, and decoding recurses)."""
    stack = [(value, field, 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > _ATTR_DEPTH and isinstance(v, (list, Mapping)):
            raise bad(where, f"nests deeper than {_ATTR_DEPTH} levels")
        if isinstance(v, list):
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, Mapping):
            for marker in ("__dataclass__", "__enum__"):
                ref = v.get(marker)
                if ref is not None and not (isinstance(ref, str) and ref.partition(":")[0].startswith(_ATTR_PACKAGES)):
                    raise bad(where, f"refers to class {_short(ref)} outside Ember's IR classes")
            if "__ndarray__" in v:
                dtype = v.get("dtype")
                try:
                    ok = isinstance(dtype, str) and np.dtype(dtype).str in _WRITTEN_DTYPES
                except TypeError:
                    ok = False
                if not ok:
                    raise bad(where, f"holds an array of dtype {_short(dtype)}")
                shape = v.get("shape")
                if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                    raise bad(where, f"holds an array of shape {_short(shape)}")
                continue
            stack.extend((x, f"{where}.{k}", depth + 1) for k, x in v.items())


def _plugin_records(path: Path, m: Mapping[str, Any]) -> list[PluginRecord]:
    try:
        return [PluginRecord.from_json(d) for d in m.get("plugins", [])]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EngineFileError(f"{path} has a malformed plugin list; {_REBUILD}") from None


def _check_plugins(path: Path, m: Mapping[str, Any], import_plugins: bool) -> None:
    """Every plugin the engine's Plugin nodes need must be registered (``ember.ops.plugin``);
    with ``import_plugins`` the modules the file records are imported first (the user's opt-in:
    an engine file never runs code on its own)."""
    records = _plugin_records(path, m)
    missing = [r for r in records if get_plugin(r.domain, r.op_type, r.version) is None]
    if missing and import_plugins:
        for module in dict.fromkeys(r.module for r in missing):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise EngineFileError(f"{path} needs plugins from module {module!r}, which cannot "
                                      f"be imported ({e}); install it or put it on sys.path") from None
        missing = [r for r in records if get_plugin(r.domain, r.op_type, r.version) is None]
    if missing:
        listed = "; ".join(f"{r.key} (declared in module {r.module!r})" for r in missing)
        modules = ", ".join(dict.fromkeys(r.module for r in missing))
        raise EngineFileError(
            f"{path} needs plugin(s) that are not registered in this process: {listed}. Import "
            f"{modules} before loading the engine, or load it with ember.load(path, "
            f"import_plugins=True) to import the recorded module(s)")


def import_plugins(path: str | os.PathLike[str]) -> list[str]:
    """Imports the modules that declare the plugins an engine file records (the opt-in of
    ``ember.load(path, import_plugins=True)``); returns them. The file is checked first."""
    p = Path(path)
    manifest, weights = _read_members(p)
    _check_manifest(p, manifest, weights)
    _check_plugins(p, manifest, import_plugins=True)
    return list(dict.fromkeys(r.module for r in _plugin_records(p, manifest)))


def load_plan(path: str | os.PathLike[str], check_device: bool = True,
              import_plugins: bool = False) -> Plan:
    """Reads and checks an engine file; raises ``EngineFileError`` or ``DeviceError``.

    ``check_device=False`` skips the device check (to inspect an engine built for a device
    this machine lacks). The plugins the engine needs must be registered (imported); with
    ``import_plugins=True`` the modules the file records are imported.
    """
    path = Path(path)
    manifest, weights = _read_members(path)
    _check_manifest(path, manifest, weights)
    if check_device:
        check_compatible(manifest["device"], str(path))
    _check_plugins(path, manifest, import_plugins)
    try:
        constants = decode_weights(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise EngineFileError(f"{path} has unreadable weights ({e}); {_REBUILD}") from None
    check_contents(path, manifest, constants)
    try:
        return Plan(
            graph=graph_from_json(manifest["graph"], constants),
            layers=[Layer.from_json(d) for d in manifest["layers"]],
            inputs=[TensorSpec.from_json(d) for d in manifest["inputs"]],
            outputs=[TensorSpec.from_json(d) for d in manifest["outputs"]],
            memory=MemoryPlan.from_json(manifest["memory_plan"]),
            config=BuildConfig.from_json(manifest["config"]),
            records=Records.from_json(manifest["records"]),
            device=dict(manifest["device"]),
            build_info=dict(manifest.get("build_info", {})),
        )
    except EngineFileError:
        raise
    except (EmberError, KeyError, TypeError, ValueError) as e:
        raise EngineFileError(f"{path} has a malformed manifest ({type(e).__name__}: {e}); "
                              f"{_REBUILD}") from None
