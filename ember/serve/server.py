"""The server's life cycle: bind the ports, load the repository, serve, drain on shutdown.

>>> from ember.serve import ServerOptions, ServerThread
>>> with ServerThread(ServerOptions("models", http_port=0, grpc_port=0, metrics_port=0)) as s:  # doctest: +SKIP
...     print(s.http_port, s.grpc_port, s.metrics_port)

``run_server`` is what ``ember serve`` calls: it serves until SIGINT or SIGTERM, then stops
taking requests (503 with ``Connection: close``), answers every queued and running one, waits
until its kept-alive HTTP connections are quiet (``Server._linger``) and exits. ``ServerThread`` runs the
same server on a thread of its own (tests, notebooks).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import uvicorn

from ember.serve.core import Core
from ember.serve.engines import default_cache_dir
from ember.serve.grpc_service import InferenceServicer, create_grpc_server
from ember.serve.http_app import create_app, create_metrics_app
from ember.serve.limits import DEFAULT_LIMITS, Limits
from ember.serve.relay.hub import FrontEnds
from ember.serve.repository import ModelRepository
from ember.serve.shm import OWNER_ENV, Owner, remove_stale

log = logging.getLogger("ember.serve")


@dataclass(frozen=True)
class ServerOptions:
    """Where the server listens and what it serves; a port of 0 takes any free port, -1 turns
    that endpoint off."""

    repository: str | Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    cache_dir: Optional[str | Path] = None
    shutdown_timeout_s: float = 60.0
    log_level: str = "info"
    #: gRPC front-end processes (``ember.serve.relay``); 0: the server process speaks gRPC itself
    grpc_front_ends: int = 0
    #: MiB of shared memory per front end for large input tensors (0: they travel in the messages)
    grpc_staging_mb: int = 32
    #: what one request may hold (``ember.serve.limits``)
    limits: Limits = DEFAULT_LIMITS
    #: ``none``: clients cannot load or unload models; ``explicit``: they can (as Triton's flag)
    model_control_mode: str = "none"
    #: with ``explicit``: loads and unloads must carry ``Authorization: Bearer <token>``
    model_control_token: Optional[str] = None
    #: stop at start-up when a model fails to load (default: report it, serve the others)
    exit_on_error: bool = False


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the ``Server`` owns SIGINT/SIGTERM and drains."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto is
    # IPPROTO_TCP; with proto 0 every response waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another port") from exc
    sock.listen(2048)
    return sock


def _http_protocol(header_timeout_s: float, body_timeout_s: Optional[float] = None) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a header timeout: a
    connection that has not sent a whole request head ``header_timeout_s`` after it opened or
    after its last response is closed, so clients that drip bytes cannot hold connections. A
    response sent before its request's body was all read (a refusal) gives the rest of the body
    ``body_timeout_s`` to arrive (the server reads and drops it, so the client reads the answer)."""
    base: type
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        base = HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        base = H11Protocol

    class HeaderTimeoutProtocol(base):  # type: ignore[misc,valid-type]
        _header_timer: Optional[asyncio.TimerHandle] = None
        #: loop time of the connection's last sign of life (opened, data came, response sent)
        last_active: float = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.last_active = self.loop.time()
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            self.last_active = self.loop.time()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self.last_active = self.loop.time()
            unread = self.cycle is not None and self.cycle.more_body
            super().on_response_complete()
            self._arm_header_timer(body_timeout_s if unread and body_timeout_s else header_timeout_s)

        def quiet_for(self, now: float) -> float:
            """Seconds since the last sign of life, 0 while a request is in progress."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return 0.0
            return now - self.last_active

        def connection_lost(self, exc: Optional[Exception]) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self, timeout_s: float = header_timeout_s) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(timeout_s, self._header_timeout, timeout_s)

        def _header_timeout(self, timeout_s: float) -> None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # no request head (or body) came in time
                log.info("HTTP: closing a connection that sent no request head (or the rest of a "
                         "refused body) in %g s (--http-header-timeout, --http-body-timeout)", timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol


class Server:
    """One inference server: HTTP, gRPC and metrics endpoints over one model repository."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        repo = ModelRepository(Path(options.repository),
                               Path(options.cache_dir) if options.cache_dir else default_cache_dir(),
                               default_max_queue_size=options.limits.max_queue_size,
                               default_timeout_us=options.limits.request_timeout_us)
        self.core = Core(repo, options.limits, options.model_control_mode, options.model_control_token)
        self.http_port = self.grpc_port = self.metrics_port = -1
        self._uvicorns: list[tuple[_Uvicorn, asyncio.Task]] = []
        self._grpc: Any = None
        self.front_ends: Optional[FrontEnds] = None
        self._stopped = False
        self._owner: Optional[Owner] = None

    async def start(self) -> None:
        """Opens the endpoints (live at once), then loads every model (ready once loaded)."""
        o = self.options
        self._claim_leftovers()
        if o.grpc_port >= 0 and o.grpc_front_ends > 0:
            self.front_ends = FrontEnds(InferenceServicer(self.core), o.grpc_front_ends, o.host,
                                        o.grpc_port, o.shutdown_timeout_s, staging_mb=o.grpc_staging_mb,
                                        limits=o.limits)
            await self.front_ends.start()
            self.grpc_port = self.front_ends.port
        elif o.grpc_port >= 0:
            self._grpc, self.grpc_port = create_grpc_server(self.core, o.host, o.grpc_port, o.limits)
            await self._grpc.start()
        if o.http_port >= 0:
            self.http_port = await self._start_uvicorn(create_app(self.core), o.http_port)
        if o.metrics_port >= 0:
            self.metrics_port = await self._start_uvicorn(create_metrics_app(self.core), o.metrics_port)
        log.info("ember serve: HTTP %s:%d, gRPC %s:%d, metrics %s:%d", o.host, self.http_port, o.host,
                 self.grpc_port, o.host, self.metrics_port)
        if self.front_ends is not None:
            log.info("ember serve: gRPC served by %d front-end processes (pids %s)", o.grpc_front_ends,
                     ", ".join(str(p.pid) for p in self.front_ends.procs))
        await self.core.repository.load_all(exit_on_error=o.exit_on_error)
        self.core.started = True
        log.info("ember serve: ready; models %s", ", ".join(
            f"{m.name}/{m.version}" for m in self.core.repository.served()) or "none")

    def _claim_leftovers(self) -> None:
        """Removes what servers killed without cleaning up left in /dev/shm and the temp folder,
        and marks this server's own files so that the next server can do the same for it."""
        try:
            removed = remove_stale()
            self._owner = Owner()
        except OSError as exc:  # a read-only /dev/shm, say: serve anyway, unmarked
            log.warning("ember serve: cannot keep track of shared-memory leftovers (%s)", exc)
            return
        os.environ[OWNER_ENV] = self._owner.token  # inherited by the instance and front-end processes
        if removed:
            log.info("ember serve: removed %d files left by servers that died: %s", len(removed),
                     ", ".join(os.path.basename(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))

    async def _start_uvicorn(self, app: Any, port: int) -> int:
        sock = _bind(self.options.host, port)
        limits = self.options.limits
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=int(self.options.shutdown_timeout_s),
                                http=_http_protocol(limits.http_header_timeout_s, limits.http_body_timeout_s),
                                limit_concurrency=limits.http_max_connections,
                                timeout_keep_alive=max(1, round(limits.http_keep_alive_s)))
        server = _Uvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._uvicorns.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"the HTTP server on port {port} stopped while starting")
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    async def shutdown(self) -> None:
        """Refuses new requests, answers every accepted one, then closes the endpoints."""
        if self._stopped:
            return
        self._stopped = True
        log.info("ember serve: shutting down; answering the queued requests")
        self.core.accepting = False
        # the front ends finish their calls in flight while the queues drain (the hub answers them)
        stopping = [self.core.repository.close()]
        if self.front_ends is not None:
            stopping.append(self.front_ends.stop())
        for result in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("ember serve: error while shutting down: %s: %s", type(result).__name__, result)
        log.debug("ember serve: queues drained, models and front ends closed")
        await self._linger()
        log.debug("ember serve: HTTP connections quiet; closing them")
        for server, _ in self._uvicorns:
            server.should_exit = True
        await asyncio.gather(*(t for _, t in self._uvicorns), return_exceptions=True)
        log.debug("ember serve: HTTP servers closed")
        if self._grpc is not None:
            await self._grpc.stop(grace=self.options.shutdown_timeout_s)
        if self._owner is not None:
            if os.environ.get(OWNER_ENV) == self._owner.token:
                del os.environ[OWNER_ENV]
            self._owner.release()
        log.info("ember serve: stopped")


    async def _linger(self) -> None:
        """Before the HTTP servers close their kept-alive connections: waits until each has been
        quiet for a moment. Every response since shutdown began says ``Connection: close``, so a
        client sending requests gets a 503 with it (and closes) instead of its next request
        meeting a connection closed under it; one idle all along is closed at once. Then the
        listeners close and connections opened meanwhile get their 503 (a short wait). Bounded
        by ``LINGER_S``."""
        quiet = min(QUIET_S, self.options.limits.http_keep_alive_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(LINGER_S, self.options.shutdown_timeout_s)
        # connections opened from now on hear 503 + close on their first request: only those that
        # may carry a request sent before the client could know of the shutdown are waited for
        known = {c for server, _ in self._uvicorns for c in server.server_state.connections}
        await self._until_quiet(known, quiet, deadline)
        # then no new connections (refused from now on), and those opened meanwhile get their 503
        for server, _ in self._uvicorns:
            for listener in getattr(server, "servers", ()):
                listener.close()
        await self._until_quiet(None, quiet, min(deadline, loop.time() + quiet * 2))

    async def _until_quiet(self, among: Optional[set], quiet: float, deadline: float) -> None:
        """Waits until every open HTTP connection (of ``among``, when given) has been quiet for
        ``quiet`` seconds, or until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            now = loop.time()
            open_now = {c for server, _ in self._uvicorns for c in server.server_state.connections}
            watched = open_now if among is None else among & open_now
            if not any(getattr(c, "quiet_for", lambda _: quiet)(now) < quiet for c in watched):
                return
            await asyncio.sleep(0.02)


#: seconds a kept-alive HTTP connection must have been quiet for shutdown to close it under its
#: client (its client sends no request on it then, most likely), and the longest wait for that
QUIET_S, LINGER_S = 0.5, 5.0


async def _serve_until_signal(options: ServerOptions) -> None:
    server = Server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        start = asyncio.create_task(server.start())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()
            await waiter
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
    finally:
        await server.shutdown()


def run_server(options: ServerOptions) -> None:
    """Serves until SIGINT/SIGTERM, then drains and returns (what ``ember serve`` runs)."""
    asyncio.run(_serve_until_signal(options))


class ServerThread:
    """A ``Server`` on its own thread and event loop; a context manager that stops it on exit."""

    def __init__(self, options: ServerOptions) -> None:
        self.server = Server(options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ember-serve", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            self.call(self.server.start())
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, coro: Any, timeout: Optional[float] = None) -> Any:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.server.shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_port(self) -> int:
        return self.server.http_port

    @property
    def grpc_port(self) -> int:
        return self.server.grpc_port

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    @property
    def core(self) -> Core:
        return self.server.core
