"""``ember serve``: a KServe v2 / Open Inference Protocol server for Ember engines.

A drop-in for Triton Inference Server clients (``tritonclient.http``, ``tritonclient.grpc``, plain
HTTP): a model repository, dynamic batching, parallel instances, Prometheus metrics.

>>> from ember.serve import ServerOptions, ServerThread
>>> with ServerThread(ServerOptions("models", http_port=0, grpc_port=0, metrics_port=0)) as srv:  # doctest: +SKIP
...     url = f"127.0.0.1:{srv.http_port}"
"""
from ember.serve.config import ModelConfig, read_config
from ember.serve.errors import (
    BadRequestError, ModelConfigError, ModelNotFoundError, QueueFullError, RequestTimeoutError,
    ServeError, UnavailableError,
)
from ember.serve.server import Server, ServerOptions, ServerThread, run_server

__all__ = [
    "ModelConfig", "read_config", "Server", "ServerOptions", "ServerThread", "run_server",
    "ServeError", "BadRequestError", "ModelConfigError", "ModelNotFoundError", "QueueFullError",
    "RequestTimeoutError", "UnavailableError",
]
