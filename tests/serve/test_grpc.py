"""The gRPC front end with tritonclient.grpc, and typed ``contents`` sent with a raw stub."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from servekit import reference


@pytest.fixture(scope="module")
def client(server):
    c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield ch
    ch.close()


def infer_simple(client, x, **kw):
    inp = tg.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("simple", [inp], **kw)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "ember" and "statistics" in meta["extensions"]
    m = client.get_model_metadata("simple", as_json=True)
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert client.get_model_metadata("simple", "1").name == "simple"


def test_model_config(client):
    cfg = client.get_model_config("simple").config
    assert cfg.name == "simple" and cfg.max_batch_size == 8
    assert cfg.input[0].name == "x" and list(cfg.input[0].dims) == [4] and cfg.input[0].data_type == 11  # TYPE_FP32
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.instance_group[0].count == 2


def test_infer_equals_the_engine(client, simple_engine):
    x = np.random.default_rng(10).standard_normal((6, 4)).astype(np.float32)
    result = infer_simple(client, x, request_id="g1")
    assert result.get_response().id == "g1"
    with simple_engine.create_context() as ctx:
        np.testing.assert_allclose(result.as_numpy("y"), ctx.infer({"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_infer_versions_several_inputs_and_requested_outputs(client):
    a = np.full((1, 3), 2, np.float32)
    k = np.array([[5, 6]], np.int64)
    inputs = [tg.InferInput("a", [1, 3], "FP32"), tg.InferInput("b", [1, 3], "FP32"),
              tg.InferInput("k", [1, 2], "INT64")]
    for inp, arr in zip(inputs, (a, a, k)):
        inp.set_data_from_numpy(arr)
    result = client.infer("two_io", inputs, model_version="1", outputs=[tg.InferRequestedOutput("sum")])
    np.testing.assert_array_equal(result.as_numpy("sum"), a * 2)
    assert result.as_numpy("idx") is None


def test_typed_contents_instead_of_raw_bytes(channel):
    stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=service_pb2.ModelInferResponse.FromString)
    req = service_pb2.ModelInferRequest(model_name="simple")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    t.contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub(req)
    assert resp.outputs[0].name == "y" and list(resp.outputs[0].shape) == [2, 4]
    y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 4)
    np.testing.assert_allclose(y, reference(x), rtol=1e-5)


def test_unimplemented_rpc(channel):
    stub = channel.unary_unary("/inference.GRPCInferenceService/TraceSetting",
                               request_serializer=lambda m: b"", response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        stub(None)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


BAD = {
    "unknown model": ("nope", [("x", [1, 4], "FP32", np.float32)], "NOT_FOUND", "unknown model"),
    "wrong name": ("simple", [("z", [1, 4], "FP32", np.float32)], "INVALID_ARGUMENT", "no input 'z'"),
    "wrong shape": ("simple", [("x", [1, 5], "FP32", np.float32)], "INVALID_ARGUMENT", "dim 1 must be 4"),
    "wrong dtype": ("simple", [("x", [1, 4], "FP64", np.float64)], "INVALID_ARGUMENT", "datatype FP64"),
    "oversized batch": ("simple", [("x", [9, 4], "FP32", np.float32)], "INVALID_ARGUMENT", "max_batch_size 8"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_then_a_good_one(client, case):
    model, specs, code, words = BAD[case]
    inputs = []
    for name, shape, dt, np_dt in specs:
        inp = tg.InferInput(name, shape, dt)
        inp.set_data_from_numpy(np.zeros(shape, np_dt))
        inputs.append(inp)
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs)
    assert info.value.status() == f"StatusCode.{code}" and words in info.value.message()
    infer_simple(client, np.ones((1, 4), np.float32))


def test_malformed_raw_contents(channel, client):
    stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=service_pb2.ModelInferResponse.FromString)
    req = service_pb2.ModelInferRequest(model_name="simple")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(b"\0" * 7)
    with pytest.raises(grpc.RpcError) as info:
        stub(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "7 raw bytes" in info.value.details()
    broken = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError):
        broken(b"\xff\xff\xff not a protobuf")
    infer_simple(client, np.ones((1, 4), np.float32))


def test_statistics(client):
    before = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    infer_simple(client, np.ones((2, 4), np.float32))
    after = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    assert int(after["inference_stats"]["success"]["count"]) == int(before["inference_stats"]["success"]["count"]) + 1


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "simple", "version": "1", "state": "READY"} in index
