"""The server process's end of the gRPC relay, and the supervisor of the front-end processes.

``RelayHub`` listens on a Unix socket and answers every relayed call with the server's own
``InferenceServicer`` (same code, same statistics, same errors as a call on the server's own gRPC
port); ``FrontEnds`` starts the front-end processes (``ember.serve.relay.frontend``), watches
them and stops them. The frames are ``ember.serve.relay.wire``'s.

Life cycle: the hub holds the port (bound, not listening) until every front end listens on it;
a front end that exits while the server runs is started again at once. Meanwhile its share of
new connections goes to the other front ends (``SO_REUSEPORT``: the kernel spreads connections
over the listeners left); when it was the last one, the server process listens on the port itself
(``servicer_server``, the same service in this process) until a front end is back, so the port
never refuses connections for the second a new front end takes to start. On shutdown the hub
stops the front ends first (SIGTERM: they stop taking calls and finish the ones in flight, which
the hub still answers), then the server drains its queues. A front end whose hub goes away fails
its calls with UNAVAILABLE and exits.

Model-control calls carry their ``authorization`` metadata through the relay (``AUTHED``
frames), so the server checks its model-control token for them as for its own gRPC port.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import grpc

from ember.serve.errors import InferenceFailedError, ServeError, client_message, internal_error
from ember.serve.grpc_service import RelayedContext, bind_server, unbound_server
from ember.serve.limits import DEFAULT_LIMITS, Limits
from ember.serve.proto import messages, service_methods
from ember.serve.relay.wire import (
    AUTH_HEAD,
    AUTHED,
    BLOCK,
    BLOCK_COUNT,
    CONTROL_METHODS,
    DEFAULT_STAGING_MB,
    HELLO,
    METHODS,
    POOL,
    POOL_SIZE,
    STAGED_INFER,
    FrameReader,
    encode,
)
from ember.serve.shm import REGIONS, owned_prefix

log = logging.getLogger("ember.serve")

#: what ``FrontEnds`` runs with ``python -m`` in each front-end process
FRONT_END_MODULE = "ember.serve.relay.frontend"


def auto_front_ends(cpus: int | None = None) -> int:
    """The default number of gRPC front-end processes: none on small machines (the server's own
    gRPC service is enough there), else a quarter of the CPUs, at most 4."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return 0 if cpus < 8 else min(4, cpus // 4)


