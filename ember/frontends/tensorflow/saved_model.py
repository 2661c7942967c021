"""SavedModel folders: choosing the meta graph (by tags) and the signature, then freezing that
signature's function. Inputs and outputs take the signature's names (its keys)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional, Sequence

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.tensorflow.functions import check_shape_names
from ember.frontends.tensorflow.libs import require
from ember.frontends.tensorflow.source import SAVED_MODEL_FILES
from ember.frontends.tensorflow.traced import Traced

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_TAG = "serve"


def _read(folder: Path) -> Any:
    """The folder's SavedModel proto (binary or text)."""
    from google.protobuf import message, text_format

    saved_model_pb2 = importlib.import_module("tensorflow.core.protobuf.saved_model_pb2")
    proto = saved_model_pb2.SavedModel()
    binary, text = (folder / name for name in SAVED_MODEL_FILES)
    try:
        if binary.is_file():
            proto.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(text.read_text(encoding="utf-8"), proto)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, OSError) as e:
        raise ModelLoadError(f"{folder} is not a readable SavedModel ({type(e).__name__}: {e}); the "
                             f"saved_model.pb is truncated or of another kind. Save it again with "
                             f"tf.saved_model.save or model.export") from None
    return proto


def _choose(folder: Path, proto: Any, tags: Optional[Sequence[str]],
            signature: Optional[str]) -> tuple[list[str], str, Any]:
    """(tags, signature key, SignatureDef) of the meta graph and signature to convert."""
    metas = list(proto.meta_graphs)
    if not metas:
        raise ModelLoadError(f"{folder} holds no meta graph; it is not a complete SavedModel")
    tag_sets = [sorted(m.meta_info_def.tags) for m in metas]
    if tags is not None:
        matches = [m for m, t in zip(metas, tag_sets) if set(t) == set(tags)]
        if not matches:
            raise ModelLoadError(f"{folder} has no meta graph tagged {sorted(tags)}; its tag sets are "
                                 f"{tag_sets}: pass tags=[...] with one of them")
    else:
        matches = [m for m, t in zip(metas, tag_sets) if DEFAULT_TAG in t] or metas[:1]
    meta = matches[0]
    chosen_tags = sorted(meta.meta_info_def.tags)
    sigs = {k: v for k, v in meta.signature_def.items() if not k.startswith("_")}
    if signature is None:
        if DEFAULT_SIGNATURE in sigs:
            signature = DEFAULT_SIGNATURE
        elif len(sigs) == 1:
            signature = next(iter(sigs))
        elif not sigs:
            raise ModelLoadError(
                f"{folder} has no signature to convert (tags {chosen_tags}); save it with "
                f"tf.saved_model.save(obj, folder, signatures=fn) or Keras's model.export(folder)")
        else:
            raise ModelLoadError(f"{folder} has {len(sigs)} signatures and none is "
                                 f"{DEFAULT_SIGNATURE!r}: {_listing(sigs)}; pass signature='...'")
    if signature not in sigs:
        raise ModelLoadError(f"{folder} has no signature {signature!r}; its signatures are "
                             f"{_listing(sigs) or 'none'}")
    return chosen_tags, signature, sigs[signature]


def _listing(sigs: dict[str, Any]) -> str:
    return "; ".join(f"{k!r} (inputs {sorted(v.inputs)}, outputs {sorted(v.outputs)})"
                     for k, v in sorted(sigs.items()))


def load(tf: Any, folder: Path, shapes: Optional[ShapeMap], tags: Optional[Sequence[str]],
         signature: Optional[str]) -> Traced:
    """The frozen graph of one signature of the SavedModel in ``folder``."""
    label = str(folder)
    tf_loader = require("tf2onnx.tf_loader", label)
    proto = _read(folder)
    chosen_tags, key, _sig = _choose(folder, proto, tags, signature)
    try:
        graph_def, inputs, outputs, _tables, renames = tf_loader.from_saved_model(
            str(folder), None, None, chosen_tags, [key], return_initialized_tables=True,
            return_tensors_to_rename=True)
    except Exception as e:  # noqa: BLE001 - TensorFlow raises many kinds; each becomes one message here
        text = [line for line in str(e).strip().splitlines() if line.strip()]
        raise ModelLoadError(f"TensorFlow could not load the SavedModel {label} (signature {key!r}): "
                             f"{type(e).__name__}: {text[0][:400] if text else ''}. Check that the folder "
                             f"is complete (saved_model.pb and variables/)") from e
    names = {t: renames.get(t, t.split(":")[0]) for t in list(inputs) + list(outputs)}
    by_name = {names[t]: t for t in inputs}
    check_shape_names(shapes, list(by_name), f"{label} (signature {key!r})")
    override = {by_name[n]: [d if isinstance(d, int) and not isinstance(d, bool) else -1 for d in dims]
                for n, dims in (shapes or {}).items() if n in by_name}
    return Traced(graph_def, list(inputs), list(outputs), names, f"{label} (signature {key!r})",
                  "SavedModel", "tensorflow", shape_override=override)
