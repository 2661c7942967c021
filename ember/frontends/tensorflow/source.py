"""The TensorFlow and Keras frontends' entries in ``ember.frontends.load``'s table.

Two rows: ``tensorflow`` (a SavedModel folder, a frozen GraphDef ``.pb``/``.pbtxt``, an in-memory
``tf.compat.v1.GraphDef``, a ``tf.function`` with an input signature or a concrete function) and
``keras`` (a ``.keras`` or ``.h5`` file, an in-memory ``keras.Model``). Nothing here imports
TensorFlow, Keras or h5py: a file is recognized by its suffix or its first bytes, an in-memory
object only when its library is already in ``sys.modules`` (such an object cannot exist
otherwise). The conversion itself is ``ember.frontends.tensorflow.convert``.
"""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

from ember.frontends.graph_builder import ShapeMap
from ember.frontends.sniff import LEN, VARINT, file_message_fields, message_fields, protobuf_fields
from ember.ir.graph import Graph

TF_NAME = "tensorflow"
TF_SUFFIXES = (".pb", ".pbtxt")
TF_ACCEPTS = ("a TensorFlow model: a SavedModel folder, a frozen graph (.pb / .pbtxt GraphDef), a "
              "tf.compat.v1.GraphDef, or a tf.function with an input_signature (or its concrete "
              "function); needs pip install 'ember[tensorflow]'")

KERAS_NAME = "keras"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
KERAS_ACCEPTS = ("a Keras model: a .keras or .h5 file, or a keras.Model; needs "
                 "pip install 'ember[tensorflow]'")

#: SavedModel's file names in its folder (binary and text protobuf).
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

#: GraphDef's fields (graph.proto: node = 1, library = 2, version = 3 (deprecated), versions = 4)
#: and NodeDef's (node_def.proto: name, op, input, device, attr, debug info, type: all strings or
#: messages). SavedModel's: saved_model_schema_version = 1 (int64), meta_graphs = 2.
_GRAPH_FIELDS = {1: LEN, 2: LEN, 3: VARINT, 4: LEN}
_NODE_FIELDS = {1: LEN, 2: LEN, 3: LEN, 4: LEN, 5: LEN, 6: LEN, 7: LEN}
_SAVED_MODEL_FIELDS = {1: VARINT, 2: LEN}

#: The first bytes of an HDF5 file (the superblock signature), as at the start of a Keras .h5.
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# ---- recognizing protobufs without TensorFlow ------------------------------------------------
def _fits(fields: Optional[dict[int, int]], table: dict[int, int]) -> bool:
    return bool(fields) and all(table.get(n) == w for n, w in (fields or {}).items())


def _first_node(f: io.BufferedIOBase | io.BytesIO) -> Optional[bytes]:
    """The payload of the message's first field when it is field 1, length-delimited (a
    GraphDef's first node), read from the start of ``f``; None otherwise."""
    f.seek(0)
    head = f.read(1)
    if head != bytes([(1 << 3) | LEN]):
        return None
    length, shift = 0, 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    payload = f.read(length)
    return payload if len(payload) == length else None


def _is_graph_def(fields: Optional[dict[int, int]], f: io.BufferedIOBase | io.BytesIO) -> bool:
    """GraphDef's fields only, nodes and versions present, and a first node that parses as a
    NodeDef with a name and an op (so another protobuf of similar field numbers is not taken)."""
    if not _fits(fields, _GRAPH_FIELDS) or 1 not in (fields or {}) or 4 not in (fields or {}):
        return False
    node = _first_node(f)
    node_fields = message_fields(node) if node is not None else None
    return _fits(node_fields, _NODE_FIELDS) and {1, 2} <= set(node_fields or {})


def is_saved_model_proto(fields: Optional[dict[int, int]]) -> bool:
    """A SavedModel message: a schema version and meta graphs, nothing else."""
    return _fits(fields, _SAVED_MODEL_FIELDS) and 2 in (fields or {})


def graph_def_bytes(data: bytes | bytearray | memoryview) -> bool:
    """Bytes holding a serialized GraphDef."""
    view = memoryview(data)
    return _is_graph_def(message_fields(view), io.BytesIO(view))


def _graph_def_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return _is_graph_def(protobuf_fields(f, path.stat().st_size), f)
    except OSError:
        return False


def saved_model_dir(path: Path) -> bool:
    """A folder holding ``saved_model.pb`` (or ``.pbtxt``)."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


# ---- the tensorflow row ------------------------------------------------------------------------
def _tf_object(source: object) -> bool:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    kinds: list[type] = []
    for path in ("compat.v1.GraphDef", "types.experimental.ConcreteFunction",
                 "types.experimental.PolymorphicFunction", "types.experimental.GenericFunction"):
        obj: Any = tf
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type):
            kinds.append(obj)
    return isinstance(source, tuple(kinds))


def tf_recognizes(source: object) -> bool:
    """A ``tf.compat.v1.GraphDef``, a ``tf.function`` or concrete function (once TensorFlow is
    imported), or bytes holding a serialized GraphDef."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return graph_def_bytes(source)
    return _tf_object(source)


def tf_sniffs(path: Path) -> bool:
    """A SavedModel folder, or a file (of any suffix) holding a GraphDef or a SavedModel proto."""
    if path.is_dir():
        return saved_model_dir(path)
    return path.is_file() and (_graph_def_file(path) or is_saved_model_proto(file_message_fields(path)))


def tf_load(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """The IR graph of a TensorFlow model (see ``ember.frontends.tensorflow``)."""
    from ember.frontends.tensorflow.convert import load_tensorflow

    return load_tensorflow(source, shapes=shapes, **options)


# ---- the keras row -----------------------------------------------------------------------------
def keras_recognizes(source: object) -> bool:
    """A ``keras.Model`` (Keras 3, or tf-keras), only once its library is imported."""
    for name in ("keras", "tf_keras"):
        keras = sys.modules.get(name)
        model = getattr(keras, "Model", None) if keras is not None else None
        if isinstance(model, type) and isinstance(source, model):
            return True
    return False


def keras_sniffs(path: Path) -> bool:
    """A file (of any suffix) that is a Keras v3 archive (a zip holding ``config.json`` and
    ``metadata.json``) or an HDF5 file (the format of Keras .h5 models)."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(len(HDF5_MAGIC))
        if head == HDF5_MAGIC:
            return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
        return {"config.json", "metadata.json"} <= names
    except (OSError, zipfile.BadZipFile):
        return False


def keras_load(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """The IR graph of a Keras model (see ``ember.frontends.tensorflow``)."""
    from ember.frontends.tensorflow.convert import load_keras

    return load_keras(source, shapes=shapes, **options)
