"""More hostile requests (issue 17): generated kinds over gRPC (every field of a ModelInferRequest
given hostile values, byte-level mutations of good messages) and HTTP (headers, methods, paths,
binary bodies cut and altered), on the server of ``test_hostile`` (small limits, model control with
a token). Every answer is a client error or a correct answer; the good requests interleaved with
them stay correct. ``test_the_suite_has_500_kinds_per_protocol`` counts the kinds of both files.

The gRPC cases run again through a gRPC front-end process in ``test_hostile_relay``.
"""
from __future__ import annotations

import json
import random

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from servekit import reference

# isort: split
from test_hostile import (  # noqa: F401 - fixtures of the hostile server, shared
    BYTE_MUTATIONS,
    GARBAGE,
    GOOD,
    ISSUE_CASES,
    LIMITS,
    TABLE,
    X,
    _raw_stub,
    assert_client_error,
    channel,
    gclient,
    generated_http_cases,
    good_grpc,
    good_http,
    grpc_cases,
    http,
    srv,
)

CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


# ---- gRPC: every field given hostile values -------------------------------------------------------
def _good_request() -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="simple", id="good")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.array(X, np.float32).tobytes())
    return req


HOSTILE_STRINGS = ["", " ", "x" * 5000, "../../etc/passwd", "simple\x00", "SIMPLE", "%2e%2e", "\u202e", "🙂",
                   "simple/1", "\x7f", "1e3", "-1", "0", "99999999999999999999", "١"]
HOSTILE_SHAPES = [[], [0], [0, 4], [1], [4], [1, 4, 1], [2, 4], [1, 3], [1, 5], [-1, 4], [1, -4], [2**31, 4],
                  [2**62, 2**62], [0, 2**62], [1] * 9, [1] * 100, [8, 4], [9, 4], [100_001, 1], [-2**63, 4]]
PARAMETER_KEYS = ["timeout", "sequence_id", "sequence_start", "priority", "binary_data_output", "binary_data_size",
                  "shared_memory_region", "shared_memory_byte_size", "classification", "unknown_key", ""]


def _param_values() -> list[tuple[str, object]]:
    return [("bool_param", True), ("bool_param", False), ("int64_param", -1), ("int64_param", 2**63 - 1),
            ("int64_param", 0), ("string_param", "soon"), ("string_param", "x" * 2000), ("double_param", float("nan")),
            ("double_param", -1e308), ("uint64_param", 2**64 - 1)]


def generated_grpc_cases() -> list[tuple[str, bytes]]:
    """(kind, serialized ModelInferRequest): every field of a good request replaced in turn."""
    cases: list[tuple[str, service_pb2.ModelInferRequest]] = []

    def variant(name: str, change) -> None:
        req = _good_request()
        change(req)
        cases.append((name, req))

    for value in HOSTILE_STRINGS:
        variant(f"model_name={value[:20]!r}", lambda r, v=value: setattr(r, "model_name", v))
        variant(f"model_version={value[:20]!r}", lambda r, v=value: setattr(r, "model_version", v))
        variant(f"input name={value[:20]!r}", lambda r, v=value: setattr(r.inputs[0], "name", v))
        variant(f"input datatype={value[:20]!r}", lambda r, v=value: setattr(r.inputs[0], "datatype", v))
        variant(f"output name={value[:20]!r}", lambda r, v=value: r.outputs.add(name=v))
    for dt in ("FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BF16", "BYTES", "fp32", "FP8"):
        variant(f"datatype {dt}", lambda r, d=dt: setattr(r.inputs[0], "datatype", d))
    for shape in HOSTILE_SHAPES:
        def reshape(r, s=shape):
            del r.inputs[0].shape[:]
            r.inputs[0].shape.extend(s)
        variant(f"shape {shape[:6]}", reshape)
    for key in PARAMETER_KEYS:
        for field, value in _param_values():
            variant(f"parameters[{key!r}].{field}={value!r:.20}",
                    lambda r, k=key, f=field, v=value: setattr(r.parameters[k], f, v))
            variant(f"input parameters[{key!r}].{field}={value!r:.20}",
                    lambda r, k=key, f=field, v=value: setattr(r.inputs[0].parameters[k], f, v))
            variant(f"output parameters[{key!r}].{field}={value!r:.20}",
                    lambda r, k=key, f=field, v=value: setattr(r.outputs.add(name="y").parameters[k], f, v))
    for size in (0, 1, 15, 17, 32, 4096):
        variant(f"raw bytes {size}", lambda r, n=size: r.raw_input_contents.__setitem__(0, b"\x01" * n))
    contents = {"bool_contents": [True] * 4, "int_contents": [1] * 4, "int64_contents": [1] * 4,
                "uint_contents": [1] * 4, "uint64_contents": [1] * 4, "fp32_contents": [1.0] * 4,
                "fp64_contents": [1.0] * 4, "bytes_contents": [b"ab"] * 4}
    for field, values in contents.items():
        for keep_raw in (True, False):
            for count in (4, 3, 40):
                def fill(r, f=field, v=values, keep=keep_raw, n=count):
                    getattr(r.inputs[0].contents, f).extend((v * 10)[:n])
                    if not keep:
                        del r.raw_input_contents[:]
                variant(f"contents.{field} x{count} raw={keep_raw}", fill)
    variant("two inputs, one raw", lambda r: r.inputs.add(name="y", datatype="FP32", shape=[1, 4]))
    variant("input named twice", lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1, 4]),
                                            r.raw_input_contents.append(b"\0" * 16)))
    variant("three raw contents", lambda r: r.raw_input_contents.extend([b"\0" * 16] * 2))
    variant("no inputs", lambda r: (r.ClearField("inputs"), r.ClearField("raw_input_contents")))
    variant("output asked twice", lambda r: (r.outputs.add(name="y"), r.outputs.add(name="y")))
    variant("gather index 2**62", lambda r: (setattr(r, "model_name", "gather"), r.ClearField("inputs"),
                                             r.ClearField("raw_input_contents"),
                                             r.inputs.add(name="ids", datatype="INT64", shape=[1, 2]),
                                             r.raw_input_contents.append(np.array([[0, 2**62]], np.int64).tobytes())))
    return [(name, req.SerializeToString()) for name, req in cases]


