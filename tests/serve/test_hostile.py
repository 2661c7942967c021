"""Hostile requests (issue 17): every malformed request is a 4xx / INVALID_ARGUMENT for that
request alone, limits hold, batchmates of a bad request get their answers, internal errors carry
an id instead of their text, non-finite numbers survive JSON.

One server of small limits serves a matmul model and a Gather model with an INT64 index input;
hundreds of generated malformed requests go to it over HTTP and gRPC, each followed in turn by
checks that good requests still get correct answers. The whole file runs in a few seconds.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import gc
import gzip
import json
import logging
import re
import resource
import shutil
import zlib

import grpc
import httpx
import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from ember.serve import ServerOptions, ServerThread
from ember.serve.limits import Limits, MiB

from servekit import matmul_relu_model, reference, write_model

TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)
LIMITS = Limits(max_body_bytes=1 * MiB, max_decompressed_bytes=1 * MiB, grpc_max_message_bytes=1 * MiB,
                max_json_depth=32, max_input_dims=8, max_input_elements=100_000, max_queue_size=64)
TOKEN = "s3cret-token"


def gather_model() -> onnx.ModelProto:
    """y = TABLE[ids]: ids int64[batch, 2] (rows of a 4-row table), y float32[batch, 2, 3]."""
    ids = oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", 2])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2, 3])
    graph = oh.make_graph([oh.make_node("Gather", ["table", "ids"], ["y"], axis=0)], "gather", [ids], [y],
                          [onh.from_array(TABLE, "table")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def srv(tmp_path_factory, repository, cache_dir):
    root = tmp_path_factory.mktemp("hostile-repo")
    shutil.copytree(repository / "simple", root / "simple")
    write_model(root, "gather", gather_model(),
                "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 30000}\n")
    with ServerThread(ServerOptions(root, http_port=0, grpc_port=0, metrics_port=-1, cache_dir=cache_dir,
                                    limits=LIMITS, model_control_mode="explicit",
                                    model_control_token=TOKEN)) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def gclient(srv):
    c = tg.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def channel(srv):
    ch = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    yield ch
    ch.close()


X = [[1.0, -2.0, 3.0, 0.5]]
GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}


def good_http(http) -> None:
    r = http.post("/v2/models/simple/infer", json=GOOD)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4),
                               reference(np.array(X, np.float32)), rtol=1e-5)


def assert_client_error(r: httpx.Response, case: str = "") -> str:
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("error"), str) and 0 < len(body["error"]) < 1000, (case, r.text[:300])
    assert "Traceback" not in body["error"]
    return body["error"]


# ---- the cases of the issue ------------------------------------------------------------------
def _item(**changes) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X[0], **changes}]}


def _nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


ISSUE_CASES = {
    "zero dim beside a huge one": json.dumps(_item(shape=[0, 2**62], data=[])).encode(),
    "100 dims": json.dumps(_item(shape=[1] * 100, data=[1.0])).encode(),
    "json nested 2000 deep": _nested(2000),
    "json nested 40 deep (over --max-json-depth 32)": _nested(40),
    "datatype as a list": json.dumps(_item(datatype=["FP32"])).encode(),
    "datatype as an object": json.dumps(_item(datatype={"a": 1})).encode(),
    "binary_data_size as a float": None,  # built below: it needs a binary part
    "input named a lone surrogate": b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1, 4], '
                                    b'"data": [1, 2, 3, 4]}]}',
    "output named a lone surrogate": json.dumps({**_item(), "outputs": [{"name": "\ud800"}]}).encode(),
    "id a lone surrogate list": b'{"id": ["\\udfff"], "inputs": []}',
    "shape of 10**30": json.dumps(_item(shape=[10**30, 4])).encode(),
    "negative shape": json.dumps(_item(shape=[-1, 4])).encode(),
    "ragged data": json.dumps(_item(shape=[1, 4], data=[1, [2, [3]], 4])).encode(),
    "data with a huge int": json.dumps({"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 2],
                                                    "data": [10**40, 1]}]}).encode(),
    "invalid utf-8": b'{"inputs": [{"name": "\xff\xfe", "datatype": "FP32"}]}',
    "a deep list hidden in data": b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, '
                                  + b"[" * 900 + b"]" * 900 + b"]}]}",
    "a deep list hidden in parameters": (b'{"parameters": {"timeout": [0, ' + b"[" * 900 + b"]" * 900
                                         + b']}, "inputs": ' + json.dumps(_item()["inputs"]).encode() + b"}"),
}


def _binary_float_size() -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16.0}}]}).encode()
    return header + b"\0" * 16, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_the_issue_cases_are_client_errors(http, case):
    body, headers = ISSUE_CASES[case], {}
    if body is None:
        body, headers = _binary_float_size()
    model = "gather" if b'"ids"' in body else "simple"
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert_client_error(r, case)
    good_http(http)


def test_a_lone_surrogate_answers_ascii_json_and_keeps_the_connection(http):
    r = http.post("/v2/models/simple/infer", content=ISSUE_CASES["input named a lone surrogate"])
    assert r.status_code == 400 and "'\\ud800'" in r.json()["error"]
    assert r.headers["content-type"].startswith("application/json") and r.content.isascii()
    good_http(http)


# ---- generated variants: every field of a good request replaced by hostile values ------------
HOSTILE_VALUES = [None, True, -1, 1.5, 2**64, "", "x" * 5000, "\ud800", [], [None], [[]], {}, {"a": {"b": []}},
                  [1] * 50, [2**62, 2**62], [0, 2**62, 0], float("nan"), float("-inf"), "FP32", [-1], [1.5, 2],
                  {"binary_data_size": 16}, [[1, 2], [3]], -2**63]
FIELDS = [("name",), ("datatype",), ("shape",), ("data",), ("parameters",),
          ("parameters", "binary_data_size"), ("parameters", "shared_memory_region")]
TOP = ["inputs", "outputs", "parameters", "id"]


def generated_http_cases() -> list[tuple[str, bytes]]:
    cases = []
    for value in HOSTILE_VALUES:
        for path in FIELDS:
            body = copy.deepcopy(GOOD)
            target = body["inputs"][0]
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
            cases.append((f"inputs[0].{'.'.join(path)}={value!r:.30}", body))
        for key in TOP:
            body = copy.deepcopy(GOOD)
            body[key] = value
            cases.append((f"{key}={value!r:.30}", body))
        cases.append((f"parameters.timeout={value!r:.30}", {**GOOD, "parameters": {"timeout": value}}))
        cases.append((f"parameters.binary_data_output={value!r:.30}",
                       {**GOOD, "parameters": {"binary_data_output": value}}))
        cases.append((f"outputs[0].parameters.binary_data={value!r:.30}",
                       {**GOOD, "outputs": [{"name": "y", "parameters": {"binary_data": value}}]}))
    out = []
    for name, body in cases:
        try:
            raw = json.dumps(body).encode("utf-8", "surrogatepass")
        except (ValueError, TypeError):
            continue
        out.append((name, raw))
    return out


def test_generated_malformed_http_requests_are_4xx_and_good_ones_stay_correct(http):
    cases = generated_http_cases()
    accepted = 0
    for i, (name, body) in enumerate(cases):
        r = http.post("/v2/models/simple/infer", content=body)
        assert r.status_code < 500, (name, r.status_code, r.text[:300])
        if r.status_code == 200:  # a few "hostile" values are valid (e.g. id "", parameters {})
            accepted += 1
            if "Inference-Header-Content-Length" in r.headers or not r.json()["outputs"]:
                continue  # binary_data_output: true, or "outputs": [] (none asked for)
            np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"], np.float32),
                                       reference(np.array(X, np.float32)).ravel(), rtol=1e-5)
        else:
            assert_client_error(r, name)
        if i % 10 == 0:
            good_http(http)
    assert len(cases) > 300 and accepted < len(cases) // 4


BYTE_MUTATIONS = [b"", b"{", b"null", b"[]", b"{}", b"\x00" * 64, b'{"inputs": {}}', b'{"inputs": [1]}',
                  b'{"inputs": [{}]}', b'{"inputs": [{"name": 1}]}', b'{"inputs":' + b" " * 10000 + b"[]}",
                  b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": "abcd"}]}',
                  b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}',
                  b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, {}]}]}',
                  b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, "4"]}]}',
                  b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4], "data": ["a"]}]}',
                  b'\xef\xbb\xbf{"inputs": []}', b'{"inputs": [], "inputs": 5}']


@pytest.mark.parametrize("headers", [{}, {"Inference-Header-Content-Length": "3"},
                                     {"Content-Encoding": "gzip"}, {"Content-Encoding": "br"},
                                     {"Content-Encoding": "deflate"}, {"Inference-Header-Content-Length": "-1"}])
def test_byte_level_garbage_is_4xx(http, headers):
    for body in BYTE_MUTATIONS:
        assert_client_error(http.post("/v2/models/simple/infer", content=body, headers=headers), repr(body[:40]))
    good_http(http)


def test_other_endpoints_answer_json_4xx(http):
    for method, path in [("GET", "/v2/models/%ED%A0%80"), ("GET", "/v2/models/nope/versions/x/config"),
                         ("POST", "/v2/models/simple/ready"), ("GET", "/etc/passwd"), ("GET", "/v2/models/..%2f..")]:
        r = http.request(method, path)
        assert_client_error(r, path)
        assert "/tmp" not in r.text and "hostile-repo" not in r.text


# ---- batchmates of a bad request --------------------------------------------------------------
def http_client(srv) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30)


def _gather_http(http, ids):
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": ids}]}
    return http.post("/v2/models/gather/infer", json=body)


def test_an_index_out_of_range_fails_only_its_request_over_http(srv):
    stats = srv.core.repository.get("gather").stats
    failed_before = int(stats.to_json()["inference_stats"]["fail"]["count"])
    requests = [[0, 1], [2, 3], [0, 99], [3, 3], [1, -9], [2, 0], [1, 1], [3, 0]]
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c, \
            cf.ThreadPoolExecutor(len(requests)) as pool:
        for _ in range(2):  # batched together by the 30 ms queue delay
            answers = list(pool.map(lambda ids: _gather_http(c, ids), requests))
            for ids, r in zip(requests, answers):
                if max(ids) > 3 or min(ids) < -4:
                    assert r.status_code == 400, r.text
                    assert "input 'ids'" in r.json()["error"]
                else:
                    assert r.status_code == 200, r.text
                    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 2, 3)
                    np.testing.assert_array_equal(got, TABLE[np.array([ids])])
    assert int(stats.to_json()["inference_stats"]["fail"]["count"]) - failed_before == 4
    with http_client(srv) as c:  # alone, no batchmate to compare with: known as an index error
        alone = _gather_http(c, [0, 99])
    assert alone.status_code == 400 and "input 'ids'" in alone.json()["error"]
    assert "Traceback" not in alone.text and "ember-gather" not in alone.text


def test_an_index_out_of_range_fails_only_its_request_over_grpc(gclient):
    def call(ids):
        inp = tg.InferInput("ids", [1, 2], "INT64")
        inp.set_data_from_numpy(np.array([ids], np.int64))
        try:
            return gclient.infer("gather", [inp]).as_numpy("y")
        except InferenceServerException as exc:
            return exc
    requests = [[0, 1], [7, 0], [3, 2], [1, 1]]
    with cf.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(call, requests))
    assert isinstance(answers[1], InferenceServerException)
    assert answers[1].status() == "StatusCode.INVALID_ARGUMENT" and "input 'ids'" in answers[1].message()
    for i in (0, 2, 3):
        np.testing.assert_array_equal(answers[i], TABLE[np.array([requests[i]])])


# ---- gRPC ---------------------------------------------------------------------------------------
def _raw_stub(channel, method="ModelInfer"):
    return channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)


def good_grpc(gclient) -> None:
    inp = tg.InferInput("x", [1, 4], "FP32")
    x = np.array(X, np.float32)
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(gclient.infer("simple", [inp]).as_numpy("y"), reference(x), rtol=1e-5)


def grpc_cases() -> list[tuple[str, service_pb2.ModelInferRequest]]:
    cases = []
    for shape in ([0, 2**62], [1] * 100, [2**40, 2**40], [1, 4, 1, 1, 1, 1, 1, 1, 1], [-1, 4], [1, -4], [],
                  [100_001], [1, 5], [9, 4]):
        for raw in (True, False):
            req = service_pb2.ModelInferRequest(model_name="simple")
            req.inputs.add(name="x", datatype="FP32", shape=shape)
            if raw:
                req.raw_input_contents.append(b"\0" * 16)
            else:
                req.inputs[0].contents.fp32_contents.extend([0.0] * 4)
            cases.append((f"shape {shape[:5]} raw={raw}", req))
    for dt in ("", "FP33", "BYTES", "fp32", "\x00", "FP32" * 100, "BF16"):
        req = service_pb2.ModelInferRequest(model_name="simple")
        req.inputs.add(name="x", datatype=dt, shape=[1, 4])
        req.raw_input_contents.append(b"\0" * 16)
        cases.append((f"datatype {dt[:10]!r}", req))
    for n_raw in (0, 2, 3):
        req = service_pb2.ModelInferRequest(model_name="simple")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.extend([b"\0" * 16] * n_raw)
        if n_raw:
            cases.append((f"{n_raw} raw contents", req))
    req = service_pb2.ModelInferRequest(model_name="simple")
    cases.append(("no inputs", req))
    req = service_pb2.ModelInferRequest(model_name="simple")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.extend([b"\0" * 16] * 2)
    cases.append(("input twice", req))
    for key, value in (("timeout", "soon"), ("timeout", -5), ("sequence_id", 3), ("shared_memory_region", "r")):
        req = service_pb2.ModelInferRequest(model_name="simple")
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(b"\0" * 16)
        p = req.parameters[key]
        if isinstance(value, str):
            p.string_param = value
        else:
            p.int64_param = value
        cases.append((f"parameter {key}={value}", req))
    req = service_pb2.ModelInferRequest(model_name="gather")
    req.inputs.add(name="ids", datatype="INT64", shape=[1, 2])
    req.inputs[0].contents.int64_contents.extend([0, 2**62])
    cases.append(("gather index 2**62", req))
    return cases


GARBAGE = [b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc", b"\x0a\x02\xed\xa0",  # bad utf-8
           bytes(range(256)), b"\x08" + b"\xff" * 11]


def test_malformed_grpc_requests_are_invalid_argument(channel, gclient):
    stub = _raw_stub(channel)
    cases = grpc_cases()
    for i, (name, req) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as info:
            stub(req.SerializeToString())
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), \
            (name, info.value.code(), info.value.details())
        assert "Traceback" not in info.value.details()
        if i % 8 == 0:
            good_grpc(gclient)
    for method in ("ModelInfer", "ModelMetadata", "RepositoryModelLoad", "ModelConfig"):
        for blob in GARBAGE:
            with pytest.raises(grpc.RpcError) as info:
                _raw_stub(channel, method)(blob)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, blob, info.value.details())
    good_grpc(gclient)


def test_grpc_messages_over_the_limit_are_refused(channel, gclient):
    req = service_pb2.ModelInferRequest(model_name="simple")
    req.inputs.add(name="x", datatype="FP32", shape=[2 * MiB // 16, 4])
    req.raw_input_contents.append(b"\0" * 2 * MiB)
    with pytest.raises(grpc.RpcError) as info:
        _raw_stub(channel)(req.SerializeToString())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    good_grpc(gclient)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MiB


def test_refused_grpc_requests_are_freed_at_once(channel, gclient):
    """No reference cycle keeps a refused request's tensors until the cycle collector runs."""
    req = service_pb2.ModelInferRequest(model_name="simple")
    req.inputs.add(name="x", datatype="FP32", shape=[20, 5000])  # decoded, then refused: batch 20 > 8
    req.raw_input_contents.append(b"\1" * (20 * 5000 * 4))
    blob, stub = req.SerializeToString(), _raw_stub(channel)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            with pytest.raises(grpc.RpcError):
                stub(blob)
        before = _rss_mb()
        for _ in range(200):  # 80 MB sent
            with pytest.raises(grpc.RpcError) as info:
                stub(blob)
        grown = _rss_mb() - before
    finally:
        gc.enable()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grown < 30, grown
    good_grpc(gclient)


