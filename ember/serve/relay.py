"""gRPC front-end processes: the gRPC protocol work spread over several interpreters.

One Python process tops out at a few thousand gRPC requests/s: ``grpc.aio`` spends a few hundred
microseconds of interpreter time on every call, and that time competes with the batcher and the
model instances for the one interpreter lock. With ``--grpc-front-ends N`` the server starts N
*front-end processes* that listen on the gRPC port together (``SO_REUSEPORT``: the kernel spreads
client connections over them) and do all of gRPC's work. They know nothing of models: every call
is relayed, as the serialized request message, over a Unix socket to the server process (the
*hub*), which decodes it and answers it exactly as its own gRPC service would (same code, same
statistics, same errors), and sends back the serialized response or the error's code and
message. The server process keeps everything with state: the repository, the batchers, the
instances, the statistics; and it answers only relay frames, a few tens of microseconds each.

Wire format on the Unix socket, little-endian, both directions::

    frame  = header payload
    header = u32 payload length, u32 call id, u16 method (request) or status (reply)

A request's method is its index in ``METHODS``; ``HELLO`` announces a front end (payload: its
pid). A reply's status is 0 with the serialized response, or a gRPC status code number with the
error message in UTF-8.

Staged tensors: each front end owns a staging pool in shared memory (``--staging-mb``,
``ember.serve.shm``), announced once with ``POOL`` (payload: u64 size, path). A ``ModelInfer``
call whose raw tensor bytes are large is relayed as ``STAGED_INFER``: the front end copies its
``raw_input_contents`` into the pool and sends ``u16 count, count x (u64 offset, u64 size)`` and
the rest of the message. The hub reads the tensors in place (no copy in the server process) and a
CUDA instance process copies them to the GPU straight from the pool; the front end frees the
block when the reply comes. Without room in the pool, a call is relayed whole, as before.

Life cycle: the hub holds the port (bound, not listening) until every front end listens on it;
a front end that exits while the server runs is started again; on shutdown the hub stops the
front ends first (SIGTERM: they stop taking calls and finish the ones in flight, which the hub
still answers), then the server drains its queues. A front end whose hub goes away fails its
calls with UNAVAILABLE and exits.

    python -m ember.serve.relay --hub /tmp/ember-hub.sock --host 127.0.0.1 --port 8001
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import grpc

from ember.serve.errors import ServeError
from ember.serve.proto import SERVICE_NAME, messages, service_methods
from ember.serve.shm import REGIONS, StagingPool, aligned, split_raw_inputs

log = logging.getLogger("ember.serve")

HEADER = struct.Struct("<IIH")
#: the relayed RPCs, by index (the order of ``service_methods()``: the .proto's)
METHODS: tuple[str, ...] = tuple(service_methods())
HELLO = 0xFFFF
POOL = 0xFFFE
STAGED_INFER = 0xFFFD
_POOL = struct.Struct("<Q")
_COUNT = struct.Struct("<H")
_BLOCK = struct.Struct("<QQ")
#: relay a ModelInfer call through the staging pool from this many raw tensor bytes on
STAGE_MIN_BYTES = 16 << 10
DEFAULT_STAGING_MB = 32
_MAX_MESSAGE = 2**31 - 1
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def auto_front_ends(cpus: Optional[int] = None) -> int:
    """The default number of gRPC front-end processes: none on small machines (the server's own
    gRPC service is enough there), else a quarter of the CPUs, at most 4."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return 0 if cpus < 8 else min(4, cpus // 4)


def encode(call: int, code: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), call, code) + payload