def mutated_grpc_messages(seed: int = 17) -> list[tuple[str, bytes]]:
    """A good message cut at every length, and bytes of it replaced, inserted and repeated."""
    good = _good_request().SerializeToString()
    rng = random.Random(seed)
    out = [(f"cut at {n}", good[:n]) for n in range(1, len(good))]
    for pos in range(len(good)):
        for byte in (0x00, 0xFF, 0x80):
            if good[pos] != byte:
                out.append((f"byte {pos} = {byte:#x}", good[:pos] + bytes([byte]) + good[pos + 1:]))
    for _ in range(40):
        pos = rng.randrange(len(good))
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        out.append((f"insert {junk.hex()} at {pos}", good[:pos] + junk + good[pos:]))
    out += [("good twice", good * 2), ("a varint of 11 bytes", b"\x08" + b"\xff" * 10 + b"\x01"),
            ("a length past the end", b"\x0a\x7fsimple"), ("group start tag", b"\x0b"), ("field 0", b"\x00\x01"),
            ("a field number 2**29", b"\xf8\xff\xff\xff\x0f\x01")]
    return out


def _check_grpc_answer(name: str, blob: bytes, call) -> None:
    """An OK answer must be right for the request as the server read it; an error a client's."""
    try:
        raw = call(blob)
    except grpc.RpcError as exc:
        assert exc.code() in CLIENT_CODES, (name, exc.code(), exc.details()[:300])
        assert "Traceback" not in exc.details() and "internal error" not in exc.details(), (name, exc.details())
        return
    req = service_pb2.ModelInferRequest.FromString(blob)
    resp = service_pb2.ModelInferResponse.FromString(raw)
    if req.model_name == "simple" and not req.outputs:
        x = np.frombuffer(req.raw_input_contents[0], np.float32).reshape(tuple(req.inputs[0].shape)) \
            if req.raw_input_contents else np.array(req.inputs[0].contents.fp32_contents, np.float32).reshape(
                tuple(req.inputs[0].shape))
        y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(tuple(resp.outputs[0].shape))
        np.testing.assert_allclose(y, reference(x), rtol=1e-5, err_msg=name)
    elif req.model_name == "gather":
        ids = np.frombuffer(req.raw_input_contents[0], np.int64).reshape(tuple(req.inputs[0].shape))
        y = np.frombuffer(resp.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(y.reshape(ids.shape + (3,)), TABLE[ids], err_msg=name)


def test_generated_malformed_grpc_requests_are_client_errors_and_good_ones_stay_correct(channel, gclient):  # noqa: F811
    stub = _raw_stub(channel)
    cases = generated_grpc_cases()
    for i, (name, blob) in enumerate(cases):
        _check_grpc_answer(name, blob, stub)
        if i % 20 == 0:
            good_grpc(gclient)
    assert len(cases) > 400
    good_grpc(gclient)


def test_mutated_grpc_messages_are_client_errors_or_right_answers(channel, gclient):  # noqa: F811
    stub = _raw_stub(channel)
    for i, (name, blob) in enumerate(mutated_grpc_messages()):
        _check_grpc_answer(name, blob, stub)
        if i % 20 == 0:
            good_grpc(gclient)
    good_grpc(gclient)


def test_other_rpcs_with_hostile_names_are_client_errors(channel, gclient):  # noqa: F811
    requests = {"ModelMetadata": service_pb2.ModelMetadataRequest, "ModelConfig": service_pb2.ModelConfigRequest,
                "ModelReady": service_pb2.ModelReadyRequest, "ModelStatistics": service_pb2.ModelStatisticsRequest}
    for method, cls in requests.items():
        stub = _raw_stub(channel, method)
        for value in HOSTILE_STRINGS:
            for field in ("name", "version"):
                blob = cls(**{"name": "simple", field: value}).SerializeToString()
                try:
                    stub(blob)
                except grpc.RpcError as exc:
                    assert exc.code() in CLIENT_CODES, (method, field, value[:20], exc.code(), exc.details()[:200])
    for method in ("RepositoryModelLoad", "RepositoryModelUnload"):  # no token: refused, whatever the body
        stub = _raw_stub(channel, method)
        for value in HOSTILE_STRINGS[:6]:
            with pytest.raises(grpc.RpcError) as info:
                stub(service_pb2.RepositoryModelLoadRequest(model_name=value).SerializeToString())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    good_grpc(gclient)


# ---- HTTP: headers, methods, paths, binary bodies ----------------------------------------------------
def _binary_request() -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    return header + np.array(X, np.float32).tobytes(), len(header)


HEADER_CASES: list[tuple[str, dict]] = [
    *[(f"Inference-Header-Content-Length {v!r}", {"Inference-Header-Content-Length": v})
      for v in ("", "abc", "-5", "0", "1", "99999999999999999999", "1e3", "+12", "0x10", "9" * 400)],
    *[(f"Content-Encoding {v!r}", {"Content-Encoding": v})
      for v in ("gzip, gzip", "identity", "GZIP", "x-gzip", "compress", "zstd", "gzip;q=1", "deflate, br", "gzip;")],
    *[(f"Content-Type {v!r}", {"Content-Type": v})
      for v in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                "application/json; charset=latin-1")],
    *[(f"Accept-Encoding {v!r}", {"Accept-Encoding": v}) for v in ("gzip;q=abc", "*;q=0", "x" * 4000)],
]
PATHS = ["/v2/models/simple/versions/0/infer", "/v2/models/simple/versions/-1/infer",
         "/v2/models/simple/versions/abc/infer", "/v2/models/simple/versions/1.0/infer",
         "/v2/models/simple/versions/%00/infer", "/v2/models/simple%00/infer", "/v2/models/" + "a" * 8000 + "/infer",
         "/v2/models//infer", "/v2/models/simple/infer/", "/v2//models/simple/infer",
         "/v2/models/%2e%2e/%2e%2e/infer", "/v2/models/simple/versions/99999999999999999999/infer",
         "/v2/models/simple/versions/1/infer/extra", "/v2/models/simple/versions/١/infer"]