# ---- limits -------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_body_over_the_limit_is_413_before_it_is_read(http):
    body = json.dumps(_item()).encode() + b" " * (2 * MiB)
    r = http.post("/v2/models/simple/infer", content=body)
    assert r.status_code == 413 and "--http-max-body-mb" in r.json()["error"]
    good_http(http)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_decompression_bomb_is_refused_while_inflating(http, encoding):
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    spaces = b" " * MiB
    packed = deflater.compress(json.dumps(_item()).encode())  # 200 MiB inflated, never held here
    packed += b"".join(deflater.compress(spaces) for _ in range(200)) + deflater.flush()
    assert len(packed) < LIMITS.max_body_bytes
    before = _peak_rss_mb()
    r = http.post("/v2/models/simple/infer", content=packed, headers={"Content-Encoding": encoding})
    assert r.status_code == 413 and "--max-decompressed-mb" in r.json()["error"]
    assert _peak_rss_mb() - before < 50  # inflating stopped at the 1 MiB limit, never near 200 MiB
    small = json.dumps(_item()).encode()
    ok = http.post("/v2/models/simple/infer", content=gzip.compress(small) + gzip.compress(b" "),
                   headers={"Content-Encoding": "gzip"})  # two gzip members are one body
    assert ok.status_code == 200, ok.text


