"""The HTTP/REST front end with tritonclient.http (binary by default) and raw HTTP requests."""
from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from servekit import reference


@pytest.fixture(scope="module")
def client(server):
    c = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c:
        yield c


def infer_simple(client, x, binary=True, **kw):
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = None if binary else [th.InferRequestedOutput("y", binary_data=False)]
    return client.infer("simple", [inp], outputs=outputs, **kw)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ember" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(client):
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("simple")
    assert meta == client.get_model_metadata("simple", "1")
    assert meta["versions"] == ["1"] and meta["platform"] == "ember"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]


def test_model_config(client):
    cfg = client.get_model_config("simple")
    assert cfg["name"] == "simple" and cfg["max_batch_size"] == 8
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}]
    assert cfg["instance_group"][0]["count"] == 2 and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert "dynamic_batching" not in client.get_model_config("simple_nobatch")
    fixed = client.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0 and fixed["input"][0]["dims"] == [2, 3]


def test_infer_binary_equals_the_engine(client, simple_engine):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    result = infer_simple(client, x)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 5 * 4 * 4
    with simple_engine.create_context() as ctx:
        want = ctx.infer({"x": x})["y"]
    np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-5, atol=1e-5)


def test_infer_json_equals_the_engine(client, simple_engine):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    result = infer_simple(client, x, binary=False, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "1"
    assert "data" in response["outputs"][0] and "parameters" not in response["outputs"][0]
    with simple_engine.create_context() as ctx:
        np.testing.assert_allclose(result.as_numpy("y"), ctx.infer({"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_plain_json_request_without_tritonclient(http):
    x = [[1, 2, 3, 4]]
    r = http.post("/v2/models/simple/versions/1/infer",
                  json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 4]
    np.testing.assert_allclose(out["data"], reference(np.array(x, np.float32)).ravel(), rtol=1e-5)


def test_several_inputs_dynamic_dims_and_requested_outputs(client):
    a = np.random.default_rng(2).standard_normal((2, 7)).astype(np.float32)
    b = np.ones((2, 7), np.float32)
    k = np.array([[1, 2], [3, 4]], np.int64)
    inputs = [th.InferInput("a", [2, 7], "FP32"), th.InferInput("b", [2, 7], "FP32"),
              th.InferInput("k", [2, 2], "INT64")]
    for inp, arr in zip(inputs, (a, b, k)):
        inp.set_data_from_numpy(arr)
    result = client.infer("two_io", inputs)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("idx"), k + 1)
    only = client.infer("two_io", inputs, outputs=[th.InferRequestedOutput("idx")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["idx"]
    assert only.as_numpy("idx").dtype == np.int64


def test_model_without_batch_dim(client):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    inp = th.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("fixed", [inp]).as_numpy("y"), x * 2)


def test_compressed_request_and_response(client):
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    for algo in ("gzip", "deflate"):
        result = infer_simple(client, x, request_compression_algorithm=algo, response_compression_algorithm=algo)
        np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-5, atol=1e-5)


def _good(http) -> None:
    r = http.post("/v2/models/simple/infer",
                  json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]})
    assert r.status_code == 200, r.text


def _json(inputs, **extra) -> dict:
    return {"json": {"inputs": inputs, **extra}}


X1 = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
BAD_REQUESTS = {
    "unknown model": ("/v2/models/nope/infer", _json([X1]), 404, "unknown model 'nope'"),
    "unknown version": ("/v2/models/simple/versions/9/infer", _json([X1]), 404, "no version '9'"),
    "wrong input name": ("/v2/models/simple/infer", _json([{**X1, "name": "z"}]), 400, "has no input 'z'"),
    "missing input": ("/v2/models/two_io/infer", _json([{**X1, "name": "a"}]), 400, "is missing"),
    "wrong shape": ("/v2/models/simple/infer", _json([{**X1, "shape": [2, 2]}]), 400, "dim 1 must be 4"),
    "wrong rank": ("/v2/models/simple/infer", _json([{**X1, "shape": [4]}]), 400, "expects [-1, 4]"),
    "wrong dtype": ("/v2/models/simple/infer", _json([{**X1, "datatype": "FP64"}]), 400, "datatype FP64"),
    "unknown dtype": ("/v2/models/simple/infer", _json([{**X1, "datatype": "FLOAT"}]), 400, "datatype 'FLOAT'"),
    "bytes dtype": ("/v2/models/simple/infer", _json([{**X1, "datatype": "BYTES"}]), 400, "BYTES"),
    "too few values": ("/v2/models/simple/infer", _json([{**X1, "data": [1, 2]}]), 400, "has 2 values"),
    "text values": ("/v2/models/simple/infer", _json([{**X1, "data": ["a", "b", "c", "d"]}]), 400, "text"),
    "ragged data": ("/v2/models/simple/infer", _json([{**X1, "data": [[1, 2], [3]]}]), 400, "regular list"),
    "oversized batch": ("/v2/models/simple/infer",
                        _json([{**X1, "shape": [9, 4], "data": [0.0] * 36}]), 400, "exceeds max_batch_size 8"),
    "empty batch": ("/v2/models/simple/infer", _json([{**X1, "shape": [0, 4], "data": []}]), 400, "empty"),
    "dynamic dims disagree": ("/v2/models/two_io/infer", _json([
        {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "b", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
        {"name": "k", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]), 400, "must agree"),
    "dim above profile": ("/v2/models/two_io/infer", _json([
        {"name": "a", "datatype": "FP32", "shape": [1, 17], "data": [0.0] * 17},
        {"name": "b", "datatype": "FP32", "shape": [1, 17], "data": [0.0] * 17},
        {"name": "k", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]), 400, "must lie in 1..16"),
    "int out of range": ("/v2/models/two_io/infer", _json([
        {"name": "a", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        {"name": "b", "datatype": "FP32", "shape": [1, 1], "data": [1]},
        {"name": "k", "datatype": "INT64", "shape": [1, 2], "data": [1, 2.5]}]), 400, "holds float64"),
    "unknown output": ("/v2/models/simple/infer", _json([X1], outputs=[{"name": "nope"}]), 400, "no output 'nope'"),
    "no inputs": ("/v2/models/simple/infer", _json([]), 400, "no 'inputs'"),
    "malformed json": ("/v2/models/simple/infer", {"content": b'{"inputs": [ '}, 400, "JSON is malformed"),
    "json not an object": ("/v2/models/simple/infer", {"content": b"[1, 2]"}, 400, "must be an object"),
    "bad timeout": ("/v2/models/simple/infer", _json([X1], parameters={"timeout": "soon"}), 400, "timeout"),
    "sequence request": ("/v2/models/simple/infer", _json([X1], parameters={"sequence_id": 4}), 400, "sequence"),
    "bad gzip body": ("/v2/models/simple/infer",
                      {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "gzip"),
}


def _binary_body(header: dict, blob: bytes, header_len=None) -> dict:
    js = json.dumps(header).encode()
    return {"content": js + blob,
            "headers": {"Inference-Header-Content-Length": str(len(js) if header_len is None else header_len)}}


XB = {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}
BAD_BINARY = {
    "binary too short": (_binary_body({"inputs": [XB]}, b"\0" * 8), "needs 16 binary bytes"),
    "binary size mismatch": (_binary_body({"inputs": [{**XB, "parameters": {"binary_data_size": 12}}]}, b"\0" * 12),
                             "needs 16 bytes"),
    "extra binary bytes": (_binary_body({"inputs": [XB]}, b"\0" * 20), "4 bytes after the last"),
    "header length past body": (_binary_body({"inputs": [XB]}, b"\0" * 16, header_len=10_000), "body has"),
    "header length not int": (_binary_body({"inputs": [XB]}, b"\0" * 16, header_len="ten"), "must be an integer"),
    "header cut in json": (_binary_body({"inputs": [XB]}, b"\0" * 16, header_len=5), "malformed"),
    "no data at all": (_binary_body({"inputs": [{**XB, "parameters": {}}]}, b""), "neither 'data'"),
}
BAD_REQUESTS.update({k: ("/v2/models/simple/infer", body, 400, words) for k, (body, words) in BAD_BINARY.items()})


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_answered_and_the_server_keeps_serving(http, case):
    path, kwargs, status, words = BAD_REQUESTS[case]
    r = http.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    _good(http)


def test_errors_through_tritonclient(client):
    x = np.ones((9, 4), np.float32)
    with pytest.raises(InferenceServerException) as info:
        infer_simple(client, x)
    assert info.value.status() == "400" and "max_batch_size" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"
    infer_simple(client, np.ones((1, 4), np.float32))


def test_unknown_endpoint_answers_json_error(http):
    r = http.get("/v2/nothing/here")
    assert r.status_code == 404 and "no endpoint" in r.json()["error"]


def test_full_queue_answers_503_and_the_queued_request_still_succeeds(server, http):
    body = {"inputs": [X1]}
    first: dict = {}
    t = threading.Thread(target=lambda: first.setdefault("r", http.post("/v2/models/queued/infer", json=body)))
    t.start()
    deadline = time.time() + 5
    while server.core.repository.get("queued").scheduler.queue_size == 0 and time.time() < deadline:
        time.sleep(0.01)
    second = http.post("/v2/models/queued/infer", json=body)
    assert second.status_code == 503 and "queue of model 'queued' is full" in second.json()["error"]
    t.join()
    assert first["r"].status_code == 200


def test_request_past_its_timeout_is_answered_with_an_error(http):
    t0 = time.time()
    r = http.post("/v2/models/queued/infer", json={"inputs": [X1], "parameters": {"timeout": 20_000}})
    assert r.status_code == 503 and "timed out" in r.json()["error"]
    assert time.time() - t0 < 0.9          # at its 20 ms deadline, not after the 1 s batching delay
    _good(http)


def test_statistics(client):
    before = client.get_inference_statistics("simple")["model_stats"][0]
    infer_simple(client, np.ones((3, 4), np.float32))
    after = client.get_inference_statistics("simple", "1")["model_stats"][0]
    assert after["name"] == "simple" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert {"simple", "two_io", "fixed"} <= {s["name"] for s in every}


def test_metrics_are_named_like_triton(server, client):
    infer_simple(client, np.ones((2, 4), np.float32))
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us"):
        assert f"# TYPE {name} counter" in text
        assert f'{name}{{model="simple",version="1"}} ' in text
    assert "process_cpu_seconds_total" in text


def test_repository_index(http):
    rows = http.post("/v2/repository/index").json()
    states = {(r["name"], r["version"]): r["state"] for r in rows}
    assert states[("simple", "1")] == "READY" and states[("fixed", "1")] == "READY"


def test_responses_are_not_held_back_by_nagle(http):
    """With Nagle's algorithm on, every response waited ~40 ms for the client's delayed ACK."""
    http.get("/v2/health/live")
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        assert http.get("/v2/health/live").status_code == 200
        times.append(time.perf_counter() - t0)
    assert sorted(times)[4] < 0.02, f"median {sorted(times)[4] * 1000:.1f} ms"