def test_hostile_headers_are_4xx_or_right_answers(http):  # noqa: F811
    body, header_len = _binary_request()
    for name, headers in HEADER_CASES:
        for payload, extra in ((json.dumps(GOOD).encode(), {}),
                               (body, {"Inference-Header-Content-Length": str(header_len)})):
            r = http.post("/v2/models/simple/infer", content=payload, headers={**extra, **headers})
            if r.status_code == 200:
                continue  # harmless (an identity encoding, an Accept-Encoding it ignores...)
            assert_client_error(r, name)
    good_http(http)


def test_hostile_methods_and_paths_are_4xx(http):  # noqa: F811
    for path in PATHS:
        assert_client_error(http.post(path, json=GOOD), path[:80])
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        assert_client_error(http.request(method, "/v2/models/simple/infer", json=GOOD), method)
    good_http(http)


def test_binary_bodies_cut_and_altered_are_4xx_or_right_answers(http):  # noqa: F811
    body, header_len = _binary_request()
    headers = {"Inference-Header-Content-Length": str(header_len)}
    variants = [(f"cut at {n}", body[:n]) for n in range(0, len(body), 3)]
    variants += [(f"header length {d:+d}", body) for d in (-1, 1, 16, -header_len)]
    for name, payload in variants:
        extra = headers
        if name.startswith("header length"):
            extra = {"Inference-Header-Content-Length": str(header_len + int(name.split()[-1]))}
        r = http.post("/v2/models/simple/infer", content=payload, headers=extra)
        if r.status_code == 200:  # only the whole body can answer
            assert payload == body and extra == headers, name
            continue
        assert_client_error(r, name)
    good_http(http)


# ---- the count ----------------------------------------------------------------------------------------
def grpc_kinds() -> int:
    return (len(grpc_cases()) + len(GARBAGE) * 4 + len(generated_grpc_cases()) + len(mutated_grpc_messages())
            + 4 * len(HOSTILE_STRINGS) * 2 + 2 * 6)


def http_kinds() -> int:
    body, _ = _binary_request()
    return (len(ISSUE_CASES) + len(generated_http_cases()) + len(BYTE_MUTATIONS) * 6 + 5
            + len(HEADER_CASES) * 2 + len(PATHS) + 5 + len(range(0, len(body), 3)) + 4)


def test_the_suite_has_500_kinds_per_protocol():
    assert grpc_kinds() >= 500 and http_kinds() >= 500, (grpc_kinds(), http_kinds())
    assert LIMITS.max_body_bytes == 2**20  # the limits every kind above meets
