"""Errors of the inference server, each with the HTTP status and gRPC code it is answered with.

Every error a client can trigger is a ``ServeError`` (an ``EmberError``); the HTTP front end
answers ``{"error": str(exc)}`` with ``exc.http_status``, the gRPC front end aborts with
``exc.grpc_code`` and the same message.
"""
from __future__ import annotations

import grpc

from ember.errors import EmberError, InputError


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
