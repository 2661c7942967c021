"""Many concurrent clients over HTTP and gRPC: every request answered with its own result, batched
together, and counted exactly once in the metrics."""
from __future__ import annotations

import re
import threading

import httpx
import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th

from servekit import reference

CLIENTS = 32
REQUESTS = 8


def metric(text: str, name: str, model: str = "simple") -> int:
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\d+)$', text, re.M)
    assert m, f"{name} for {model} missing from /metrics"
    return int(m.group(1))


def scrape(server) -> str:
    return httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text


def client_loop(server, index: int, errors: list, batches: list) -> None:
    rng = np.random.default_rng(index)
    use_grpc = index % 2 == 1
    mod = tg if use_grpc else th
    client = mod.InferenceServerClient(f"127.0.0.1:{server.grpc_port if use_grpc else server.http_port}")
    try:
        for i in range(REQUESTS):
            batch = int(rng.integers(1, 4))
            x = rng.standard_normal((batch, 4)).astype(np.float32) + index * 100 + i   # unique per request
            inp = mod.InferInput("x", [batch, 4], "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("simple", [inp], request_id=f"{index}-{i}").as_numpy("y")
            if not np.allclose(y, reference(x), rtol=1e-5, atol=1e-4):
                errors.append(f"client {index} request {i}: wrong result")
            batches.append(batch)
    except Exception as exc:  # reported below, with the client that saw it
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


def test_concurrent_clients_are_all_answered_and_counted(server):
    before = scrape(server)
    errors: list[str] = []
    batches: list[int] = []
    threads = [threading.Thread(target=client_loop, args=(server, i, errors, batches)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert len(batches) == CLIENTS * REQUESTS
    after = scrape(server)

    def delta(name: str) -> int:
        return metric(after, name) - metric(before, name)

    assert delta("nv_inference_request_success") == CLIENTS * REQUESTS
    assert delta("nv_inference_request_failure") == 0
    assert delta("nv_inference_count") == sum(batches)
    assert 0 < delta("nv_inference_exec_count") < CLIENTS * REQUESTS       # the batcher merged requests
    assert delta("nv_inference_queue_duration_us") > 0
    assert delta("nv_inference_compute_infer_duration_us") > 0
    assert metric(after, "nv_inference_pending_request_count") == 0
    stats = th.InferenceServerClient(f"127.0.0.1:{server.http_port}").get_inference_statistics("simple")
    s = stats["model_stats"][0]
    assert s["inference_stats"]["success"]["count"] == metric(after, "nv_inference_request_success")
    assert s["execution_count"] == metric(after, "nv_inference_exec_count")
    assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == s["execution_count"]
