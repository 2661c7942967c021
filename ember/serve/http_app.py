"""The KServe v2 HTTP/REST front end (FastAPI), plus the Prometheus ``/metrics`` app.

Every error is answered ``{"error": "<what is wrong>"}`` with the status of its ``ServeError``:
404 for an unknown model, 400 for a bad request, 413 for a request over a limit, 408 (and the
connection closed) for a body slower than ``--http-body-timeout``, 401/403 for model control
without its token or turned off, 503 for a full queue, a timeout or shutdown. Each
is logged as one line; an error of the server itself answers 500 with an id that its log line
(with the traceback) carries, never the exception's text.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, MutableMapping, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ember.serve.core import Core, now_ns
from ember.serve.errors import (
    BadRequestError,
    BodyTimeoutError,
    ClientGoneError,
    InferenceFailedError,
    PayloadTooLargeError,
    ServeError,
    bounded,
    client_message,
    internal_error,
    safe_text,
)
from ember.serve.http_codec import HEADER_LENGTH, compress, decode_infer, decompress, encode_infer
from ember.serve.limits import json_depth_exceeds
from ember.serve.stats import render_metrics

log = logging.getLogger("ember.serve")

MODEL_PATHS = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")


def error_response(exc: ServeError, request: Optional[Request] = None) -> Response:
    """``{"error": ...}`` with the error's status; logged as one line (internal errors were
    logged with their id already). ASCII JSON: a client's lone surrogate cannot break it."""
    message = client_message(exc)
    if request is not None and not isinstance(exc, InferenceFailedError):
        log.info("HTTP %d %s %s: %s", exc.http_status, request.method,
                 bounded(request.url.path, 120), bounded(message, 300))
    # after a 408 the rest of the body may still be coming: the connection cannot be reused
    headers = {"Connection": "close"} if isinstance(exc, BodyTimeoutError) else None
    return Response(json.dumps({"error": message}, ensure_ascii=True), status_code=exc.http_status,
                    media_type="application/json", headers=headers)


class _CatchAll:
    """ASGI middleware: an exception no handler took (a bug) answers 500 with an error id and
    one log entry, instead of a plain-text 500 and uvicorn's traceback. Once the server shuts
    down, every response says ``Connection: close``, so clients stop reusing connections that
    are about to close (a request sent on one would go unanswered)."""

    def __init__(self, app: Any, core: Optional[Core] = None) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.core is not None and not self.core.accepting:
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            err = internal_error(f"answering {scope.get('method')} {bounded(str(scope.get('path')), 120)}", exc)
            if started:
                raise
            response = error_response(err)
            await response(scope, receive, tracked)


def create_app(core: Core) -> FastAPI:
    """The FastAPI application of the KServe v2 HTTP protocol for ``core``."""
    # no redirect for a trailing slash: a client of the protocol never sends one; a 404 says what is wrong
    app = FastAPI(title="Ember inference server", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)
    app.add_middleware(_CatchAll, core=core)
    _add_error_handlers(app)
    _add_health_routes(app, core)
    _add_model_routes(app, core)
    _add_repository_routes(app, core)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if exc.status_code != 404 else (
            f"no endpoint {request.method} {bounded(request.url.path, 120)}; see the KServe v2 "
            f"protocol")
        err = ServeError(str(detail))
        err.http_status = exc.status_code
        return error_response(err, request)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> Response:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequestError(f"bad request: {safe_text(exc.errors(), 300)}"), request)


def _add_health_routes(app: FastAPI, core: Core) -> None:
    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": core.live()})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = core.ready()
        body: dict = {"ready": ok}
        if not ok:
            body["error"] = "the server is not ready: " + _why_not_ready(core)
        return JSONResponse(body, status_code=200 if ok else 400)

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(core.server_metadata())

    @app.get("/v2/models/stats")
    async def all_stats() -> JSONResponse:
        return JSONResponse(core.statistics())


def _why_not_ready(core: Core) -> str:
    if not core.started:
        return "still loading models"
    if not core.accepting:
        return "shutting down"
    return "models failed to load: " + ", ".join(core.repository.failed())


def _add_model_routes(app: FastAPI, core: Core) -> None:
    async def metadata(model: str, version: str = "") -> JSONResponse:
        return JSONResponse(core.model_metadata(model, version))

    async def model_ready(model: str, version: str = "") -> JSONResponse:
        ok = core.repository.is_ready(model, version)
        body: dict = {"name": model, "ready": ok}
        if not ok:
            body["error"] = f"model '{model}' is not ready"
        return JSONResponse(body, status_code=200 if ok else 400)

    async def config(model: str, version: str = "") -> JSONResponse:
        return JSONResponse(core.model_config(model, version))

    async def stats(model: str, version: str = "") -> JSONResponse:
        return JSONResponse(core.statistics(model, version))

    async def infer(request: Request, model: str, version: str = "") -> Response:
        return await _infer(core, request, model, version)

    for base in MODEL_PATHS:
        app.add_api_route(base, metadata, methods=["GET"])
        app.add_api_route(base + "/ready", model_ready, methods=["GET"])
        app.add_api_route(base + "/config", config, methods=["GET"])
        app.add_api_route(base + "/stats", stats, methods=["GET"])
        app.add_api_route(base + "/infer", infer, methods=["POST"])