def test_input_elements_and_dims_limits(http):
    big = _item(shape=[100_001, 4], data=[0.0])
    assert "--max-input-elements" in assert_client_error(http.post("/v2/models/simple/infer", json=big))
    deep = _item(shape=[1] * 9, data=[0.0])
    assert "--max-input-dims" in assert_client_error(http.post("/v2/models/simple/infer", json=deep))


def test_the_server_default_queue_size_applies(srv, http):
    served = srv.core.repository.get("simple")
    assert served.scheduler.max_queue_size == LIMITS.max_queue_size
    assert http.get("/v2/models/simple/config").json()["dynamic_batching"]["default_queue_policy"][
        "max_queue_size"] == LIMITS.max_queue_size


def _http_input() -> th.InferInput:
    inp = th.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array(X, np.float32))
    return inp


# ---- errors of the server itself ------------------------------------------------------------------
def test_an_internal_error_answers_an_id_not_its_text(srv, http, gclient, caplog, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret detail /opt/models")
    monkeypatch.setattr(srv.core, "infer", broken)
    with caplog.at_level(logging.ERROR, logger="ember.serve"):
        r = http.post("/v2/models/simple/infer", json=GOOD)
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array(X, np.float32))
        with pytest.raises(InferenceServerException) as info:
            gclient.infer("simple", [inp])
    monkeypatch.setattr(srv.core, "model_metadata", lambda *a: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="ember.serve"):
        meta = http.get("/v2/models/simple")  # a bug in any route: JSON 500 with an id
    assert r.status_code == 500 and "secret" not in r.text
    assert meta.status_code == 500 and "ZeroDivision" not in meta.text
    assert info.value.status() == "StatusCode.INTERNAL" and "secret" not in info.value.message()
    for message, cause in ((r.json()["error"], "secret"), (info.value.message(), "secret"),
                           (meta.json()["error"], "ZeroDivisionError")):
        eid = re.search(r"internal error ([0-9a-f]{12})", message).group(1)
        assert any(eid in rec.getMessage() and cause in rec.getMessage() for rec in caplog.records)


