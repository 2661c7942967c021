"""The KServe v2 / Open Inference Protocol over HTTP, as Ray Serve's ingress answers it.

Two ASGI apps, both FastAPI and both free of Ray:

* ``model_app``: one model's endpoints, mounted by Serve under ``/v2/models/<model>``
  (metadata, ready, config, infer, each also under ``/versions/<v>``). Bodies are decoded and
  encoded by ``ember.serve.http_codec``, so JSON and binary tensors, gzip and deflate work
  exactly as against ``ember serve``, and ``tritonclient.http`` talks to it unchanged.
* ``front_app``: what is not a model's (``/v2/health/live``, ``/v2/health/ready``, ``/v2``,
  ``/v2/repository/index``), and a 404 naming the served models for any other model.

Errors answer ``{"error": "..."}`` with the status of their ``ServeError``, as ``ember serve``.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Mapping, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import ember
from ember.integrations.ray.replica import Feeds, ModelReplica, Pending
from ember.serve.core import PLATFORM, SERVER_NAME
from ember.serve.datatypes import triton_name
from ember.serve.errors import (
    BadRequestError,
    ModelControlError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServeError,
    client_message,
    internal_error,
)
from ember.serve.http_app import read_body
from ember.serve.http_codec import HEADER_LENGTH, compress, decode_infer, decompress, encode_infer
from ember.serve.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("ember.integrations.ray")

#: KServe extensions answered through Ray Serve (model control and statistics are not: a
#: request lands on one replica of many, whose counts are not the model's)
EXTENSIONS = ("binary_tensor_data", "model_configuration")

Infer = Callable[[Pending], Awaitable[Feeds]]


def error_response(exc: ServeError) -> Response:
    """``{"error": ...}`` with the error's HTTP status (ASCII JSON)."""
    return Response(json.dumps({"error": client_message(exc)}, ensure_ascii=True),
                    status_code=exc.http_status, media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = (f"no endpoint {request.method} {request.url.path}; see the KServe v2 protocol"
                  if exc.status_code in (404, 405) else str(exc.detail))
        err = ServeError(detail)
        err.http_status = exc.status_code
        return error_response(err)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> Response:
        return error_response(exc)


class _EmptyPathIsRoot:
    """ASGI: Serve mounts a model's app at ``/v2/models/<model>``; the metadata request is that
    path exactly, which leaves the app an empty path. It is the app's ``/``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            path = scope.get("path", "")
            if path in ("", root) or path == root + "/":
                scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


def model_metadata(replica: ModelReplica) -> dict[str, Any]:
    """``GET /v2/models/<model>``: the model's name, version, platform, inputs and outputs."""
    sig = replica.signature
    return {"name": replica.name, "versions": [replica.version], "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": sig.full_shape(t)} for t in sig.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": sig.full_shape(t)} for t in sig.outputs]}


def model_config(replica: ModelReplica) -> dict[str, Any]:
    """``GET /v2/models/<model>/config``: Triton's ``ModelConfig`` JSON, as ``ember serve``
    answers it (one instance per replica)."""
    cfg, sig = replica.config, replica.signature
    out: dict[str, Any] = {
        "name": replica.name, "platform": PLATFORM, "backend": PLATFORM, "max_batch_size": cfg.max_batch_size,
        "input": [{"name": t.name, "data_type": triton_name(t.datatype), "format": "FORMAT_NONE",
                   "dims": list(t.dims)} for t in sig.inputs],
        "output": [{"name": t.name, "data_type": triton_name(t.datatype), "dims": list(t.dims)}
                   for t in sig.outputs],
        "instance_group": [{"name": f"{replica.name}_0", "count": 1,
                            "kind": "KIND_GPU" if cfg.device == "cuda" else "KIND_CPU"}],
        "parameters": {"device": {"string_value": cfg.device.value},
                       "precision": {"string_value": cfg.precision.value},
                       "runtime": {"string_value": "ray_serve"}},
    }
    b = cfg.dynamic_batching
    if b is not None:
        out["dynamic_batching"] = {"preferred_batch_size": list(b.preferred_batch_sizes),
                                   "max_queue_delay_microseconds": b.max_queue_delay_us}
    return out


def model_app(replica: ModelReplica, infer: Infer, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The ASGI app of one model's KServe v2 endpoints; ``infer`` runs a prepared request (the
    Serve replica batches it with ``@serve.batch``)."""
    app = FastAPI(title=f"Ember model {replica.name}", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)

    def check_version(version: str) -> None:
        if version and version != replica.version:
            raise ModelNotFoundError(f"model '{replica.name}' has no version '{version}' served; the "
                                     f"served version is {replica.version}")

    async def metadata(version: str = "") -> JSONResponse:
        check_version(version)
        return JSONResponse(model_metadata(replica))

    async def ready(version: str = "") -> JSONResponse:
        check_version(version)
        return JSONResponse({"name": replica.name, "ready": True})

    async def config(version: str = "") -> JSONResponse:
        check_version(version)
        return JSONResponse(model_config(replica))

    async def run(request: Request, version: str = "") -> Response:
        check_version(version)
        return await _infer(replica, infer, request, limits)

    app.add_api_route("/", metadata, methods=["GET"])  # the prefix itself: see _EmptyPathIsRoot
    app.add_api_route("/versions/{version}", metadata, methods=["GET"])
    for base in ("", "/versions/{version}"):
        app.add_api_route(base + "/ready", ready, methods=["GET"])
        app.add_api_route(base + "/config", config, methods=["GET"])
        app.add_api_route(base + "/infer", run, methods=["POST"])
    return _EmptyPathIsRoot(app)


async def _infer(replica: ModelReplica, infer: Infer, request: Request, limits: Limits) -> Response:
    """One inference request: decoded, validated, run, encoded; exactly one response."""
    try:
        body = await read_body(request, limits.max_body_bytes)
        body = decompress(body, request.headers.get("content-encoding"), limits.max_decompressed_bytes)
        req = decode_infer(body, request.headers.get(HEADER_LENGTH), limits)
        del body
        pending = replica.prepare(req.feeds, req.requested)
        timeout_us = replica.config.default_timeout_us if req.timeout_us is None else req.timeout_us
        try:
            outputs = await asyncio.wait_for(infer(pending), timeout_us / 1e6 if timeout_us > 0 else None)
        except TimeoutError:
            raise RequestTimeoutError(f"request to model '{replica.name}' was not answered within its timeout of "
                                      f"{timeout_us} us; raise the request's timeout or the model's "
                                      f"default_timeout_microseconds, or add replicas") from None
        content, header_len = encode_infer(replica.name, replica.version, req, outputs)
        content, encoding = compress(content, request.headers.get("accept-encoding"))
    except ServeError as exc:
        return error_response(exc)
    except Exception as exc:  # noqa: BLE001 - a bug must still answer this request
        return error_response(internal_error(f"answering an inference request to model '{replica.name}'", exc))
    headers = {} if header_len is None else {HEADER_LENGTH: str(header_len)}
    if encoding:
        headers["Content-Encoding"] = encoding
    media = "application/json" if header_len is None else "application/octet-stream"
    return Response(content, media_type=media, headers=headers)


Readiness = Callable[[], Awaitable[Mapping[str, Optional[str]]]]


def front_app(models: list[str], unavailable: Mapping[str, str], readiness: Readiness) -> FastAPI:
    """The ASGI app of the server-wide endpoints. ``models``: the deployed models;
    ``unavailable``: models that could not be deployed, with the reason; ``readiness()`` gives
    each model's state: ``None`` when ready, else the reason it is not."""
    app = FastAPI(title="Ember on Ray Serve", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    served = ", ".join(sorted(models)) or "none"

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        states = await readiness()
        waiting = {m: why for m, why in states.items() if why is not None}
        if not waiting:
            return JSONResponse({"ready": True})
        reasons = "; ".join(f"model '{m}': {why}" for m, why in sorted(waiting.items()))
        return JSONResponse({"ready": False, "error": f"the server is not ready: {reasons}"}, status_code=400)

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": SERVER_NAME, "version": ember.__version__, "extensions": list(EXTENSIONS)})

    @app.post("/v2/repository/index")
    async def index() -> JSONResponse:
        states = await readiness()
        return JSONResponse([{"name": m, "version": "", "state": "READY" if why is None else "UNAVAILABLE",
                              **({"reason": why} if why is not None else {})} for m, why in sorted(states.items())])

    @app.post("/v2/repository/models/{model}/{action}")
    async def control(model: str, action: str) -> Response:
        return error_response(ModelControlError("loading and unloading models is not available through Ray "
                                                "Serve; redeploy the application instead"))

    @app.api_route("/v2/models/{model}/{rest:path}", methods=["GET", "POST"])
    @app.api_route("/v2/models/{model}", methods=["GET", "POST"])
    async def unknown_model(model: str, rest: str = "") -> Response:
        if model == "stats":
            return error_response(BadRequestError("statistics are not available through Ray Serve: each "
                                                  "replica sees only its own requests; use Ray's metrics"))
        if model in unavailable:
            return error_response(ModelNotFoundError(f"model '{model}' is not ready: {unavailable[model]}"))
        return error_response(ModelNotFoundError(f"unknown model '{model}'; the server serves: {served}"))

    return app