class FrameReader:
    """Splits a byte stream into ``(call, code, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        frames, pos, buf = [], 0, self._buf
        with memoryview(buf) as view:  # one copy per payload (a bytearray slice would be two)
            while len(buf) - pos >= HEADER.size:
                size, call, code = HEADER.unpack_from(buf, pos)
                end = pos + HEADER.size + size
                if len(buf) < end:
                    break
                frames.append((call, code, bytes(view[pos + HEADER.size:end])))
                pos = end
        if pos:
            del buf[:pos]
        return frames


# ---- the hub: the server process's end ------------------------------------------------------
class _HubConnection(asyncio.Protocol):
    def __init__(self, hub: "RelayHub") -> None:
        self.hub = hub
        self.frames = FrameReader()
        self.transport: Any = None
        self.pid: Optional[int] = None
        self.pool: Optional[Any] = None  # the front end's staging pool, mapped here

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
            else:
                task = asyncio.ensure_future(self.hub.answer(method, payload))
            task.add_done_callback(lambda t, call=call: self._reply(call, t))

    def _reply(self, call: int, task: asyncio.Future) -> None:
        code, payload = task.result()
        if not self.transport.is_closing():
            self.transport.write(encode(call, code, payload))

    def _map_pool(self, payload: bytes) -> None:
        (size,) = _POOL.unpack_from(payload)
        path = payload[_POOL.size:].decode()
        try:
            self.pool = REGIONS.open(path, size)
        except (OSError, ValueError) as exc:  # its staged calls fail with a message, nothing else
            log.error("ember serve: cannot map the staging pool of gRPC front end %s: %s", self.pid, exc)

    def connection_lost(self, exc: Optional[Exception]) -> None:
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
            return exc.grpc_code.value[0], str(exc).encode()
        except Exception as exc:  # noqa: BLE001 - a bug must still answer the call
            log.exception("relayed gRPC call %s failed", name)
            return grpc.StatusCode.INTERNAL.value[0], f"internal error: {type(exc).__name__}: {exc}".encode()

    async def answer_staged(self, pool: Any, payload: bytes) -> tuple[int, bytes]:
        """A ``ModelInfer`` call whose raw_input_contents lie in the front end's pool."""
        if pool is None:
            return (grpc.StatusCode.INTERNAL.value[0],
                    b"internal error: a staged call came from a front end whose pool is not mapped")
        (count,) = _COUNT.unpack_from(payload)
        pos = _COUNT.size + count * _BLOCK.size
        view = memoryview(pool.map)
        raw = []
        for i in range(count):
            offset, size = _BLOCK.unpack_from(payload, _COUNT.size + i * _BLOCK.size)
            if offset + size > pool.size:
                return grpc.StatusCode.INTERNAL.value[0], b"internal error: a staged block lies outside its pool"
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

    def _lost(self, pid: Optional[int]) -> None:
        if pid is not None:
            self.connected.discard(pid)
            self._changed.set()

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
            except asyncio.TimeoutError:
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
                 staging_mb: int = DEFAULT_STAGING_MB) -> None:
        if count < 1:
            raise ValueError(f"FrontEnds needs at least one process, got {count}")
        if staging_mb < 0:
            raise ValueError(f"the staging pool size must be >= 0 MiB, got {staging_mb}")
        self.count, self.host, self.staging_mb = count, host, staging_mb
        self.shutdown_timeout_s, self.start_timeout_s = shutdown_timeout_s, start_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="ember-serve-")
        self.hub = RelayHub(servicer, str(Path(self._dir.name) / "hub.sock"))
        self._reserved = reserve_port(host, port)
        self.port = self._reserved.getsockname()[1]
        self.procs: list[subprocess.Popen] = []
        self.restarts = 0
        self._spawned = 0
        self._logs: dict[int, Path] = {}
        self._stopping = False
        self._watch: Optional[asyncio.Task] = None

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
        self._watch = asyncio.create_task(self._watch_loop(), name="ember-grpc-front-ends")

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "ember.serve.relay", "--hub", self.hub.path, "--host", self.host,
               "--port", str(self.port), "--grace", str(self.shutdown_timeout_s),
               "--staging-mb", str(self.staging_mb)]
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

    async def _watch_loop(self) -> None:
        """Starts a front end again when one exits while the server runs."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for i, p in enumerate(self.procs):
                if self._stopping or p.poll() is None:
                    continue
                err = self._log_tail(p, 800)
                log.error("ember serve: gRPC front end %d (pid %d) exited with status %s; starting "
                          "another%s", i, p.pid, p.returncode, f": {err}" if err else "")
                self.restarts += 1
                self.procs[i] = self._spawn()
                try:
                    await self._wait_ready([self.procs[i]])
                except OSError as exc:
                    log.error("ember serve: %s", exc)

    async def stop(self) -> None:
        """Stops the processes (they finish their calls in flight, which the hub answers), then
        the hub."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
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
        await self.hub.close()
        self._reserved.close()
        self._dir.cleanup()


