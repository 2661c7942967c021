"""``ember serve`` (and ``python -m ember.serve``) in a process of its own: SIGTERM/SIGINT drain the queue, every queued
request is answered, and the process exits cleanly."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from servekit import matmul_relu_model, reference, write_model

READY = re.compile(r"HTTP [\d.]+:(\d+), gRPC [\d.]+:(\d+), metrics [\d.]+:(\d+)")


def start_server(repo: Path, cache_dir: Path, entry: list[str]) -> tuple[subprocess.Popen, list[str], dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *entry, str(repo), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--cache-dir", str(cache_dir)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    ports: dict = {}
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = READY.search(line)
            if m:
                ports.update(http=int(m.group(1)), grpc=int(m.group(2)), metrics=int(m.group(3)))
            if "ember serve: ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        pytest.fail("server did not become ready:\n" + "".join(lines))
    return proc, lines, ports


@pytest.mark.parametrize("sig, entry", [(signal.SIGTERM, ["ember.cli", "serve"]), (signal.SIGINT, ["ember.serve"])])
def test_signal_drains_the_queue(tmp_path, cache_dir, sig, entry):
    write_model(tmp_path, "drain", matmul_relu_model(),
                "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_microseconds: 5000000\n")
    proc, lines, ports = start_server(tmp_path, cache_dir, entry)
    url = f"http://127.0.0.1:{ports['http']}/v2/models/drain/infer"
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        x = [[float(i)] * 4]
        results[i] = httpx.post(url, json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]},
                                timeout=30)

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        while 'nv_inference_pending_request_count{model="drain",version="1"} 4' not in httpx.get(metrics).text:
            assert time.time() < deadline, "the requests never reached the queue"
            time.sleep(0.02)
        t0 = time.time()
        os.kill(proc.pid, sig)
        for t in threads:
            t.join(30)
        assert time.time() - t0 < 4.0        # answered by the drain, not after the 5 s batching delay
        assert proc.wait(30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
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
