"""Loading, reloading and unloading models over HTTP and gRPC; versions; the engine cache."""
from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

import ember
from ember.serve import ServerOptions, ServerThread

from servekit import fixed_model, matmul_relu_model, reference, write_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory, repository):
    root = tmp_path_factory.mktemp("mutable-repo")
    for name in ("simple", "queued"):
        shutil.copytree(repository / name, root / name)
    write_model(root, "versions", matmul_relu_model(), "max_batch_size: 4\nversion_policy: all\n", version=1)
    write_model(root, "versions", matmul_relu_model(), "max_batch_size: 4\nversion_policy: all\n", version=2)
    return root


@pytest.fixture(scope="module")
def srv(repo, cache_dir):
    with ServerThread(ServerOptions(repo, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                    model_control_mode="explicit")) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return th.InferenceServerClient(f"127.0.0.1:{srv.http_port}")


@pytest.fixture(scope="module")
def gclient(srv):
    return tg.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")


def infer(client, model, x, version=""):
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version).as_numpy("y")


def test_unload_then_load(client):
    x = np.ones((1, 4), np.float32)
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as info:
        infer(client, "simple", x)
    assert info.value.status() == "404"
    assert "load it with POST /v2/repository/models/simple/load" in info.value.message()
    index = {r["name"]: r for r in client.get_model_repository_index()}
    assert index["simple"]["state"] == "UNAVAILABLE" and index["simple"]["reason"] == "unloaded"
    client.load_model("simple")
    assert client.is_model_ready("simple") and client.is_server_ready()
    np.testing.assert_allclose(infer(client, "simple", x), reference(x), rtol=1e-5)


def test_load_with_a_config_from_the_request(client):
    client.load_model("simple", config=json.dumps({"max_batch_size": 2, "instance_count": 1}))
    cfg = client.get_model_config("simple")
    assert cfg["max_batch_size"] == 2 and "dynamic_batching" not in cfg
    with pytest.raises(InferenceServerException, match="max_batch_size 2"):
        infer(client, "simple", np.ones((3, 4), np.float32))
    client.load_model("simple")
    assert client.get_model_config("simple")["max_batch_size"] == 8


def test_failed_reload_keeps_the_old_versions_serving(client, repo):
    path = repo / "simple" / "config.yaml"
    good = path.read_text()
    path.write_text("max_batch_size: 8\ninstance_count: zero\n")
    try:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("simple")
        assert info.value.status() == "400" and "instance_count" in info.value.message()
        # named relative to the repository: the server's folders are not the client's business
        assert "simple/config.yaml" in info.value.message() and str(repo) not in info.value.message()
    finally:
        path.write_text(good)
    assert client.is_model_ready("simple")
    infer(client, "simple", np.ones((1, 4), np.float32))


def test_load_unknown_model_and_unload_unknown_model(client):
    with pytest.raises(InferenceServerException) as info:
        client.load_model("ghost")
    assert info.value.status() == "404" and "not in the model repository" in info.value.message()
    assert "/" not in info.value.message()  # no server path in a 404
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("ghost")
    assert info.value.status() == "404"


def test_model_added_at_run_time(client, repo):
    write_model(repo, "late", fixed_model(), "{}\n")
    client.load_model("late")
    x = np.ones((2, 3), np.float32)
    inp = th.InferInput("x", [2, 3], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("late", [inp]).as_numpy("y"), x * 2)


def test_versions(client):
    meta = client.get_model_metadata("versions")
    assert meta["versions"] == ["1", "2"]
    x = np.ones((1, 4), np.float32)
    for v in ("1", "2", ""):
        np.testing.assert_allclose(infer(client, "versions", x, v), reference(x), rtol=1e-5)
    stats = client.get_inference_statistics("versions")["model_stats"]
    assert {(s["version"], s["inference_count"]) for s in stats} == {("1", 1), ("2", 2)}   # "" = latest


def test_unload_answers_the_queued_requests(srv, client):
    x = np.ones((1, 4), np.float32)
    got: dict = {}

    def send():   # tritonclient.http clients are gevent-based: one per thread
        got["y"] = infer(th.InferenceServerClient(f"127.0.0.1:{srv.http_port}"), "queued", x)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.time() + 5
    while srv.core.repository.get("queued").scheduler.queue_size == 0 and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.time()
    client.unload_model("queued")       # the request waits for a 1 s batching delay: unload flushes it
    t.join()
    assert time.time() - t0 < 0.9
    np.testing.assert_allclose(got["y"], reference(x), rtol=1e-5)
    client.load_model("queued")


def test_grpc_load_and_unload(gclient):
    gclient.unload_model("simple")
    assert not gclient.is_model_ready("simple")
    gclient.load_model("simple", config=json.dumps({"max_batch_size": 4}))
    assert gclient.get_model_config("simple").config.max_batch_size == 4
    gclient.load_model("simple")
    assert gclient.is_model_ready("simple")


def test_engine_is_cached_by_content(client, cache_dir):
    client.load_model("simple")
    before = {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("simple-1-*.ember")}
    client.load_model("simple")           # same files and build config: the cached engine, not a rebuild
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("simple-1-*.ember")} == before
    client.load_model("simple", config=json.dumps({"max_batch_size": 3}))   # another profile: a new engine
    assert len(list(cache_dir.glob("simple-1-*.ember"))) == len(before) + 1
    client.load_model("simple")


def test_serves_an_engine_file(tmp_path, cache_dir):
    onnx_path = tmp_path / "m.onnx"
    onnx.save(matmul_relu_model(), onnx_path)
    engine = ember.build(str(onnx_path), ember.BuildConfig(profiles={"x": ((1, 4), (2, 4), (4, 4))}))
    (tmp_path / "repo" / "eng" / "3").mkdir(parents=True)
    engine.save(tmp_path / "repo" / "eng" / "3" / "model.ember")
    (tmp_path / "repo" / "eng" / "config.yaml").write_text("max_batch_size: 4\n")
    with ServerThread(ServerOptions(tmp_path / "repo", http_port=0, grpc_port=-1, metrics_port=-1,
                                    cache_dir=cache_dir)) as s:
        c = th.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        assert c.get_model_config("eng")["default_model_filename"] == "model.ember"
        x = np.ones((4, 4), np.float32)
        np.testing.assert_allclose(infer(c, "eng", x, "3"), reference(x), rtol=1e-5)


def test_a_broken_model_leaves_the_server_live_not_ready(tmp_path, repository, cache_dir):
    shutil.copytree(repository / "simple", tmp_path / "simple")
    write_model(tmp_path, "broken", matmul_relu_model(), "max_batch_size: 8\ninputs:\n  - {name: wrong}\n")
    with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=-1, metrics_port=-1, cache_dir=cache_dir,
                                    model_control_mode="explicit")) as s:
        c = th.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        assert c.is_server_live() and not c.is_server_ready()
        r = httpx.get(f"http://127.0.0.1:{s.http_port}/v2/health/ready")
        assert r.status_code == 400 and "broken" in r.json()["error"]
        assert c.is_model_ready("simple") and not c.is_model_ready("broken")
        index = {row["name"]: row for row in c.get_model_repository_index()}
        assert index["broken"]["state"] == "UNAVAILABLE" and "'x'" in index["broken"]["reason"]
        c.unload_model("broken")
        assert c.is_server_ready()