# ---- a front end: its own process -------------------------------------------------------------
class _Upstream:
    """The front end's connection to the hub: numbered calls in flight, replies matched to them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pending: dict[int, asyncio.Future] = {}
        self.staged: dict[int, tuple[int, int]] = {}  # call -> its block in the pool
        self.pool: Optional[StagingPool] = None
        self._next = 0
        self.closed = False

    async def call(self, method: int, payload: bytes) -> tuple[int, bytes]:
        if self.closed:
            return grpc.StatusCode.UNAVAILABLE.value[0], b"the server is shutting down; retry on another server"
        call = self._call_id()
        future = asyncio.get_running_loop().create_future()
        self.pending[call] = future
        self.writer.write(encode(call, method, payload))
        return await future

    def _call_id(self) -> int:
        self._next = (self._next + 1) & 0xFFFFFFFF
        return self._next

    async def infer(self, method: int, request: bytes) -> tuple[int, bytes]:
        """A ModelInfer call: its tensors through the staging pool when they are large and fit."""
        pool = self.pool
        split = split_raw_inputs(request) if pool is not None and len(request) >= STAGE_MIN_BYTES else None
        if split is None or not split[1] or sum(len(r) for r in split[1]) < STAGE_MIN_BYTES or self.closed:
            return await self.call(method, request)
        rest, raw = split
        sizes = [aligned(len(r)) for r in raw]
        base = pool.alloc(sum(sizes))  # type: ignore[union-attr]
        if base is None:  # the pool is full: relay the whole message
            return await self.call(method, request)
        table, pos = [_COUNT.pack(len(raw))], base
        for r, size in zip(raw, sizes):
            pool.region.map[pos:pos + len(r)] = r  # type: ignore[union-attr]
            table.append(_BLOCK.pack(pos, len(r)))
            pos += size
        del raw, split
        call = self._call_id()
        future = asyncio.get_running_loop().create_future()
        self.pending[call] = future
        self.staged[call] = (base, sum(sizes))  # freed when the reply comes, even if the client left
        table.append(rest)
        self.writer.write(encode(call, STAGED_INFER, b"".join(table)))
        return await future

    async def read_replies(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(HEADER.size)
                size, call, code = HEADER.unpack(header)
                payload = await self.reader.readexactly(size) if size else b""
                future = self.pending.pop(call, None)
                block = self.staged.pop(call, None)
                if block is not None and self.pool is not None:
                    self.pool.free(*block)
                if future is not None and not future.done():
                    future.set_result((code, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True
            for future in self.pending.values():
                if not future.done():
                    future.set_result((grpc.StatusCode.UNAVAILABLE.value[0],
                                       b"the server process went away; retry on another server"))
            self.pending.clear()


def _handler(upstream: _Upstream, index: int) -> Any:
    send = upstream.infer if METHODS[index] == "ModelInfer" else upstream.call

    async def relay(request: bytes, context: Any) -> bytes:
        code, payload = await send(index, request)
        if code:
            await context.abort(_CODES.get(code, grpc.StatusCode.UNKNOWN), payload.decode(errors="replace"))
        return payload
    return grpc.unary_unary_rpc_method_handler(relay)  # no (de)serializers: bytes pass through


async def serve_front_end(hub: str, host: str, port: int, grace: float,
                          staging_mb: int = DEFAULT_STAGING_MB) -> int:
    """A front end's life: connect to the hub, listen on the port, relay until SIGTERM/SIGINT or
    until the hub goes away."""
    reader, writer = await asyncio.open_unix_connection(hub)
    upstream = _Upstream(reader, writer)
    if staging_mb > 0:
        try:
            upstream.pool = StagingPool(staging_mb << 20, "staging")
        except OSError as exc:
            print(f"ember serve front end: no staging pool, tensors travel in the relayed messages: "
                  f"{exc}", file=sys.stderr)
    try:
        return await _serve(upstream, writer, host, port, grace)
    finally:
        if upstream.pool is not None:
            upstream.pool.close()


async def _serve(upstream: _Upstream, writer: asyncio.StreamWriter, host: str, port: int,
                 grace: float) -> int:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", _MAX_MESSAGE),
                                      ("grpc.max_receive_message_length", _MAX_MESSAGE),
                                      ("grpc.so_reuseport", 1)])
    handlers = {name: _handler(upstream, i) for i, name in enumerate(METHODS)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        print(f"ember serve front end: cannot listen on {host}:{port}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    replies = asyncio.create_task(upstream.read_replies())
    if upstream.pool is not None:
        writer.write(encode(0, POOL, _POOL.pack(upstream.pool.size) + upstream.pool.path.encode()))
    writer.write(encode(0, HELLO, str(os.getpid()).encode()))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({replies, waiter}, return_when=asyncio.FIRST_COMPLETED)
    await server.stop(grace if not replies.done() else 0)
    writer.close()
    replies.cancel()
    await asyncio.gather(replies, return_exceptions=True)
    return 0 if waiter.done() else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.serve.relay",
                                     description="an ember serve gRPC front-end process")
    parser.add_argument("--hub", required=True, help="the server process's Unix socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace", type=float, default=60.0, help="seconds to finish calls on SIGTERM")
    parser.add_argument("--staging-mb", type=int, default=DEFAULT_STAGING_MB,
                        help="shared memory for large input tensors (0: none)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(serve_front_end(args.hub, args.host, args.port, args.grace, args.staging_mb))
    except OSError as exc:
        print(f"ember serve front end: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
