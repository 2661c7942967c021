"""A gRPC front-end process: listens on the server's gRPC port and relays every call to the hub.

    python -m ember.serve.relay.frontend --hub /tmp/ember-hub.sock --host 127.0.0.1 --port 8001

It knows nothing of models: each call's serialized request goes to the server process over the
hub's Unix socket (frames of ``ember.serve.relay.wire``) and the reply (the serialized response,
or a gRPC status code and message) goes back to the client as is. A large ``ModelInfer`` call's
tensors travel through this process's staging pool in shared memory instead of the socket.
On SIGTERM/SIGINT it stops taking calls and finishes the ones in flight; when the hub goes
away it fails its calls with UNAVAILABLE and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any, Optional, Sequence

import grpc

from ember.serve.proto import SERVICE_NAME
from ember.serve.relay.wire import (
    AUTH_HEAD,
    AUTHED,
    BLOCK,
    BLOCK_COUNT,
    CONTROL_METHODS,
    DEFAULT_STAGING_MB,
    HEADER,
    HELLO,
    METHODS,
    POOL,
    POOL_SIZE,
    STAGE_MIN_BYTES,
    STAGED_INFER,
    encode,
)
from ember.serve.shm import StagingPool, aligned, split_raw_inputs

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Upstream:
    """The front end's connection to the hub: numbered calls in flight, replies matched to them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pending: dict[int, asyncio.Future] = {}
        self.staged: dict[int, tuple[int, int]] = {}  # call -> its block in the pool
        self.pool: StagingPool | None = None
        self._next = 0
        self.closed = False

    async def call(self, method: int, payload: bytes) -> tuple[int, bytes]:
        if self.closed:
            return (grpc.StatusCode.UNAVAILABLE.value[0],
                    b"the server is shutting down; retry on another server")
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
        table, pos = [BLOCK_COUNT.pack(len(raw))], base
        for r, size in zip(raw, sizes):
            pool.region.map[pos:pos + len(r)] = r  # type: ignore[union-attr]
            table.append(BLOCK.pack(pos, len(r)))
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


def _authorization(context: Any) -> bytes:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            return value.encode("utf-8", "backslashreplace")[:4096]
    return b""


def _handler(upstream: _Upstream, index: int) -> Any:
    control = METHODS[index] in CONTROL_METHODS
    send = upstream.infer if METHODS[index] == "ModelInfer" else upstream.call

    async def relay(request: bytes, context: Any) -> bytes:
        if control:  # the server checks the model-control token: relay the call's authorization
            auth = _authorization(context)
            code, payload = await upstream.call(AUTHED, AUTH_HEAD.pack(index, len(auth)) + auth + request)
        else:
            code, payload = await send(index, request)
        if code:
            await context.abort(_CODES.get(code, grpc.StatusCode.UNKNOWN), payload.decode(errors="replace"))
        return payload
    return grpc.unary_unary_rpc_method_handler(relay)  # no (de)serializers: bytes pass through


async def serve_front_end(hub: str, host: str, port: int, grace: float,
                          staging_mb: int = DEFAULT_STAGING_MB, options: Sequence[tuple[str, Any]] = (),
                          max_concurrent_rpcs: Optional[int] = None) -> int:
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
        return await _serve(upstream, writer, host, port, grace, options, max_concurrent_rpcs)
    finally:
        if upstream.pool is not None:
            upstream.pool.close()


async def _serve(upstream: _Upstream, writer: asyncio.StreamWriter, host: str, port: int,
                 grace: float, options: Sequence[tuple[str, Any]] = (),
                 max_concurrent_rpcs: Optional[int] = None) -> int:
    # the server's limits (message sizes, handshake, idle and age timeouts); the port is shared
    server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 1)],
                             maximum_concurrent_rpcs=max_concurrent_rpcs)
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
        writer.write(encode(0, POOL, POOL_SIZE.pack(upstream.pool.size) + upstream.pool.path.encode()))
    writer.write(encode(0, HELLO, str(os.getpid()).encode()))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({replies, waiter}, return_when=asyncio.FIRST_COMPLETED)
    await server.stop(grace if not replies.done() else 0)
    writer.close()
    replies.cancel()
    await asyncio.gather(replies, return_exceptions=True)
    return 0 if waiter.done() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.serve.relay.frontend",
                                     description="an ember serve gRPC front-end process")
    parser.add_argument("--hub", required=True, help="the server process's Unix socket")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace", type=float, default=60.0, help="seconds to finish calls on SIGTERM")
    parser.add_argument("--staging-mb", type=int, default=DEFAULT_STAGING_MB,
                        help="shared memory for large input tensors (0: none)")
    parser.add_argument("--grpc-options", default="[]",
                        help="the gRPC server's options, a JSON list of [name, value] pairs "
                             "(ember.serve.limits.Limits.grpc_server_options)")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=None,
                        help="calls in progress at once; past it new calls answer RESOURCE_EXHAUSTED")
    args = parser.parse_args(argv)
    try:
        options = [(str(k), v) for k, v in json.loads(args.grpc_options)]
    except (ValueError, TypeError) as exc:
        parser.error(f"--grpc-options must be a JSON list of [name, value] pairs: {exc}")
    try:
        return asyncio.run(serve_front_end(args.hub, args.host, args.port, args.grace, args.staging_mb,
                                           options, args.max_concurrent_rpcs))
    except OSError as exc:
        print(f"ember serve front end: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
