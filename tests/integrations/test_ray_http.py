"""The KServe v2 apps the Serve replicas answer with, without Ray: a model's endpoints under its
prefix, request timeouts, the front door's readiness and its 404s."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ember.integrations.ray.http import front_app, model_app
from ember.integrations.ray.replica import ModelReplica, resolve_model

PREFIX = "/v2/models/mlp"


@pytest.fixture(scope="module")
def replica(repository, cache_dir):
    r = ModelReplica(resolve_model(repository / "mlp", cache_dir))
    yield r
    r.close()


def _client(replica, delay_s: float = 0.0) -> TestClient:
    async def infer(pending):
        await asyncio.sleep(delay_s)
        return await replica.run_alone(pending)
    return TestClient(model_app(replica, infer), root_path=PREFIX)


def _body(x: np.ndarray, **params) -> str:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], "parameters": params})


def test_model_endpoints_under_the_models_prefix(replica, mlp_engine):
    client = _client(replica)
    for path in (PREFIX, PREFIX + "/", PREFIX + "/versions/1"):
        assert client.get(path).json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert client.get(PREFIX + "/ready").json() == {"name": "mlp", "ready": True}
    assert client.get(PREFIX + "/config").json()["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
    x = np.random.default_rng(8).standard_normal((3, 16)).astype(np.float32)
    answer = client.post(PREFIX + "/versions/1/infer", content=_body(x)).json()
    with mlp_engine.create_context() as ctx:
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(3, 8),
                                   ctx.infer({"x": x})["y"], rtol=1e-6, atol=1e-7)
    missing = client.get(PREFIX + "/versions/2")
    assert missing.status_code == 404 and "served version is 1" in missing.json()["error"]
    assert client.get(PREFIX + "/stats").status_code == 404


def test_bad_bodies_and_timeouts_are_answered(replica):
    client = _client(replica, delay_s=0.5)
    bad = client.post(PREFIX + "/infer", content=b"{not json")
    assert bad.status_code == 400 and "malformed" in bad.json()["error"]
    slow = client.post(PREFIX + "/infer", content=_body(np.zeros((1, 16), np.float32), timeout=100_000))
    assert slow.status_code == 503 and "within its timeout of 100000 us" in slow.json()["error"]


def test_front_door_readiness_and_unknown_models():
    states = {"mlp": None, "pair": "DEPLOYING"}

    async def readiness():
        return dict(states)

    client = TestClient(front_app(["mlp", "pair"], {"broken": "broken: no version folder"}, readiness))
    assert client.get("/v2/health/live").json() == {"live": True}
    not_ready = client.get("/v2/health/ready")
    assert not_ready.status_code == 400 and "model 'pair': DEPLOYING" in not_ready.json()["error"]
    states["pair"] = None
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_configuration"]
    unknown = client.post("/v2/models/nope/infer")
    assert unknown.status_code == 404 and "serves: mlp, pair" in unknown.json()["error"]
    assert "not ready: broken: no version folder" in client.get("/v2/models/broken").json()["error"]
    assert client.post("/v2/repository/models/mlp/load").status_code == 403
