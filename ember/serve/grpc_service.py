"""The gRPC front end: ``inference.GRPCInferenceService`` as Triton defines it (``grpc.aio``).

Tensors arrive in ``raw_input_contents`` (what tritonclient sends) or in the typed ``contents``
fields; outputs always go back in ``raw_output_contents``, as Triton does. Errors abort the call
with the ``ServeError``'s gRPC code and message; a message that is not valid protobuf answers
INVALID_ARGUMENT, one over ``--grpc-max-message-mb`` RESOURCE_EXHAUSTED (gRPC refuses it before
it is read), an error of the server itself INTERNAL with an id that the log line carries.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Awaitable, Callable, Optional, Sequence

import grpc
import numpy as np
from google.protobuf import json_format

from ember.serve.core import Core, now_ns, parse_timeout
from ember.serve.datatypes import KSERVE_TO_NUMPY, UNSUPPORTED, from_numpy
from ember.serve.errors import BadRequestError, ServeError, bounded, client_message, internal_error, safe_text
from ember.serve.limits import DEFAULT_LIMITS, Limits
from ember.serve.proto import SERVICE_NAME, messages, service_methods

log = logging.getLogger("ember.serve")

_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(value, which)
    return out


def decode_tensors(request: Any, raw: Optional[Sequence[Any]] = None,
                   limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """The input tensors of a ``ModelInferRequest``; ``BadRequestError`` names what is wrong.

    ``raw``: the raw_input_contents kept apart from the message (buffers, e.g. views of a gRPC
    front end's staging pool, read in place); default the message's own."""
    raw = request.raw_input_contents if raw is None else raw
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(f"the request has {len(request.inputs)} inputs but {len(raw)} "
                              f"raw_input_contents; give raw contents for every input or for none")
    feeds: dict[str, np.ndarray] = {}
    for i, inp in enumerate(request.inputs):
        if inp.name in feeds:
            raise BadRequestError(f"input '{inp.name}' appears twice in the request")
        _refuse(parameters(inp.parameters), f"input '{inp.name}'")
        limits.check_shape(inp.name, inp.shape)
        feeds[inp.name] = _decode_one(inp, raw[i] if raw else None)
    if not feeds:
        raise BadRequestError("the request has no inputs; give at least one input tensor")
    return feeds


def _decode_one(inp: Any, raw: Any) -> np.ndarray:
    if inp.datatype in UNSUPPORTED:
        raise BadRequestError(f"input '{inp.name}' has datatype {inp.datatype}, which Ember models do not take")
    if inp.datatype not in KSERVE_TO_NUMPY:
        raise BadRequestError(f"input '{inp.name}' has datatype {safe_text(inp.datatype, 60)}; use one of "
                              f"{', '.join(KSERVE_TO_NUMPY)}")
    shape = list(inp.shape)
    if any(d < 0 for d in shape):
        raise BadRequestError(f"input '{inp.name}' has shape {shape}; dims must be non-negative")
    dtype = KSERVE_TO_NUMPY[inp.datatype]
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise BadRequestError(f"input '{inp.name}' has {len(raw)} raw bytes but shape {shape} of "
                                  f"{inp.datatype} needs {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    field = _CONTENTS.get(inp.datatype)
    if field is None:
        raise BadRequestError(f"input '{inp.name}' of {inp.datatype} must be sent in raw_input_contents")
    values = getattr(inp.contents, field)
    if len(values) != count:
        raise BadRequestError(f"input '{inp.name}' has {len(values)} values in contents.{field} but shape "
                              f"{shape} needs {count}")
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise BadRequestError(f"input '{inp.name}' has values outside the range of {inp.datatype}") from exc


def _refuse(params: dict, where: str) -> None:
    if params.get("sequence_id") not in (None, 0, ""):
        raise BadRequestError(f"{where} parameter 'sequence_id': sequence batching is not supported")
    for key in ("shared_memory_region", "classification"):
        if key in params:
            raise BadRequestError(f"{where} parameter '{key}': this extension is not supported")


class InferenceServicer:
    """The RPCs; each returns a response message or aborts with the error's code."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.m = messages()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.m["ServerLiveResponse"](live=self.core.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.m["ServerReadyResponse"](ready=self.core.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return self.m["ModelReadyResponse"](ready=self.core.repository.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.core.server_metadata(), self.m["ServerMetadataResponse"]())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.core.model_metadata(request.name, request.version),
                                     self.m["ModelMetadataResponse"]())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        config = self.core.model_config(request.name, request.version)
        return self.m["ModelConfigResponse"](config=json_format.ParseDict(config, self.m["ModelConfig"]()))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.core.statistics(request.name, request.version),
                                     self.m["ModelStatisticsResponse"]())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        rows = self.core.repository.index()
        if request.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return json_format.ParseDict({"models": rows}, self.m["RepositoryIndexResponse"]())

    def _check_control(self, context: Any) -> None:
        """The call's ``authorization`` metadata against the server's token; a call relayed by
        a front end carries the metadata as ``RelayedContext`` (``None``: none was sent)."""
        pairs = context.invocation_metadata() if context is not None else ()
        metadata = {k.lower(): v for k, v in (pairs or ()) if isinstance(v, str)}
        self.core.check_model_control(metadata.get("authorization"))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._check_control(context)
        params = parameters(request.parameters)
        if any(k.startswith("file:") for k in params):
            raise BadRequestError("loading model files sent in the request is not supported; put them "
                                  "in the repository folder")
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            raise BadRequestError("the load request's config parameter must be a JSON string")
        try:
            parsed = json.loads(config) if config else None
        except ValueError as exc:
            raise BadRequestError(f"the load request's config is not valid JSON: {bounded(str(exc), 160)}") from None
        except RecursionError:
            raise BadRequestError("the load request's config nests too deeply") from None
        if parsed is not None and not isinstance(parsed, dict):
            raise BadRequestError("the load request's config must be a JSON object")
        await self.core.repository.load(request.model_name, parsed)
        return self.m["RepositoryModelLoadResponse"]()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._check_control(context)
        await self.core.repository.unload(request.model_name)
        return self.m["RepositoryModelUnloadResponse"]()

    async def ModelInfer(self, request: Any, context: Any, raw: Optional[Sequence[Any]] = None) -> Any:
        """``raw``: the request's raw_input_contents when they travel apart from it (see
        ``decode_tensors``)."""
        start = now_ns()
        served = self.core.model_for_infer(request.model_name, request.model_version)
        try:
            response = await self._infer(served, request, raw)
        except ServeError:
            served.stats.record_request(False, now_ns() - start)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must still answer this request
            served.stats.record_request(False, now_ns() - start)
            raise internal_error(f"answering a gRPC inference request to model '{served.name}'", exc) from None
        served.stats.record_request(True, now_ns() - start)
        return response

    async def _infer(self, served: Any, request: Any, raw: Optional[Sequence[Any]]) -> Any:
        params = parameters(request.parameters)
        _refuse(params, "request")
        feeds = decode_tensors(request, raw, self.core.limits)
        requested = None
        if request.outputs:
            for o in request.outputs:
                _refuse(parameters(o.parameters), f"output '{o.name}'")
            requested = [o.name for o in request.outputs]
        outputs = await self.core.infer(served, feeds, requested, parse_timeout(params.get("timeout")))
        response = self.m["ModelInferResponse"](model_name=served.name, model_version=served.version,
                                                id=request.id)
        for name, arr in outputs.items():
            response.outputs.add(name=name, datatype=from_numpy(arr.dtype), shape=list(arr.shape))
            response.raw_output_contents.append(
                np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
        return response


class RelayedContext:
    """What a gRPC front end relays of a call's context: the metadata the server needs (the
    ``authorization`` of model-control calls)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


class _Undecodable:
    """What a request that is not valid protobuf deserializes to: the handler answers it
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN or INTERNAL)."""

    def __init__(self, method: str, error: str) -> None:
        self.method, self.error = method, error


def _deserializer(method: str, message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError (and others)
            return _Undecodable(method, bounded(str(exc), 120))
    return parse


def _rpc(fn: Callable[[Any, Any], Awaitable[Any]], method: str = "") -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        code, message = grpc.StatusCode.INTERNAL, ""
        if isinstance(request, _Undecodable):
            code = grpc.StatusCode.INVALID_ARGUMENT
            message = f"the {request.method} request is not a valid protobuf message: {request.error}"
        else:
            try:
                return await fn(request, context)
            except ServeError as exc:  # only its code and text outlive the except: no cycle holds
                code, message = exc.grpc_code, client_message(exc)  # the request's tensors past this call
            except Exception as exc:  # noqa: BLE001 - a bug answers INTERNAL with an error id
                code, message = grpc.StatusCode.INTERNAL, str(internal_error(f"answering gRPC {method}", exc))
        del request
        if code != grpc.StatusCode.INTERNAL:
            log.info("gRPC %s %s: %s", code.name, method, bounded(message, 300))
        await context.abort(code, message)
    return handler


def create_grpc_server(core: Core, host: str, port: int,
                       limits: Limits = DEFAULT_LIMITS) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server with the inference service, bound to ``host:port`` (0: any free port);
    messages over ``limits.grpc_max_message_bytes`` are refused (RESOURCE_EXHAUSTED) before they
    are read, and the handshake, idle and age timeouts of ``limits`` apply."""
    return servicer_server(InferenceServicer(core), host, port, limits)


def servicer_server(servicer: InferenceServicer, host: str, port: int, limits: Limits = DEFAULT_LIMITS,
                    reuse_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """``create_grpc_server`` for a given servicer; ``reuse_port``: share the port with other
    listeners (``SO_REUSEPORT``: the gRPC front ends', see ``ember.serve.relay.hub``)."""
    server = unbound_server(servicer, limits, reuse_port)
    return server, bind_server(server, host, port)


def bind_server(server: grpc.aio.Server, host: str, port: int) -> int:
    """Binds ``server`` (of ``unbound_server``) to ``host:port``; returns the port bound."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}; is another server using it?")
    return bound


def unbound_server(servicer: InferenceServicer, limits: Limits = DEFAULT_LIMITS,
                   reuse_port: bool = False) -> grpc.aio.Server:
    """``servicer_server`` before it binds a port: made ahead of need, it starts in a few ms."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _rpc(getattr(servicer, name), name), request_deserializer=_deserializer(name, req),
            response_serializer=resp.SerializeToString)
        for name, (req, resp) in service_methods().items()
    }
    options = [*limits.grpc_server_options(), ("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=limits.grpc_max_concurrent_rpcs)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return server
