"""Errors of the inference server, each with the HTTP status and gRPC code it is answered with.

Every error a client can trigger is a ``ServeError`` (an ``EmberError``); the HTTP front end
answers ``{"error": str(exc)}`` with ``exc.http_status``, the gRPC front end aborts with
``exc.grpc_code`` and the same message.
"""
from __future__ import annotations

import logging
import secrets

import grpc

from ember.errors import EmberError, InputError

log = logging.getLogger("ember.serve")


class ServeError(EmberError):
    """Base of the errors a request can be answered with."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class ModelConfigError(ServeError):
    """A model's config, version folders or model file are wrong; loading it failed (HTTP 400)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(ServeError):
    """The request names a model or version the server does not serve (HTTP 404)."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class BadRequestError(ServeError, InputError):
    """The request is malformed or does not match the model's inputs (HTTP 400)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnavailableError(ServeError):
    """The server cannot take the request now: full queue, timeout, shutting down (HTTP 503)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class QueueFullError(UnavailableError):
    """The model's queue holds ``max_queue_size`` requests already."""


class RequestTimeoutError(UnavailableError):
    """The request waited in the queue longer than its timeout (Triton answers UNAVAILABLE too)."""


class InferenceFailedError(ServeError):
    """The engine failed while executing a batch (HTTP 500)."""


class InstanceFailedError(InferenceFailedError):
    """An instance process failed a batch or died; its message carries the engine's own text,
    which goes to the log, never to the client (see ``internal_error``)."""


class InstanceDiedError(InstanceFailedError):
    """An instance process died (killed, crashed) while running a batch; the batch runs again on
    its restarted process (``Scheduler._isolate``), so a single death costs no request."""


class PayloadTooLargeError(BadRequestError):
    """The request is larger than a configured limit (HTTP 413; gRPC RESOURCE_EXHAUSTED, as gRPC
    itself answers a message over its size limit)."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BodyTimeoutError(BadRequestError):
    """The request's body did not arrive within ``--http-body-timeout`` of its head (HTTP 408;
    the connection is closed: the rest of a body that slow is not waited for)."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ClientGoneError(BadRequestError):
    """The client closed its connection before its request was read (no one hears the answer)."""

    http_status = 400


class ModelControlError(ServeError):
    """Loading and unloading models is turned off (``--model-control-mode none``) (HTTP 403)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(ServeError):
    """The model-control request lacks the token the server was started with (HTTP 401)."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


def internal_error(what: str, exc: BaseException) -> InferenceFailedError:
    """An error of the server itself (a bug, a dead instance): logged once with an id and its
    traceback; the client hears only the id, never the exception's text."""
    eid = secrets.token_hex(6)
    remote = getattr(exc, "remote_traceback", "")
    log.error("internal error %s while %s: %s: %s%s", eid, what, type(exc).__name__,
              str(exc).splitlines()[0][:500] if str(exc) else "",
              f"\n{remote}" if remote else "", exc_info=exc)
    return InferenceFailedError(f"internal error {eid} while {what}; the server log has the details "
                                f"under this id")


def bounded(text: str, limit: int = 300) -> str:
    """``text`` with lone surrogates escaped and at most ``limit`` characters (then ``...``): what
    a client sent can be long, and a lone surrogate breaks UTF-8 writers."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def client_message(exc: BaseException, limit: int = 800) -> str:
    """An error's message as answered (a request can put a long name in it)."""
    return bounded(str(exc), limit)


def safe_text(value: object, limit: int = 200) -> str:
    """A short, printable repr of a client-given value for error messages (bounded in length and
    depth; lone surrogates escaped)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, 60, 60, 6, 6
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a repr must never fail an error message
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."