async def _infer(core: Core, request: Request, model: str, version: str) -> Response:
    """One inference request: exactly one response, counted once in the model's statistics."""
    start = now_ns()
    try:
        served = core.model_for_infer(model, version)
    except ServeError as exc:
        return error_response(exc, request)
    limits = core.limits
    try:
        body = await read_body(request, limits.max_body_bytes, limits.http_body_timeout_s)
        body = decompress(body, request.headers.get("content-encoding"), limits.max_decompressed_bytes)
        req = decode_infer(body, request.headers.get(HEADER_LENGTH), limits)
        del body
        outputs = await core.infer(served, req.feeds, req.requested, req.timeout_us)
        content, header_len = encode_infer(served.name, served.version, req, outputs)
        content, encoding = compress(content, request.headers.get("accept-encoding"))
        headers = {} if header_len is None else {HEADER_LENGTH: str(header_len)}
        if encoding:
            headers["Content-Encoding"] = encoding
        media = "application/json" if header_len is None else "application/octet-stream"
        response = Response(content, media_type=media, headers=headers)
    except ServeError as exc:
        served.stats.record_request(False, now_ns() - start)
        return error_response(exc, request)
    except Exception as exc:  # noqa: BLE001 - a bug must still answer this request
        served.stats.record_request(False, now_ns() - start)
        return error_response(internal_error(f"answering an inference request to model '{served.name}'", exc))
    served.stats.record_request(True, now_ns() - start)
    return response


async def read_body(request: Request, limit: int, timeout_s: Optional[float] = None) -> bytes:
    """The request body, refused (413) without reading it past ``limit`` bytes: a larger
    ``Content-Length`` is refused before its first byte is read. A body still incomplete
    ``timeout_s`` seconds after its head arrived is answered 408 (``--http-body-timeout``)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise BadRequestError(f"Content-Length must be a whole number, got {safe_text(length, 40)}")
        if int(length) > limit:
            raise PayloadTooLargeError(f"the request body has {int(length)} bytes, over the server's limit "
                                       f"of {limit} (--http-max-body-mb)")
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the request body is over the server's limit of {limit} bytes "
                                           f"(--http-max-body-mb)")
            chunks.append(chunk)
    try:
        async with asyncio.timeout(timeout_s):
            await read()
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout_s:g} s of its headers "
                               f"({size} bytes came; --http-body-timeout); send it faster or in one go") from None
    except ClientDisconnect:
        raise ClientGoneError("the client closed the connection before sending its whole body") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _add_repository_routes(app: FastAPI, core: Core) -> None:
    @app.post("/v2/repository/index")
    async def index() -> JSONResponse:
        return JSONResponse(core.repository.index())

    @app.post("/v2/repository/models/{model}/load")
    async def load(request: Request, model: str) -> JSONResponse:
        core.check_model_control(request.headers.get("authorization"))
        body = await read_body(request, min(core.limits.max_body_bytes, 16 * 2**20), core.limits.http_body_timeout_s)
        config = _load_config(body, core.limits.max_json_depth)
        await core.repository.load(model, config)
        return JSONResponse({})

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(request: Request, model: str) -> JSONResponse:
        core.check_model_control(request.headers.get("authorization"))
        await core.repository.unload(model)
        return JSONResponse({})


def _load_config(body: bytes, max_depth: int = 64) -> Any:
    """The ``config`` parameter of a load request (a JSON string, as tritonclient sends it)."""
    if not body.strip():
        return None
    try:
        params = _parse_json(body, max_depth).get("parameters", {})
    except (ValueError, AttributeError) as exc:
        raise BadRequestError(f"the load request's body must be a JSON object: {bounded(str(exc), 160)}") from None
    if not isinstance(params, dict):
        raise BadRequestError("the load request's 'parameters' must be a JSON object")
    if any(k.startswith("file:") for k in params):
        raise BadRequestError("loading model files sent in the request is not supported; put them in "
                              "the repository folder")
    config = params.get("config")
    if config is None:
        return None
    try:
        parsed = _parse_json(config, max_depth) if isinstance(config, str) else config
    except ValueError as exc:
        raise BadRequestError(f"the load request's config is not valid JSON: {bounded(str(exc), 160)}") from None
    if not isinstance(parsed, dict):
        raise BadRequestError("the load request's config must be a JSON object")
    return parsed


def _parse_json(text: Any, max_depth: int) -> Any:
    """JSON with the nesting limit (``ValueError`` names what is wrong)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"it nests deeper than {max_depth} levels") from None
    if json_depth_exceeds(value, max_depth):
        raise ValueError(f"it nests deeper than {max_depth} levels")
    return value


def create_metrics_app(core: Core) -> FastAPI:
    """The metrics port's app: ``GET /metrics`` in Prometheus text format."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(core.repository.all_stats()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