def test_client_errors_log_one_line_without_a_traceback(http, caplog):
    with caplog.at_level(logging.INFO, logger="ember.serve"):
        http.post("/v2/models/simple/infer", content=ISSUE_CASES["datatype as a list"])
    lines = [r for r in caplog.records if "HTTP 400" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


# ---- non-finite numbers in JSON -------------------------------------------------------------------
def test_non_finite_outputs_are_written_as_triton_does_and_read_back(srv, http):
    x = np.array([[-np.inf, 0, 0, 0], [np.nan, 1, 1, 1], [1, 2, 3, 4]], np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]}
    text = http.post("/v2/models/simple/infer", content=json.dumps(body)).text  # NaN/-Infinity tokens in
    assert "NaN" in text or "Infinity" in text
    client = th.InferenceServerClient(f"127.0.0.1:{srv.http_port}")
    inp = th.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    as_json = client.infer("simple", [inp], outputs=[th.InferRequestedOutput("y", binary_data=False)])
    inp.set_data_from_numpy(x, binary_data=True)
    as_binary = client.infer("simple", [inp])
    np.testing.assert_array_equal(as_json.as_numpy("y"), as_binary.as_numpy("y"))  # NaN == NaN here
    assert not np.isfinite(as_json.as_numpy("y")[:2]).all()