class _HubConnection(asyncio.Protocol):
    def __init__(self, hub: RelayHub) -> None:
        self.hub = hub
        self.frames = FrameReader()
        self.transport: Any = None
        self.pid: int | None = None
        self.pool: Any | None = None  # the front end's staging pool, mapped here

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.hub._connections.add(self)

    def data_received(self, data: bytes) -> None:
        for call, method, payload in self.frames.feed(data):
            if method == HELLO:
                self.pid = int(payload.decode() or 0)
                self.hub._hello(self.pid)
                continue
            if method == POOL:
                self._map_pool(payload)
                continue
            if method == STAGED_INFER:
                task = asyncio.ensure_future(self.hub.answer_staged(self.pool, payload))
            elif method == AUTHED:
                task = asyncio.ensure_future(self.hub.answer_authed(payload))
            else:
                task = asyncio.ensure_future(self.hub.answer(method, payload))
            task.add_done_callback(functools.partial(self._reply, call))

    def _reply(self, call: int, task: asyncio.Future) -> None:
        code, payload = task.result()
        if not self.transport.is_closing():
            self.transport.write(encode(call, code, payload))

    def _map_pool(self, payload: bytes) -> None:
        (size,) = POOL_SIZE.unpack_from(payload)
        path = payload[POOL_SIZE.size:].decode()
        try:
            self.pool = REGIONS.open(path, size)
        except (OSError, ValueError) as exc:  # its staged calls fail with a message, nothing else
            log.error("ember serve: cannot map the staging pool of gRPC front end %s: %s", self.pid, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub._connections.discard(self)
        self.hub._lost(self.pid)
        if self.pool is not None:  # a front end that died could not remove its pool's file
            REGIONS.close(self.pool.path, unlink=True)
            self.pool = None


class RelayHub:
    """The server process's end of the relay: answers relayed calls with ``servicer``'s methods
    (an ``InferenceServicer``) and knows which front ends are connected."""

    def __init__(self, servicer: Any, path: str) -> None:
        self.servicer = servicer
        self.path = path
        self.connected: set[int] = set()
        self._changed = asyncio.Event()
        self._server: Any = None
        self._connections: set[_HubConnection] = set()
        self._methods = [(name, *service_methods()[name]) for name in METHODS]
        self._infer_request = messages()["ModelInferRequest"]
        self.staged_calls = 0  # ModelInfer calls whose tensors came through a staging pool
        #: called when a front end's connection is lost (``FrontEnds`` covers the port then)
        self.on_lost: Callable[[], None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _HubConnection(self), self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):  # the front ends see the server go and exit
                conn.transport.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def answer(self, method: int, payload: bytes) -> tuple[int, bytes]:
        """``(0, serialized response)`` or ``(gRPC status code, message)``."""
        if method >= len(self._methods):
            return grpc.StatusCode.UNIMPLEMENTED.value[0], f"unknown relayed method {method}".encode()
        name, request_cls, _ = self._methods[method]
        try:
            request = request_cls.FromString(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError (and others)
            return (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the {name} request is not a valid protobuf message: {exc}".encode())
        return await self._respond(name, getattr(self.servicer, name)(request, None))

    async def _respond(self, name: str, call: Any) -> tuple[int, bytes]:
        try:
            response = await call
            return 0, response.SerializeToString()
        except ServeError as exc:
            message = client_message(exc)
            if not isinstance(exc, InferenceFailedError):  # those were logged with their id
                log.info("gRPC %s %s (relayed): %s", exc.grpc_code.name, name, message[:300])
            return exc.grpc_code.value[0], message.encode()
        except Exception as exc:  # noqa: BLE001 - a bug must still answer the call
            err = internal_error(f"answering relayed gRPC {name}", exc)
            return grpc.StatusCode.INTERNAL.value[0], str(err).encode()

    async def answer_authed(self, payload: bytes) -> tuple[int, bytes]:
        """A model-control call with the ``authorization`` metadata its client sent."""
        if len(payload) < AUTH_HEAD.size:
            return grpc.StatusCode.INTERNAL.value[0], b"internal error: a short relayed control frame"
        method, size = AUTH_HEAD.unpack_from(payload)
        start = AUTH_HEAD.size + size
        if method >= len(self._methods) or self._methods[method][0] not in CONTROL_METHODS or len(payload) < start:
            return grpc.StatusCode.INTERNAL.value[0], b"internal error: a malformed relayed control frame"
        name, request_cls, _ = self._methods[method]
        try:
            request = request_cls.FromString(payload[start:])
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError (and others)
            return (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the {name} request is not a valid protobuf message: {exc}".encode())
        auth = payload[AUTH_HEAD.size:start].decode("utf-8", "replace")
        context = RelayedContext([("authorization", auth)] if auth else [])
        return await self._respond(name, getattr(self.servicer, name)(request, context))

    async def answer_staged(self, pool: Any, payload: bytes) -> tuple[int, bytes]:
        """A ``ModelInfer`` call whose raw_input_contents lie in the front end's pool."""
        if pool is None:
            return (grpc.StatusCode.INTERNAL.value[0],
                    b"internal error: a staged call came from a front end whose pool is not mapped")
        (count,) = BLOCK_COUNT.unpack_from(payload)
        pos = BLOCK_COUNT.size + count * BLOCK.size
        view = memoryview(pool.map)
        raw = []
        for i in range(count):
            offset, size = BLOCK.unpack_from(payload, BLOCK_COUNT.size + i * BLOCK.size)
            if offset + size > pool.size:
                return (grpc.StatusCode.INTERNAL.value[0],
                        b"internal error: a staged block lies outside its pool")
            raw.append(view[offset:offset + size])
        try:
            request = self._infer_request.FromString(payload[pos:])
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError (and others)
            return (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                    f"the ModelInfer request is not a valid protobuf message: {exc}".encode())
        self.staged_calls += 1
        return await self._respond("ModelInfer", self.servicer.ModelInfer(request, None, raw))

    def _hello(self, pid: int) -> None:
        self.connected.add(pid)
        self._changed.set()

    def _lost(self, pid: int | None) -> None:
        if pid is not None:
            self.connected.discard(pid)
            self._changed.set()
            if self.on_lost is not None:
                self.on_lost()

    async def wait_for(self, pids: set[int], timeout: float) -> bool:
        """Waits until every pid in ``pids`` has said hello; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while not pids <= self.connected:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return True


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``: it holds the port
    (0: a free one) until the front ends listen on it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind the gRPC port {host}:{port} ({exc.strerror}); is another server "
                      f"using it?") from exc
    return sock


class FrontEnds:
    """Starts, watches and stops the gRPC front-end processes of a server (see module docstring)."""

    def __init__(self, servicer: Any, count: int, host: str, port: int,
                 shutdown_timeout_s: float = 60.0, start_timeout_s: float = 60.0,
                 staging_mb: int = DEFAULT_STAGING_MB, limits: Limits = DEFAULT_LIMITS,
                 cover: bool = True) -> None:
        if count < 1:
            raise ValueError(f"FrontEnds needs at least one process, got {count}")
        if staging_mb < 0:
            raise ValueError(f"the staging pool size must be >= 0 MiB, got {staging_mb}")
        self.count, self.host, self.staging_mb = count, host, staging_mb
        self.limits = limits
        #: whether the server process listens on the port while no front end does (see above)
        self.cover = cover
        self.shutdown_timeout_s, self.start_timeout_s = shutdown_timeout_s, start_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix=owned_prefix("serve"))
        self.hub = RelayHub(servicer, str(Path(self._dir.name) / "hub.sock"))
        self._reserved = reserve_port(host, port)
        self.port = self._reserved.getsockname()[1]
        self.procs: list[subprocess.Popen] = []
        self.restarts = 0
        self._spawned = 0
        self._logs: dict[int, Path] = {}
        self._stopping = False
        self._watch: asyncio.Task | None = None
        self._lost_event = asyncio.Event()
        self._cover: Any = None  # the server process's own gRPC server while no front end listens
        self._next_cover: Any = None  # the one made ahead for next time (``_prepare_cover``)
        self._cover_task: asyncio.Task | None = None
        self.covered = 0  # times the server process covered the port
        self.hub.on_lost = self._front_end_lost

    async def start(self) -> None:
        """Starts the hub and the processes; returns once all of them listen on the port."""
        await self.hub.start()
        try:
            self.procs = [self._spawn() for _ in range(self.count)]
            await self._wait_ready(self.procs)
        except BaseException:
            await self.stop()
            raise
        self._reserved.close()  # the front ends hold the port now
        self._check_pools()
        self._prepare_cover()
        self._watch = asyncio.create_task(self._watch_loop(), name="ember-grpc-front-ends")

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])  # the folder holding the ember package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", FRONT_END_MODULE, "--hub", self.hub.path, "--host", self.host,
               "--port", str(self.port), "--grace", str(self.shutdown_timeout_s),
               "--staging-mb", str(self.staging_mb),
               "--grpc-options", json.dumps(self.limits.grpc_server_options()),
               "--max-concurrent-rpcs", str(self.limits.grpc_max_concurrent_rpcs)]
        self._spawned += 1
        log_path = Path(self._dir.name) / f"front-end-{self._spawned}.log"
        with open(log_path, "wb") as log_file:  # a file, not a pipe: a full pipe would block it
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT)
        self._logs[proc.pid] = log_path
        return proc

    def _log_tail(self, proc: subprocess.Popen, limit: int = 1500) -> str:
        path = self._logs.get(proc.pid)
        try:
            return path.read_text(errors="replace").strip()[-limit:] if path else ""
        except OSError:
            return ""

    async def _wait_ready(self, procs: list[subprocess.Popen]) -> None:
        pids = {p.pid for p in procs}
        deadline = time.monotonic() + self.start_timeout_s
        while not await self.hub.wait_for(pids, 0.2):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise OSError(f"a gRPC front-end process exited with status {dead[0].returncode} while "
                              f"starting: {self._log_tail(dead[0]) or 'no message'}")
            if time.monotonic() > deadline:
                raise OSError(f"the gRPC front-end processes did not start within "
                              f"{self.start_timeout_s:.0f} s")

    def _check_pools(self) -> None:
        """Says so when a front end runs without its staging pool (e.g. /dev/shm too small)."""
        if not self.staging_mb:
            return
        by_pid = {p.pid: p for p in self.procs}
        for conn in self.hub._connections:
            if conn.pool is None and conn.pid in by_pid:
                log.warning("ember serve: gRPC front end %d has no staging pool; large tensors travel in "
                            "the relayed messages (slower): %s", conn.pid,
                            self._log_tail(by_pid[conn.pid], 400) or "no message")

    def _front_end_lost(self) -> None:
        """A front end's connection to the hub dropped: it died or is stopping. While none is
        left listening, the server process serves the port itself; the watch loop restarts it."""
        self._lost_event.set()
        if self._stopping or not self.cover or self.hub.connected or self._cover is not None:
            return
        if self._cover_task is None or self._cover_task.done():
            self._cover_task = asyncio.ensure_future(self._start_cover())

    def _prepare_cover(self) -> None:
        """The server that covers the port next time, made now: at need it only binds and starts."""
        if self.cover and self._next_cover is None:
            self._next_cover = unbound_server(self.hub.servicer, self.limits, reuse_port=True)

    async def _start_cover(self) -> None:
        try:
            self._prepare_cover()
            server, self._next_cover = self._next_cover, None
            bind_server(server, self.host, self.port)
            await server.start()
        except Exception as exc:  # noqa: BLE001 - the front end's restart still comes
            log.error("ember serve: cannot serve the gRPC port from the server process while its front "
                      "ends restart: %s", exc)
            return
        self._cover = server
        self.covered += 1
        log.warning("ember serve: no gRPC front end listens; the server process serves port %d itself "
                    "until one is back", self.port)
        if self.hub.connected or self._stopping:
            await self._stop_cover()

    async def _stop_cover(self) -> None:
        server, self._cover = self._cover, None
        if server is not None:  # its clients move to the front ends (GOAWAY); calls in progress finish
            await server.stop(self.shutdown_timeout_s)
            if not self._stopping:
                self._prepare_cover()

    async def _watch_loop(self) -> None:
        """Starts a front end again as soon as one exits while the server runs."""
        while not self._stopping:
            try:
                await asyncio.wait_for(self._lost_event.wait(), 0.5)
            except TimeoutError:
                pass
            self._lost_event.clear()
            await self._restart_exited()
            if self.hub.connected and self._cover is not None:
                log.info("ember serve: a gRPC front end listens again; the server process stops serving "
                         "port %d", self.port)
                await self._stop_cover()

    async def _restart_exited(self) -> None:
        """Starts a new process for every front end that exited, all at once."""
        for _ in range(50):  # a front end whose hub connection dropped is exiting: its status comes
            if all(p.poll() is not None or p.pid in self.hub.connected for p in self.procs):
                break
            await asyncio.sleep(0.01)
        fresh = []
        for i, p in enumerate(self.procs):
            if self._stopping or p.poll() is None:
                continue
            err = self._log_tail(p, 800)
            log.error("ember serve: gRPC front end %d (pid %d) exited with status %s; starting "
                      "another%s", i, p.pid, p.returncode, f": {err}" if err else "")
            self.restarts += 1
            self.procs[i] = self._spawn()
            fresh.append(self.procs[i])
        if fresh:
            try:
                await self._wait_ready(fresh)
            except OSError as exc:
                log.error("ember serve: %s", exc)

    async def stop(self) -> None:
        """Stops the processes (they finish their calls in flight, which the hub answers), then
        the hub."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._cover_task is not None:
            await asyncio.gather(self._cover_task, return_exceptions=True)
        await self._stop_cover()
        self._next_cover = None
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s + 5
        for p in self.procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if p.poll() is None:
                p.kill()
                p.wait()
        log.debug("ember serve: gRPC front ends stopped")
        await self.hub.close()
        self._reserved.close()
        self._dir.cleanup()
