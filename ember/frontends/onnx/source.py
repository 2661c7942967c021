"""The ONNX frontend's entry in ``ember.frontends.load``'s table: recognizing an ONNX source and
importing it. Nothing here imports onnx until a model is imported (``import ember.frontends``
stays light); an ``onnx.ModelProto`` can only exist once onnx is imported, so it is recognized
through ``sys.modules``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.sniff import LEN, VARINT, file_message_fields, message_fields
from ember.ir.graph import Graph

NAME = "onnx"
SUFFIXES = (".onnx",)
ACCEPTS = "an ONNX model: a .onnx file path, the file's bytes, or an onnx.ModelProto"

#: ModelProto's fields and their wire types (onnx.proto: ir_version = 1, opset_import = 8, ...).
_MODEL_FIELDS = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN,
                 20: LEN, 25: LEN, 26: LEN}
_GRAPH, _OPSET_IMPORT = 7, 8


def _is_model(fields: Optional[dict[int, int]]) -> bool:
    """A message with a graph or an opset list, and only ModelProto's fields (right wire types)."""
    if not fields or (_GRAPH not in fields and _OPSET_IMPORT not in fields):
        return False
    return all(_MODEL_FIELDS.get(number) == wire for number, wire in fields.items())


def recognizes(source: object) -> bool:
    """An ``onnx.ModelProto``, or bytes holding a serialized one."""
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(source, onnx.ModelProto):
        return True
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _is_model(message_fields(source))
    return False


def sniffs(path: Path) -> bool:
    """A file (of any suffix) whose content is a serialized ModelProto."""
    return path.is_file() and _is_model(file_message_fields(path))


def load(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """``import_onnx(source, shapes)``; the ONNX frontend takes no other options."""
    if options:
        raise ModelLoadError(f"the ONNX frontend takes no option(s) {', '.join(sorted(options))}; "
                             f"its only option is shapes={{input: dims}}")
    from ember.frontends.onnx.importer import import_onnx

    return import_onnx(source, shapes=shapes)