# ---- model control --------------------------------------------------------------------------------
def test_model_control_is_off_by_default(server):
    c = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for call in (lambda: c.unload_model("simple"), lambda: c.load_model("simple")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "403" and "--model-control-mode" in info.value.message()
    g = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException) as info:
        g.unload_model("simple")
    assert info.value.status() == "StatusCode.PERMISSION_DENIED"
    assert c.is_model_ready("simple")


def test_model_control_needs_the_token(srv, gclient):
    c = th.InferenceServerClient(f"127.0.0.1:{srv.http_port}")
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}):
        with pytest.raises(InferenceServerException) as info:
            c.unload_model("simple", headers=headers)
        assert info.value.status() == "401"
    with pytest.raises(InferenceServerException) as info:
        gclient.unload_model("simple", headers={"authorization": "Bearer wrong"})
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    c.load_model("simple", headers={"Authorization": f"Bearer {TOKEN}"})
    gclient.load_model("simple", headers={"authorization": f"Bearer {TOKEN}"})
    assert c.is_model_ready("simple")


@pytest.mark.parametrize("config", [{"instance_count": {"a": 1}}, {"inputs": 5}, {"max_batch_size": [1]},
                                    {"dynamic_batching": "yes"}, {"version_policy": {"specific": 3}},
                                    {"inputs": [{"name": {"x": 1}}]}, {"max_batch_size": -3},
                                    {"max_batch_size": 2**70}, {"dynamic_batching": {"max_queue_size": [[[]]]}}])
