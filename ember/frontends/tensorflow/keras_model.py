"""Keras models: loading a ``.keras``/``.h5`` file (naming every layer whose class Keras cannot
find), and tracing a model into a concrete function whose inputs and outputs carry the model's
own names (its ``Input`` layers' and its output layers')."""
from __future__ import annotations

import importlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.tensorflow.functions import check_shape_names, freeze, spec_shape
from ember.frontends.tensorflow.libs import require
from ember.frontends.tensorflow.source import HDF5_MAGIC
from ember.frontends.tensorflow.traced import Traced


def load_file(path: Path, custom_objects: Optional[Mapping[str, Any]], safe_mode: bool) -> Any:
    """The ``keras.Model`` saved in ``path``; a file Keras cannot read, or a layer class it
    cannot find, is a ``ModelLoadError`` naming the file (and the layers)."""
    label = str(path)
    if not path.is_file():
        raise ModelLoadError(f"Keras model file {label} does not exist (or is not a file); check the path")
    _check_container(path)
    keras = require("keras", f"the Keras model {label}")
    try:
        model = keras.models.load_model(path, custom_objects=dict(custom_objects or {}), compile=False,
                                        safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds; each becomes one message here
        raise _load_error(keras, path, custom_objects, e) from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{label} holds a {type(model).__name__}, not a Keras model")
    return model


def _check_container(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(len(HDF5_MAGIC))
    if head == HDF5_MAGIC:
        return
    if path.suffix.lower() in (".h5", ".hdf5"):
        raise ModelLoadError(f"{path} is not an HDF5 file (a Keras .h5 model starts with HDF5's "
                             f"signature); the file is truncated or of another kind")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a Keras v3 archive (a .keras model is a zip file holding "
                             f"config.json); the file is truncated or of another kind")


# ---- naming the layers Keras cannot load ------------------------------------------------------
def _config(path: Path) -> Optional[dict[str, Any]]:
    """The model's saved configuration (``config.json`` of a .keras archive, the
    ``model_config`` attribute of an .h5 file), or None when there is none to read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                cfg = json.loads(z.read("config.json"))
        else:
            h5py = importlib.import_module("h5py")
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
            if raw is None:
                return None
            cfg = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (OSError, KeyError, ValueError, ImportError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _layer_configs(cfg: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every layer config in a model config, nested models' layers included."""
    inner = cfg.get("config")
    layers = inner.get("layers") if isinstance(inner, Mapping) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, Mapping):
            yield layer
            yield from _layer_configs(layer)


def _layer_name(layer: Mapping[str, Any]) -> str:
    inner = layer.get("config")
    name = inner.get("name") if isinstance(inner, Mapping) else None
    return str(name or layer.get("name") or "?")


def _resolvable(keras: Any, layer: Mapping[str, Any], custom_objects: Optional[Mapping[str, Any]]) -> bool:
    cls = str(layer.get("class_name", ""))
    registered = str(layer.get("registered_name") or cls)
    if custom_objects and (cls in custom_objects or registered in custom_objects):
        return True
    if keras.saving.get_registered_object(registered) is not None:
        return True
    module = layer.get("module")
    if isinstance(module, str) and module.startswith("keras"):
        try:
            return hasattr(importlib.import_module(module), cls)
        except ImportError:
            return False
    return hasattr(keras.layers, cls) or hasattr(keras.models, cls) or cls in ("Functional", "Model")


def _load_error(keras: Any, path: Path, custom_objects: Optional[Mapping[str, Any]],
                e: Exception) -> ModelLoadError:
    cfg = _config(path)
    unknown = [f"'{_layer_name(layer)}' (class {layer.get('class_name')})"
               for layer in (_layer_configs(cfg) if cfg else ()) if not _resolvable(keras, layer, custom_objects)]
    reason = _first_line(e)
    if unknown:
        return ModelLoadError(
            f"{path} uses {len(unknown)} layer(s) whose class Keras cannot find: {', '.join(unknown)}. "
            f"Import the module that defines them (classes decorated with "
            f"@keras.saving.register_keras_serializable()) before loading, or pass "
            f"custom_objects={{'ClassName': ClassName}}. Keras said: {reason}")
    if "safe_mode" in str(e):
        return ModelLoadError(f"{path} holds Python code (a Lambda layer) that Keras will not load in "
                              f"safe mode; if you trust the file, pass safe_mode=False. Keras said: {reason}")
    return ModelLoadError(f"Keras could not load {path} ({type(e).__name__}: {reason}); check that the "
                          f"file is a complete Keras model saved with model.save()")


def _first_line(e: BaseException) -> str:
    text = str(e)
    found = re.search(r"Could not locate class '[^']+'", text)
    if found:
        return found.group(0)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("config=")]
    return lines[0][:400] if lines else type(e).__name__


# ---- tracing -------------------------------------------------------------------------------
def layer_classes(model: Any) -> dict[str, str]:
    """Layer name -> class name for every layer of ``model`` and of the models nested in it."""
    out: dict[str, str] = {}
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        out.setdefault(layer.name, type(layer).__name__)
        stack.extend(getattr(layer, "layers", []))
    return out


def _output_names(model: Any, count: int) -> list[str]:
    names = [str(n) for n in (getattr(model, "output_names", None) or [])]
    if len(names) != count:
        names = [f"output_{i}" for i in range(count)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # Keras gives two outputs of one layer the same name
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n] - 1}")
    return unique


def trace(tf: Any, tf2onnx: Any, model: Any, shapes: Optional[ShapeMap], label: str) -> Traced:
    """The frozen graph of ``model`` called in inference mode on its declared inputs."""
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise ModelLoadError(
            f"{label}: the Keras model declares no inputs (a subclassed model never called on "
            f"keras.Input); define it as a Sequential or functional model, or export it with "
            f"model.export('folder') and pass the SavedModel folder")
    names = [str(t.name).split(":")[0] for t in inputs]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{label}: two inputs of the Keras model share a name ({names}); give "
                             f"each keras.Input its own name=")
    check_shape_names(shapes, names, label)
    given = shapes or {}
    specs = [tf.TensorSpec(spec_shape(given[n]) if n in given else tuple(t.shape), t.dtype, name=n)
             for t, n in zip(inputs, names)]
    struct = getattr(model, "_inputs_struct", None)
    if struct is None:
        struct = getattr(model, "_nested_inputs", None)  # tf-keras
    flat_count = len(tf.nest.flatten(struct)) if struct is not None else -1

    def call(*args: Any) -> Any:
        if len(args) == 1 and not isinstance(struct, (list, tuple, dict)):
            return model(args[0], training=False)
        x = tf.nest.pack_sequence_as(struct, list(args)) if flat_count == len(args) else list(args)
        return model(x, training=False)

    out_names: list[str] = []

    def keyed(*args: Any) -> dict[str, Any]:
        flat = tf.nest.flatten(call(*args))
        out_names[:] = _output_names(model, len(flat))
        return dict(zip(out_names, flat))

    try:
        fn = tf.function(keyed, input_signature=specs, autograph=False).get_concrete_function()
    except Exception as e:  # noqa: BLE001 - a layer's own code may raise anything while tracing
        raise ModelLoadError(f"{label}: calling the Keras model on its inputs failed while tracing it "
                             f"({type(e).__name__}: {_first_line(e)})") from e
    return freeze(tf, tf2onnx, fn, names, out_names, trackable=model,
                  label=label, kind="Keras model", fmt="keras", layers=layer_classes(model))
