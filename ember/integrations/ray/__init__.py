"""Ember on Ray: engines behind Ray Serve replicas, and inside Ray Data batch inference.

Install with ``pip install ember[ray]`` (Ray Serve and Ray Data).

Online: every model of a repository becomes a Serve application whose replicas each hold one
engine (one per GPU for a CUDA model), batch requests with ``@serve.batch`` as the model's
``config.yaml`` says, and answer the KServe v2 protocol, so ``tritonclient.http`` works
unchanged against the Serve proxy::

    ember serve models --ray --replicas 2            # or, from Python:
    >>> from ember.integrations.ray import RayServeOptions, deploy_repository
    >>> deploy_repository("models", RayServeOptions(replicas=2), port=8000)  # doctest: +SKIP

Offline: ``EmberPredictor`` maps Ray Data batches (named columns to the engine's named inputs)
to outputs, with the engine loaded once per actor::

    >>> ds.map_batches(EmberPredictor, fn_constructor_kwargs={"engine": "model.ember"},
    ...                concurrency=2, batch_size=64)                               # doctest: +SKIP

The names are imported on first use: ``EmberDeployment``, ``EmberFrontDoor``,
``deploy_repository`` and ``model_application`` need Ray Serve; the rest do not.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmberPredictor": "ember.integrations.ray.data",
    "RayServeOptions": "ember.integrations.ray.options",
    "RayOptionsError": "ember.integrations.ray.options",
    "ModelSource": "ember.integrations.ray.replica",
    "resolve_model": "ember.integrations.ray.replica",
    "EmberDeployment": "ember.integrations.ray.serve",
    "EmberFrontDoor": "ember.integrations.ray.serve",
    "deploy_repository": "ember.integrations.ray.serve",
    "undeploy_repository": "ember.integrations.ray.serve",
    "model_application": "ember.integrations.ray.serve",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ember.integrations.ray' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module.endswith(".serve"):
        try:
            import ray.serve  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"ember.integrations.ray.{name} needs Ray Serve ({exc}); install it with "
                              f"pip install 'ember[ray]' (or pip install 'ray[serve,data]')") from exc
    return getattr(importlib.import_module(module), name)