def test_a_failed_load_leaves_the_model_unavailable_with_the_reason(srv, http, config):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = http.post("/v2/repository/models/gather/load", headers=auth,
                  json={"parameters": {"config": json.dumps(config)}})
    assert_client_error(r, json.dumps(config))
    rows = {row["name"]: row for row in http.post("/v2/repository/index").json()}
    assert rows["gather"]["state"] in ("READY", "UNAVAILABLE")  # a failed reload keeps the old one
    assert all(row["state"] != "LOADING" for row in rows.values())
    assert http.post("/v2/repository/models/gather/unload", headers=auth).status_code == 200
    r = http.post("/v2/repository/models/gather/load", headers=auth,
                  json={"parameters": {"config": json.dumps(config)}})
    assert_client_error(r, json.dumps(config))
    row = {row["name"]: row for row in http.post("/v2/repository/index").json()}["gather"]
    assert row["state"] == "UNAVAILABLE" and row["reason"] and "hostile-repo" not in row["reason"]
    assert http.post("/v2/repository/models/gather/load", headers=auth).status_code == 200
    assert _gather_http(http, [0, 1]).status_code == 200


def test_a_model_failing_at_start_up_is_reported_and_the_others_served(tmp_path, repository, cache_dir):
    shutil.copytree(repository / "simple", tmp_path / "simple")
    (tmp_path / "junk" / "1").mkdir(parents=True)
    (tmp_path / "junk" / "1" / "model.onnx").write_bytes(b"\x08\x07 this is no onnx model")
    (tmp_path / "junk" / "config.yaml").write_text("max_batch_size: 8\n")
    outside = matmul_relu_model()  # ONNX external data outside the model's folder: onnx refuses it
    weight = outside.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="../../../../etc/hostname")
    write_model(tmp_path, "outside", outside, "max_batch_size: 8\n")
    options = dict(http_port=0, grpc_port=-1, metrics_port=-1, cache_dir=cache_dir)
    with ServerThread(ServerOptions(tmp_path, **options)) as s:
        c = th.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        assert c.is_server_live() and not c.is_server_ready()
        assert c.is_model_ready("simple") and not c.is_model_ready("junk") and not c.is_model_ready("outside")
        rows = {r["name"]: r for r in c.get_model_repository_index()}
        for name in ("junk", "outside"):
            row = rows[name]
            assert row["state"] == "UNAVAILABLE" and row["reason"] and str(tmp_path) not in row["reason"]
        assert "outside" in rows["outside"]["reason"]
        c.infer("simple", [_http_input()])
    with pytest.raises(Exception, match="junk"):
        ServerThread(ServerOptions(tmp_path, exit_on_error=True, **options)).start()


