"""Reading Caffe's two files: the network definition (protobuf text, ``deploy.prototxt``) and
the trained weights (protobuf binary, ``.caffemodel``), with errors that name the file, the line
or the layer at fault.

Weights are looked up by layer name, as Caffe's ``Net::CopyTrainedLayersFrom`` does: a layer of
the network takes the blobs of the caffemodel's layer of the same name (from ``layer`` or, in old
files, ``layers``), whatever else the caffemodel holds.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ember.errors import ModelLoadError
from ember.frontends.caffe import caffe_pb2

#: What a network or weights source may be: a path, the file's content, or a parsed NetParameter.
NetSource = Union[str, "os.PathLike[str]", bytes, Any]

#: A caffemodel's layer name -> its blobs as float32 arrays with their shapes, and whether each
#: shape came from the old 4-D fields (num, channels, height, width).
WeightTable = dict[str, list["Blob"]]


@dataclass(frozen=True)
class Blob:
    """One parameter blob of a trained layer."""

    array: np.ndarray
    legacy: bool  # the shape is the old 4-D (num, channels, height, width)


def _is_net(obj: object) -> bool:
    return isinstance(obj, caffe_pb2.NetParameter)


def read_net(source: NetSource) -> tuple[Any, str]:
    """The network definition (a ``caffe_pb2.NetParameter``) and a label naming it.

    ``source``: a prototxt path, its text (``str`` holding a newline or a brace, or ``bytes``), or a
    ``NetParameter``. A prototxt that does not parse is a ``ModelLoadError`` naming the file, the
    line and the column.
    """
    if _is_net(source):
        return source, "<caffe NetParameter>"
    if isinstance(source, (bytes, bytearray)):
        return _parse_text(bytes(source).decode("utf-8", errors="replace"), "<prototxt text>"), "<prototxt text>"
    if isinstance(source, str) and ("\n" in source or "{" in source):
        return _parse_text(source, "<prototxt text>"), "<prototxt text>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"Caffe network file {path} does not exist (or is not a file); "
                                 f"check the path")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ModelLoadError(f"cannot read Caffe network file {path}: {e}") from None
        return _parse_text(text, str(path)), str(path)
    raise ModelLoadError(f"cannot read a Caffe network given as {type(source).__name__}; pass the "
                         f"deploy .prototxt's path, its text, or a caffe NetParameter")


_POSITION = re.compile(r"^\s*(\d+):(\d+)\s*:\s*")


def _parse_text(text: str, label: str) -> Any:
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise _parse_error(text, label, e) from None
    if not net.layer and not net.layers and not net.input:
        raise ModelLoadError(f"{label} parsed as a Caffe network with no layers and no inputs; it "
                             f"is not a Caffe network definition (a deploy.prototxt)")
    return net


def _parse_error(text: str, label: str, e: text_format.ParseError) -> ModelLoadError:
    message = str(e)
    m = _POSITION.match(message)
    line = getattr(e, "GetLine", lambda: None)() or (int(m.group(1)) if m else None)
    column = getattr(e, "GetColumn", lambda: None)() or (int(m.group(2)) if m else None)
    message = _POSITION.sub("", message).rstrip(".")
    where = f"{label}:{line}:{column}" if line else label
    hint = ("check the spelling and the nesting of braces; Ember reads networks written for BVLC "
            "Caffe's caffe.proto (and the SSD fork's layers)")
    field = re.search(r'has no field named "([^"]+)"', message)
    if field:
        hint = (f"{field.group(1)!r} is not a field of BVLC Caffe's caffe.proto (nor of the SSD "
                f"fork's); a misspelling, or a parameter of a Caffe fork Ember does not read")
    excerpt = ""
    if line:
        lines = text.splitlines()
        if 0 < line <= len(lines):
            excerpt = f"\n    {lines[line - 1].strip()}"
    return ModelLoadError(f"{where}: the Caffe network does not parse: {message}; {hint}{excerpt}")


def read_weights(source: NetSource) -> tuple[WeightTable, str]:
    """The trained blobs by layer name, and a label naming the weights file.

    ``source``: a ``.caffemodel`` path, its bytes, or a ``NetParameter`` holding blobs.
    """
    if _is_net(source):
        return _table(source, "<caffe NetParameter>"), "<caffe NetParameter>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _table(_parse_binary(bytes(source), "<caffemodel bytes>"), "<caffemodel bytes>"), "<caffemodel bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"Caffe weights file {path} does not exist (or is not a file); "
                                 f"check the path")
        if path.suffix.lower() in (".prototxt", ".pbtxt", ".txt"):
            raise ModelLoadError(f"{path} looks like a network definition, not weights; pass the "
                                 f"network as the model and the trained .caffemodel as weights=")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read Caffe weights file {path}: {e}") from None
        return _table(_parse_binary(data, str(path)), str(path)), str(path)
    raise ModelLoadError(f"cannot read Caffe weights given as {type(source).__name__}; pass the "
                         f".caffemodel's path, its bytes, or a caffe NetParameter")


def _parse_binary(data: bytes, label: str) -> Any:
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        hint = (" (it is text: a prototxt? The weights are the binary .caffemodel)"
                if data[:200].lstrip()[:1].isalpha() else "")
        raise ModelLoadError(f"{label} is not a Caffe weights file ({type(e).__name__}: {e}){hint}; "
                             f"the file is truncated or not a .caffemodel") from None
    if not net.layer and not net.layers:
        raise ModelLoadError(f"{label} parsed as a Caffe model with no layers; it is not a "
                             f".caffemodel (or it holds no trained layers)")
    return net


def _table(net: Any, label: str) -> WeightTable:
    table: WeightTable = {}
    for layer in list(net.layer) + list(net.layers):
        if layer.name in table and table[layer.name]:
            continue  # Caffe copies from the first layer of a name that has blobs
        table[layer.name] = [_blob(b, label, layer.name, i) for i, b in enumerate(layer.blobs)]
    return table


def _blob(b: Any, label: str, layer: str, index: int) -> Blob:
    legacy = not b.HasField("shape")
    if legacy:
        shape = tuple(int(d) for d in (b.num, b.channels, b.height, b.width))
    else:
        shape = tuple(int(d) for d in b.shape.dim)
    if len(b.data):
        values = np.asarray(b.data, dtype=np.float32)
    elif len(b.double_data):
        values = np.asarray(b.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.zeros(0, np.float32)
    count = math.prod(shape)
    if values.size != count:
        raise ModelLoadError(f"{label}: blob {index} of layer {layer!r} holds {values.size} values but "
                             f"its shape {list(shape)} needs {count}; the weights file is damaged")
    return Blob(values.reshape(shape), legacy)


def legacy_matches(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Caffe's rule for old 4-D blob shapes: ``expected`` padded to 4 dims with leading 1s."""
    return len(expected) <= 4 and tuple([1] * (4 - len(expected)) + list(expected)) == found


def format_dims(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def optional_path(source: Optional[NetSource]) -> Optional[NetSource]:
    """``None`` stays ``None``; an empty string is an error a person can act on."""
    if isinstance(source, str) and not source:
        raise ModelLoadError("weights='' names no file; pass the .caffemodel's path")
    return source
