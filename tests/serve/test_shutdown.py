"""``ember serve`` (and ``python -m ember.serve``) in a process of its own: SIGTERM/SIGINT drain the queue, every queued
request is answered, and the process exits cleanly."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ember.serve.launch import PORTS_LINE, ServeLaunchError, launch_server

from servekit import matmul_relu_model, reference, write_model


@pytest.mark.parametrize("sig, entry", [(signal.SIGTERM, "ember.cli"), (signal.SIGINT, "ember.serve")])
def test_signal_drains_the_queue(tmp_path, cache_dir, sig, entry):
    write_model(tmp_path, "drain", matmul_relu_model(),
                "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_microseconds: 5000000\n")
    with launch_server(tmp_path, entry=entry, cache_dir=cache_dir) as server:
        url = f"http://127.0.0.1:{server.http_port}/v2/models/drain/infer"
        results: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            x = [[float(i)] * 4]
            results[i] = httpx.post(url, json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                           "data": x}]}, timeout=30)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
        while 'nv_inference_pending_request_count{model="drain",version="1"} 4' not in httpx.get(metrics).text:
            assert time.time() < deadline, "the requests never reached the queue"
            time.sleep(0.02)
        t0 = time.time()
        server.proc.send_signal(sig)
        for t in threads:
            t.join(30)
        assert time.time() - t0 < 4.0        # answered by the drain, not after the 5 s batching delay
        assert server.wait(30) == 0, server.output()
    lines = server.lines
    for i, r in results.items():
        assert r.status_code == 200, r.text
        y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, reference(np.full((1, 4), i, np.float32)), rtol=1e-5)
    assert len(results) == 4
    assert any("shutting down" in line for line in lines) and any("stopped" in line for line in lines)


def test_bad_repository_exits_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "serve", str(tmp_path / "missing"), "--http-port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1
    assert "is not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_launch_reports_a_server_that_exits_before_ready(tmp_path):
    """The launcher's error carries the server's own message, not a bare timeout."""
    with pytest.raises(ServeLaunchError, match=r"exited with status 1 before it was ready(?s:.*)is not a folder"):
        launch_server(tmp_path / "missing", ready_timeout=60)


def test_leaving_the_block_stops_the_server_cleanly(tmp_path, cache_dir):
    (tmp_path / "repo").mkdir()
    with launch_server(tmp_path / "repo", cache_dir=cache_dir, extra_args=["--grpc-port", "-1"]) as server:
        assert server.ports["grpc"] == -1 and server.http_port > 0
        assert httpx.get(f"http://127.0.0.1:{server.http_port}/v2/health/ready").status_code == 200
    assert server.proc.returncode == 0, server.output()
    assert "ember serve: stopped" in server.output()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "localhost"])
def test_ports_line_matches_every_host_form(host):
    line = f"2026-01-01 INFO ember serve: HTTP {host}:8000, gRPC {host}:-1, metrics {host}:8002"
    assert PORTS_LINE.search(line).groups() == ("8000", "-1", "8002")
