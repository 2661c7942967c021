"""The KServe v2 HTTP inference body: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's length is
the ``Inference-Header-Content-Length`` HTTP header, and each binary input says its size in
``parameters.binary_data_size`` (inputs take consecutive slices, in order). Outputs go back as
binary when the output's ``parameters.binary_data`` or the request's ``binary_data_output`` asks
for it (``tritonclient.http`` does by default), otherwise as JSON ``data``.

Non-finite numbers in JSON ``data`` are written as Triton writes them (RapidJSON with NaN and Inf
allowed): the bare tokens ``NaN``, ``Infinity`` and ``-Infinity``. Python's ``json`` (so
``tritonclient.http``) reads them back as NaN and infinities; JSON inputs may hold them too.
"""
from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ember.serve.core import parse_timeout
from ember.serve.datatypes import KSERVE_TO_NUMPY, UNSUPPORTED, from_numpy
from ember.serve.errors import BadRequestError, PayloadTooLargeError, bounded, safe_text
from ember.serve.limits import DEFAULT_LIMITS, Limits, json_depth_exceeds

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class HttpInferRequest:
    """A decoded inference request."""

    id: Optional[str]
    feeds: dict[str, np.ndarray]
    requested: Optional[list[str]]
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    timeout_us: Optional[int] = None


def decompress(body: bytes, encoding: Optional[str], limit: int = Limits.max_decompressed_bytes) -> bytes:
    """Undoes a request's ``Content-Encoding`` (gzip or deflate, as tritonclient sends them),
    refusing (413) as soon as the inflated data passes ``limit`` bytes: a small bomb never
    becomes a large buffer."""
    enc = (encoding or "").strip().lower()
    if not enc or enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise BadRequestError(f"unsupported Content-Encoding {safe_text(encoding, 60)}; send gzip, "
                              f"deflate or none")
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    out = bytearray()
    data: bytes = body
    try:
        while True:  # gzip allows several members one after another
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                chunk = inflater.decompress(data, limit - len(out) + 1)  # max_length >= 1
                out += chunk
                if len(out) > limit:
                    raise PayloadTooLargeError(
                        f"the request body inflates to more than {limit} bytes, the server's limit "
                        f"(--max-decompressed-mb)")
                data = inflater.unconsumed_tail
                if not chunk and not data:
                    raise BadRequestError(f"the request body is truncated {enc} data")
            data = inflater.unused_data
            if enc != "gzip" or not data:
                return bytes(out)
    except zlib.error as exc:
        raise BadRequestError(f"the request body is not valid {enc} data: {exc}") from None


def decode_infer(body: bytes, header_length: Optional[str], limits: Limits = DEFAULT_LIMITS) -> HttpInferRequest:
    """Parses an inference request body; ``BadRequestError`` names what is malformed."""
    size = _header_size(header_length, len(body))
    view = memoryview(body)
    header = _json_header(bytes(view[:size]), limits.max_json_depth)
    params = _mapping(header.get("parameters", {}), "the request's parameters")
    _refuse_unsupported(params, "request")
    feeds: dict[str, np.ndarray] = {}
    offset = size
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError("the request has no 'inputs' list; give at least one input tensor")
    for item in inputs:
        name, array, used = _decode_input(item, view, offset, limits)
        if name in feeds:
            raise BadRequestError(f"input '{name}' appears twice in the request")
        feeds[name] = array
        offset += used
    if offset != len(body):
        raise BadRequestError(f"the request body has {len(body) - offset} bytes after the last binary "
                              f"input; binary_data_size of the inputs must add up to the binary part")
    requested, binary = _decode_outputs(header.get("outputs"))
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequestError(f"parameter 'binary_data_output' must be true or false, got {binary_default!r}")
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequestError(f"the request's 'id' must be a string, got {safe_text(rid, 60)}")
    return HttpInferRequest(id=rid, feeds=feeds, requested=requested,
                            binary_outputs=binary, binary_default=binary_default,
                            timeout_us=parse_timeout(params.get("timeout")))


def _header_size(header_length: Optional[str], total: int) -> int:
    if header_length is None:
        return total
    try:
        size = int(header_length)
    except ValueError:
        raise BadRequestError(f"{HEADER_LENGTH} must be an integer, got {safe_text(header_length, 60)}") from None
    if not 0 < size <= total:
        raise BadRequestError(f"{HEADER_LENGTH} is {size} but the body has {total} bytes")
    return size


def _json_header(raw: bytes, max_depth: int = Limits.max_json_depth) -> dict:
    try:
        header = json.loads(raw)
    except RecursionError:
        header = None
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request's JSON is malformed: {bounded(str(exc), 160)}") from None
    else:
        deep = json_depth_exceeds(header, max_depth)
    if deep:
        raise BadRequestError(f"the request's JSON nests deeper than {max_depth} levels, the server's "
                              f"limit (--max-json-depth)")
    if not isinstance(header, dict):
        raise BadRequestError(f"the request's JSON must be an object with 'inputs', got {type(header).__name__}")
    return header


