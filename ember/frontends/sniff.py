"""Telling a model's format from its bytes, without the format's library.

``load`` must recognize a source before it imports the frontend that reads it (``import
ember.frontends`` does not import onnx, and a later TensorFlow or Caffe frontend must not pull
in its library just to say "not mine"). Several formats are protobuf messages (ONNX models,
TensorFlow GraphDefs, Caffe weights), so the check here walks a message's top-level fields: tags
and lengths only, skipping every payload, which costs a few reads even for a model of gigabytes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Optional

#: Protobuf wire types: varint, 64-bit, length-delimited, 32-bit (groups, 3 and 4, are obsolete).
VARINT, I64, LEN, I32 = 0, 1, 2, 5

#: Top-level fields walked at most; a real model has a few dozen.
MAX_FIELDS = 1_000_000


def _varint(f: BinaryIO) -> Optional[int]:
    value, shift = 0, 0
    for _ in range(10):
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    return None


def protobuf_fields(f: BinaryIO, size: int) -> Optional[dict[int, int]]:
    """``{field number: wire type}`` of the top-level fields of the protobuf message in ``f``
    (``size`` bytes from its current position), or None when the bytes cannot be one message:
    a field number 0, an unknown wire type, one field with two wire types, a length that runs
    past the end, or a last field that stops short of it."""
    start = f.tell()
    end = start + size
    seen: dict[int, int] = {}
    for _ in range(MAX_FIELDS):
        if f.tell() == end:
            return seen
        tag = _varint(f)
        if tag is None or tag >> 3 == 0:
            return None
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            skip = 0 if _varint(f) is not None else -1
        elif wire == LEN:
            length = _varint(f)
            skip = -1 if length is None else length
        elif wire in (I64, I32):
            skip = 8 if wire == I64 else 4
        else:
            return None
        if skip < 0 or f.tell() + skip > end or seen.setdefault(number, wire) != wire:
            return None
        f.seek(skip, io.SEEK_CUR)
    return None


def message_fields(data: bytes | bytearray | memoryview) -> Optional[dict[int, int]]:
    """``protobuf_fields`` of an in-memory message."""
    view = memoryview(data)
    return protobuf_fields(io.BytesIO(view), view.nbytes)


def file_message_fields(path: Path) -> Optional[dict[int, int]]:
    """``protobuf_fields`` of a file's content (None for an unreadable file too)."""
    try:
        with path.open("rb") as f:
            return protobuf_fields(f, path.stat().st_size)
    except OSError:
        return None
