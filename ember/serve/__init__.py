"""``ember serve``: a KServe v2 / Open Inference Protocol server for Ember engines.

A drop-in for Triton Inference Server clients (``tritonclient.http``, ``tritonclient.grpc``, plain
HTTP): a model repository, dynamic batching, parallel instances, Prometheus metrics.

>>> from ember.serve import ServerOptions, ServerThread
>>> with ServerThread(ServerOptions("models", http_port=0, grpc_port=0, metrics_port=0)) as srv:  # doctest: +SKIP
...     url = f"127.0.0.1:{srv.http_port}"

The names below are imported on first use, so ``ember.serve.cli`` (what ``ember --help`` loads)
does not pull in FastAPI, uvicorn and gRPC.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "ember.serve.config", "read_config": "ember.serve.config",
    "Server": "ember.serve.server", "ServerOptions": "ember.serve.server",
    "ServerThread": "ember.serve.server", "run_server": "ember.serve.server",
    "ServeError": "ember.serve.errors", "BadRequestError": "ember.serve.errors",
    "ModelConfigError": "ember.serve.errors", "ModelNotFoundError": "ember.serve.errors",
    "QueueFullError": "ember.serve.errors", "RequestTimeoutError": "ember.serve.errors",
    "UnavailableError": "ember.serve.errors", "Limits": "ember.serve.limits",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ember.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
