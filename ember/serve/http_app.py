"""The KServe v2 HTTP/REST front end (FastAPI), plus the Prometheus ``/metrics`` app.

Every error is answered ``{"error": "<what is wrong>"}`` with the status of its ``ServeError``:
404 for an unknown model, 400 for a bad request, 503 for a full queue, a timeout or shutdown.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.serve.core import Core, now_ns
from ember.serve.errors import BadRequestError, InferenceFailedError, ServeError
from ember.serve.http_codec import HEADER_LENGTH, compress, decode_infer, decompress, encode_infer
from ember.serve.stats import render_metrics

log = logging.getLogger("ember.serve")

MODEL_PATHS = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")


def error_response(exc: ServeError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.http_status)


def create_app(core: Core) -> FastAPI:
    """The FastAPI application of the KServe v2 HTTP protocol for ``core``."""
    app = FastAPI(title="Ember inference server", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_health_routes(app, core)
    _add_model_routes(app, core)
    _add_repository_routes(app, core)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 else (
            f"no endpoint {request.method} {request.url.path}; see the KServe v2 protocol")
        return JSONResponse({"error": str(detail)}, status_code=exc.status_code)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"bad request: {exc.errors()}"}, status_code=400)


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
        return error_response(exc)
    try:
        body = decompress(await request.body(), request.headers.get("content-encoding"))
        req = decode_infer(body, request.headers.get(HEADER_LENGTH))
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
        return error_response(exc)
    except Exception as exc:  # a bug must still answer this request, and the server keeps serving
        log.exception("inference request to %s failed", model)
        served.stats.record_request(False, now_ns() - start)
        return error_response(InferenceFailedError(f"internal error: {type(exc).__name__}: {exc}"))
    served.stats.record_request(True, now_ns() - start)
    return response


def _add_repository_routes(app: FastAPI, core: Core) -> None:
    @app.post("/v2/repository/index")
    async def index() -> JSONResponse:
        return JSONResponse(core.repository.index())

    @app.post("/v2/repository/models/{model}/load")
    async def load(request: Request, model: str) -> JSONResponse:
        config = _load_config(await request.body())
        await core.repository.load(model, config)
        return JSONResponse({})

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(model: str) -> JSONResponse:
        await core.repository.unload(model)
        return JSONResponse({})


def _load_config(body: bytes) -> Any:
    """The ``config`` parameter of a load request (a JSON string, as tritonclient sends it)."""
    if not body.strip():
        return None
    try:
        params = json.loads(body).get("parameters", {})
    except (ValueError, AttributeError) as exc:
        raise BadRequestError(f"the load request's body must be a JSON object: {exc}") from exc
    if any(k.startswith("file:") for k in params):
        raise BadRequestError("loading model files sent in the request is not supported; put them in "
                              "the repository folder")
    config = params.get("config")
    if config is None:
        return None
    try:
        parsed = json.loads(config) if isinstance(config, str) else config
    except ValueError as exc:
        raise BadRequestError(f"the load request's config is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BadRequestError("the load request's config must be a JSON object")
    return parsed


def create_metrics_app(core: Core) -> FastAPI:
    """The metrics port's app: ``GET /metrics`` in Prometheus text format."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(core.repository.all_stats()),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
