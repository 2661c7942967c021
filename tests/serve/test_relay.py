"""gRPC front-end processes (``--grpc-front-ends``): every gRPC test passes through them as well,
they share the port, come back when one dies, exit when the server goes, and drain on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg

from ember.serve import ServerOptions, ServerThread
from ember.serve.launch import launch_server
from ember.serve.relay.hub import FRONT_END_MODULE, FrontEnds, auto_front_ends
from ember.serve.relay.wire import HEADER, HELLO, METHODS, FrameReader, encode

from servekit import matmul_relu_model, reference, write_model

# isort: split
# the whole gRPC suite again, through two front-end processes (this module's ``server`` fixture)
from test_concurrency import test_concurrent_clients_are_all_answered_and_counted  # noqa: E402,F401
from test_grpc import *  # noqa: E402,F401,F403


@pytest.fixture(scope="module")
def server(repository, cache_dir):
    with ServerThread(ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0,
                                    cache_dir=cache_dir, log_level="warning", grpc_front_ends=2)) as srv:
        yield srv


def test_front_ends_serve_the_port(server):
    fe = server.server.front_ends
    assert fe is not None and len(fe.procs) == 2 and all(p.poll() is None for p in fe.procs)
    assert fe.port == server.grpc_port and len(fe.hub.connected) == 2
    assert server.server._grpc is None  # the server process itself does not speak gRPC


def test_frames_split_across_reads_and_joined():
    frames = encode(1, 5, b"abc") + encode(2, HELLO, b"") + encode(3, 0, b"x" * 100_000)
    reader = FrameReader()
    got = []
    for i in range(0, len(frames), 7777):  # arbitrary chunking, as a socket delivers
        got += reader.feed(frames[i:i + 7777])
    assert got == [(1, 5, b"abc"), (2, HELLO, b""), (3, 0, b"x" * 100_000)]
    assert HEADER.size == 10 and METHODS.index("ModelInfer") >= 0


def test_auto_count():
    assert auto_front_ends(2) == 0 and auto_front_ends(4) == 0
    assert auto_front_ends(8) == 2 and auto_front_ends(16) == 4 and auto_front_ends(128) == 4


@pytest.mark.parametrize("module", [FRONT_END_MODULE, "ember.serve.relay"])
def test_front_end_entry_points(module):
    """What ``FrontEnds`` spawns runs (and the package's old ``python -m`` name still does)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--hub" in done.stdout and "--staging-mb" in done.stdout


def test_a_dead_front_end_is_replaced(server):
    fe = server.server.front_ends
    victim = fe.procs[0]
    victim.kill()
    deadline = time.time() + 30
    while fe.procs[0] is victim or fe.procs[0].pid not in fe.hub.connected:
        assert time.time() < deadline, "the front end was not started again"
        time.sleep(0.05)
    assert fe.restarts >= 1
    # new connections are served (by either process), with the right answers
    for i in range(8):
        c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = np.full((1, 4), float(i), np.float32)
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer("simple", [inp]).as_numpy("y"), reference(x), rtol=1e-5)
        c.close()


class _LiveServicer:
    """Answers ServerLive: enough of a servicer for the hub."""

    async def ServerLive(self, request, context):
        from ember.serve.proto import messages

        return messages()["ServerLiveResponse"](live=True)


def test_front_end_exits_when_its_server_goes(tmp_path):
    async def scenario() -> int:
        fe = FrontEnds(_LiveServicer(), 1, "127.0.0.1", 0, shutdown_timeout_s=5, cover=False)  # no full servicer
        await fe.start()
        proc = fe.procs[0]
        stub = grpc.aio.insecure_channel(f"127.0.0.1:{fe.port}")
        live = stub.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
        assert await live(b"") == b"\x08\x01"
        fe._stopping = True  # no restart: the server process "goes away"
        fe._watch.cancel()
        await fe.hub.close()
        deadline = time.time() + 20
        while proc.poll() is None:
            assert time.time() < deadline, "the front end outlived its server"
            await asyncio.sleep(0.05)
        await stub.close()
        await fe.stop()
        return proc.returncode

    assert asyncio.run(scenario()) == 1


def test_sigterm_drains_through_front_ends(tmp_path, cache_dir):
    write_model(tmp_path, "drain", matmul_relu_model(),
                "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_microseconds: 5000000\n")
    with launch_server(tmp_path, cache_dir=cache_dir, extra_args=["--grpc-front-ends", "2"]) as server:
        line = next(line for line in server.lines if "front-end processes" in line)
        pids = [int(p) for p in line.split("pids ")[1].strip(" )\n").split(", ")]
        results: dict[int, object] = {}

        def send(i: int) -> None:
            c = tg.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
            x = np.full((1, 4), float(i), np.float32)
            inp = tg.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            try:
                results[i] = c.infer("drain", [inp]).as_numpy("y")
            except Exception as exc:  # noqa: BLE001 - asserted below
                results[i] = exc
            c.close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the four wait in the queue for the 5 s batching delay
        t0 = time.time()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert time.time() - t0 < 4.0
        assert server.wait(30) == 0, server.output()
    for i in range(4):
        assert isinstance(results[i], np.ndarray), results[i]
        np.testing.assert_allclose(results[i], reference(np.full((1, 4), float(i), np.float32)), rtol=1e-5)
    assert len(pids) == 2
    for pid in pids:  # no front end left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