def test_the_limit_and_model_control_flags():
    import argparse

    from ember.serve import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["repo"])
    assert cli.limits_from_args(args) == Limits() and args.model_control_mode == "none" and not args.exit_on_error
    args = parser.parse_args(["repo", "--http-max-body-mb", "2", "--max-decompressed-mb", "0.5",
                              "--max-queue-size", "0", "--model-control-mode", "explicit", "--exit-on-error"])
    limits = cli.limits_from_args(args)
    assert limits.max_body_bytes == 2 * MiB and limits.max_decompressed_bytes == MiB // 2
    assert limits.max_queue_size == 0 and args.model_control_mode == "explicit" and args.exit_on_error
    assert "--max-json-depth" in cli.limits_from_args(parser.parse_args(["repo", "--max-json-depth", "0"]))
    assert "2048" in cli.limits_from_args(parser.parse_args(["repo", "--grpc-max-message-mb", "4096"]))


def test_slow_and_idle_connections_are_closed_and_connections_are_bounded(tmp_path, repository, cache_dir):
    import socket
    import time

    shutil.copytree(repository / "simple", tmp_path / "simple")
    limits = Limits(http_header_timeout_s=0.4, http_max_connections=4)
    with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=-1, metrics_port=-1, cache_dir=cache_dir,
                                    limits=limits)) as s:
        def closed_within(sock: socket.socket, seconds: float) -> bool:
            sock.settimeout(seconds)
            try:
                return sock.recv(1024) == b""
            except (TimeoutError, ConnectionResetError):
                return False
        silent = socket.create_connection(("127.0.0.1", s.http_port))
        dripping = socket.create_connection(("127.0.0.1", s.http_port))
        dripping.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        assert closed_within(silent, 5) and closed_within(dripping, 5)
        assert time.monotonic() - start < 3
        with http_client(s) as c:
            good_http(c)  # a request that sends its head in time is served
            idle = [socket.create_connection(("127.0.0.1", s.http_port)) for _ in range(4)]
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{s.http_port}") as fresh:
                    assert fresh.get("/v2/health/live").status_code == 503  # over --http-max-connections
            finally:
                for sock in idle:
                    sock.close()
            time.sleep(0.1)
            good_http(c)
        silent.close()
        dripping.close()


def test_while_shutting_down_answers_503_and_closes_kept_alive_connections(srv, http):
    srv.core.accepting = False  # what Server.shutdown sets first
    try:
        r = http.post("/v2/models/simple/infer", json=GOOD)
        assert r.status_code == 503 and r.headers["connection"] == "close"
        assert "shutting down" in r.json()["error"]
    finally:
        srv.core.accepting = True
    good_http(http)
    assert http.get("/v2/health/live").headers.get("connection") != "close"


def test_leftovers_of_a_killed_server_are_removed_at_start_and_live_ones_kept(tmp_path, repository, cache_dir):
    import os
    import tempfile

    from ember.serve.shm import Owner, shm_dir

    dead = "0123456789ab"
    (open(os.path.join(shm_dir(), f"ember-o{dead}.lock"), "w")).close()  # a lock file no one holds
    region = os.path.join(shm_dir(), f"ember-o{dead}-in-x1y2")
    open(region, "wb").close()
    folder = tempfile.mkdtemp(prefix=f"ember-serve-o{dead}-")
    open(os.path.join(folder, "front-end-1.log"), "w").close()
    alive = Owner()  # a server that runs: its files stay
    mine = os.path.join(shm_dir(), f"ember-o{alive.token}-out-a1b2")
    open(mine, "wb").close()
    unjudged = os.path.join(shm_dir(), "ember-ofedcba987654-in-zz")  # no lock file: left alone
    open(unjudged, "wb").close()
    shutil.copytree(repository / "simple", tmp_path / "simple")
    try:
        with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=-1, metrics_port=-1, cache_dir=cache_dir)):
            assert not os.path.exists(region) and not os.path.exists(folder)
            assert not os.path.exists(os.path.join(shm_dir(), f"ember-o{dead}.lock"))
            assert os.path.exists(mine) and os.path.exists(unjudged) and os.path.exists(alive.lock_path)
    finally:
        alive.release()
        for path in (mine, unjudged):
            os.unlink(path)
