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

Format versions: 2 added ``manifest.sha256``; 3 stores the decision records with a schema
(``records``) instead of an untyped graph dictionary. Files of an older format are refused with
a message that names the file and says to rebuild it: their decisions cannot be read as records.

>>> save_plan(engine.plan, "model.ember")          # doctest: +SKIP
>>> plan = load_plan("model.ember")                # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
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
from ember.plan.config import BuildConfig
from ember.plan.memory import MemoryPlan
from ember.plan.plan import Layer, Plan, TensorSpec
from ember.plan.records import Records
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


def encode_weights(constants: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of the graph constants (0-d, empty, bool and int64 arrays included)."""
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return st_save({k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in constants.items()})


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
    except (ValueError, UnicodeDecodeError):
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


def load_plan(path: str | os.PathLike[str], check_device: bool = True) -> Plan:
    """Reads and checks an engine file; raises ``EngineFileError`` or ``DeviceError``.

    ``check_device=False`` skips the device check (to inspect an engine built for a device
    this machine lacks).
    """
    path = Path(path)
    manifest, weights = _read_members(path)
    _check_manifest(path, manifest, weights)
    if check_device:
        check_compatible(manifest["device"], str(path))
    try:
        constants = st_load(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise EngineFileError(f"{path} has unreadable weights ({e}); {_REBUILD}") from None
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
