"""Reading an ONNX model: a path, bytes or a ModelProto, with external data files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from ember.errors import ModelLoadError

ModelLike = Union[str, os.PathLike[str], bytes, onnx.ModelProto]


def load_model(model: ModelLike) -> tuple[onnx.ModelProto, str]:
    """Returns the parsed model (external data loaded) and a label naming where it came from."""
    if isinstance(model, onnx.ModelProto):
        label = "<onnx.ModelProto>"
        proto = model
        base = Path.cwd()
    elif isinstance(model, (bytes, bytearray)):
        label = "<bytes>"
        proto = _parse(bytes(model), label)
        base = Path.cwd()
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(path)
        if not path.is_file():
            raise ModelLoadError(f"ONNX model file {label} does not exist (or is not a file); "
                                 f"check the path")
        proto = _parse(path.read_bytes(), label)
        base = path.resolve().parent
    else:
        raise ModelLoadError(f"cannot import a model given as {type(model).__name__}; pass a path, "
                             f"the file's bytes, or an onnx.ModelProto")
    return _load_external_data(proto, base, label), label


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{label} is not a valid ONNX model ({type(e).__name__}: {e}); the file is truncated "
            f"or not an ONNX protobuf. Re-export or re-download it") from None
    if not proto.graph.node and not proto.graph.output and not proto.opset_import:
        raise ModelLoadError(f"{label} parsed as an empty ONNX model (no graph, no opset); it is "
                             f"probably not an ONNX file. Re-export or re-download it")
    return proto


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = []
    for t in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(t):
            out.append(t)
    return out


def _load_external_data(proto: onnx.ModelProto, base: Path, label: str) -> onnx.ModelProto:
    """Loads tensors stored in side files, relative to the model file's folder.

    Works on a copy when the model has external tensors, so a caller's ModelProto is untouched.
    """
    if not _external_tensors(proto):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    proto = copy
    tensors = _external_tensors(proto)
    for t in tensors:
        info = external_data_helper.ExternalDataInfo(t)
        data_path = (base / info.location).resolve()
        if not data_path.is_file():
            raise ModelLoadError(
                f"{label} keeps tensor {t.name!r} in the external data file {info.location!r}, "
                f"which is missing (looked in {base}). Put the data file next to the model file"
                + ("; when passing bytes or a ModelProto, pass the model's path instead"
                   if label.startswith("<") else ""))
        size = data_path.stat().st_size
        end = (info.offset or 0) + (info.length or 0)
        if info.length and end > size:
            raise ModelLoadError(
                f"external data file {data_path} is truncated: tensor {t.name!r} needs bytes up "
                f"to {end} but the file has {size}; re-export the model")
    try:
        external_data_helper.load_external_data_for_model(proto, str(base))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read external data of {label} from {base}: {e}") from None
    return proto