def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object, got {safe_text(value)}")
    return value


def _refuse_unsupported(params: dict, where: str) -> None:
    if params.get("sequence_id") not in (None, 0, ""):
        raise BadRequestError(f"{where} parameter 'sequence_id': sequence batching is not supported")
    for key in ("shared_memory_region", "classification"):
        if key in params:
            raise BadRequestError(f"{where} parameter '{key}': this extension is not supported; send "
                                  f"tensor data in the request and read raw outputs")


def _decode_input(item: Any, view: memoryview, offset: int,
                  limits: Limits = DEFAULT_LIMITS) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise BadRequestError(f"every input must be an object with a 'name', got {safe_text(item)}")
    name = item["name"]
    shown = bounded(name, 100)
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequestError(f"input '{shown}' has datatype {safe_text(datatype, 60)}; give a string, "
                              f"one of {', '.join(KSERVE_TO_NUMPY)}")
    if datatype in UNSUPPORTED:
        raise BadRequestError(f"input '{shown}' has datatype {datatype}, which Ember models do not take")
    if datatype not in KSERVE_TO_NUMPY:
        raise BadRequestError(f"input '{shown}' has datatype {safe_text(datatype, 60)}; use one of "
                              f"{', '.join(KSERVE_TO_NUMPY)}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequestError(f"input '{shown}' has shape {safe_text(shape)}; give a list of "
                              f"non-negative ints")
    limits.check_shape(shown, shape)
    params = _mapping(item.get("parameters", {}), f"parameters of input '{shown}'")
    _refuse_unsupported(params, f"input '{shown}'")
    dtype = KSERVE_TO_NUMPY[datatype]
    count = math.prod(shape)
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        want = count * dtype.itemsize
        if isinstance(size, bool) or not isinstance(size, int):
            raise BadRequestError(f"input '{shown}' has binary_data_size {safe_text(size, 60)}; give a "
                                  f"whole number of bytes ({want} for shape {shape} of {datatype})")
        if size != want:
            raise BadRequestError(f"input '{shown}' has binary_data_size {size} but shape {shape} of "
                                  f"{datatype} needs {want} bytes")
        if offset + size > len(view):
            raise BadRequestError(f"input '{name}' needs {size} binary bytes but the body has only "
                                  f"{len(view) - offset} left")
        arr = np.frombuffer(view, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        return name, arr.astype(dtype, copy=False).reshape(shape), size
    if "data" not in item:
        raise BadRequestError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return name, json_tensor(name, datatype, shape, item["data"]), 0


_KINDS = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}


def json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested, row-major), checked against datatype and shape."""
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequestError(f"input '{name}': data is not a regular list of numbers: "
                              f"{bounded(str(exc), 160)}") from None
    allowed = _KINDS.get(datatype, "iu")
    if raw.size and raw.dtype.kind not in allowed:
        raise BadRequestError(f"input '{name}' is {datatype} but its data holds "
                              f"{'text' if raw.dtype.kind in 'UO' else raw.dtype.name} values")
    dtype = KSERVE_TO_NUMPY[datatype]
    if raw.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequestError(f"input '{name}' has values outside the range of {datatype}")
    if raw.size != math.prod(shape):
        raise BadRequestError(f"input '{name}' has {raw.size} values in data but shape {shape} needs "
                              f"{math.prod(shape)}")
    return raw.astype(dtype).reshape(shape)


def _decode_outputs(outputs: Any) -> tuple[Optional[list[str]], dict[str, bool]]:
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise BadRequestError(f"'outputs' must be a list of {{name, parameters}} objects, got {safe_text(outputs)}")
    names, binary = [], {}
    for o in outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequestError(f"every requested output must be an object with a 'name', got {safe_text(o)}")
        params = _mapping(o.get("parameters", {}), f"parameters of output '{o['name']}'")
        _refuse_unsupported(params, f"output '{o['name']}'")
        if "binary_data" in params:
            if not isinstance(params["binary_data"], bool):
                raise BadRequestError(f"output '{o['name']}' parameter binary_data must be true or false")
            binary[o["name"]] = params["binary_data"]
        names.append(o["name"])
    return names, binary


def encode_infer(model: str, version: str, request: HttpInferRequest,
                 outputs: dict[str, np.ndarray]) -> tuple[bytes, Optional[int]]:
    """The response body and, when it carries binary outputs, the JSON header's length."""
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs = []
    for name, arr in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": from_numpy(arr.dtype), "shape": list(arr.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        header["outputs"].append(entry)
    js = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return js, None
    return js + b"".join(blobs), len(js)


def compress(body: bytes, accept_encoding: Optional[str]) -> tuple[bytes, Optional[str]]:
    """Compresses a response when the client asked for gzip or deflate in ``Accept-Encoding``."""
    wanted = [e.split(";")[0].strip() for e in (accept_encoding or "").split(",")]
    if "gzip" in wanted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in wanted:
        return zlib.compress(body, 1), "deflate"
    return body, None
