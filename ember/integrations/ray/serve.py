"""Ember engines behind Ray Serve: ``EmberDeployment`` and a repository deployed as applications.

Each model of a repository is a Serve application at ``/v2/models/<model>`` whose replicas each
hold one Ember engine (on a GPU of their own for a CUDA model) and answer the KServe v2 protocol
themselves; ``EmberFrontDoor`` at ``/`` answers health, server metadata and unknown models. So
``tritonclient.http`` works unchanged against the Serve HTTP proxy.

>>> import ray
>>> from ray import serve
>>> from ember.integrations.ray import EmberDeployment, resolve_model
>>> source = resolve_model("models/resnet")                                       # doctest: +SKIP
>>> app = EmberDeployment.options(num_replicas=2).bind(source)                    # doctest: +SKIP
>>> serve.run(app, name="resnet", route_prefix="/v2/models/resnet")              # doctest: +SKIP

or the whole repository with its front door: ``deploy_repository("models", RayServeOptions(replicas=2))``.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import ray  # type: ignore[import-not-found]  # (typed where Ray is installed)
from ray import serve  # type: ignore[import-not-found]

from ember.errors import EmberError
from ember.integrations.ray.http import front_app, model_app
from ember.integrations.ray.options import RayServeOptions, request_timeout
from ember.integrations.ray.replica import Feeds, ModelReplica, ModelSource, Outcome, Pending, resolve_model, total_rows
from ember.serve.errors import ModelConfigError, ServeError
from ember.serve.limits import DEFAULT_LIMITS, Limits
from ember.serve.repository import ModelRepository

log = logging.getLogger("ember.integrations.ray")

FRONT_DOOR_APP = "ember"


class _MicroBatchWarning(logging.Filter):
    """Drops Serve's warning that ``max_batch_size * max_concurrent_batches`` exceeds
    ``max_ongoing_requests``: the concurrent batches here are merged into runs of at most
    ``max_batch_size`` (``ModelReplica.run_batch``), so the product bounds nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`max_concurrent_batches`" not in record.getMessage()


class EmberModelServer:
    """The class of ``EmberDeployment``'s replicas: one engine, one execution context, requests
    batched with ``@serve.batch`` (``max_batch_size`` inferences and
    ``max_queue_delay_microseconds`` from the model's config; a model without
    ``dynamic_batching`` runs each request alone)."""

    def __init__(self, source: ModelSource, limits: Limits = DEFAULT_LIMITS) -> None:
        self.replica = ModelReplica(source)
        self.limits = limits
        if self.replica.batching:
            logging.getLogger("ray.serve").addFilter(_MicroBatchWarning())
            batcher: Any = self._batched  # @serve.batch's setters, which its type does not show
            batcher.set_max_batch_size(self.replica.max_batch_size)
            batcher.set_batch_wait_timeout_s(self.replica.batch_wait_s)
        log.info("model %s version %s: replica ready (batching %s)", self.replica.name, self.replica.version,
                 f"up to {self.replica.max_batch_size}" if self.replica.batching else "off")

    def __serve_build_asgi_app__(self) -> Any:
        return model_app(self.replica, self._infer, self.limits)

    async def _infer(self, pending: Pending) -> Feeds:
        if not self.replica.batching:
            return await self.replica.run_alone(pending)
        outcome = await self._batched(pending)
        if isinstance(outcome, ServeError):
            raise outcome
        return outcome

    # max_concurrent_batches: the engine takes one run at a time, but the batches Serve forms
    # while it runs must reach ModelReplica.run_batch, which merges them for the next run.
    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0, batch_size_fn=total_rows, max_concurrent_batches=1024)
    async def _batched(self, items: list[Pending]) -> list[Outcome]:
        return await self.replica.run_batch(items)

    async def statistics(self) -> dict[str, Any]:
        """This replica's engine runs so far: ``runs``, ``rows`` (inferences) and the largest run
        (``handle.statistics.remote()`` asks one replica; Ray's metrics cover them all)."""
        r = self.replica
        replica_id = serve.get_replica_context().replica_id.unique_id
        return {"model": r.name, "version": r.version, "replica": replica_id, "runs": r.runs, "rows": r.rows_run,
                "largest_run": r.largest_run,
                "infer_s": r.infer_ns / 1e9, "max_batch_size": r.max_batch_size if r.batching else 1}

    async def ready(self) -> str:
        """Answers once the replica serves (the front door's readiness probe)."""
        return f"{self.replica.name}:{self.replica.version}"

    def __del__(self) -> None:
        replica = getattr(self, "replica", None)
        if replica is not None:
            replica.close()


class FrontDoorServer:
    """The class of ``EmberFrontDoor``'s replica: ``/v2/health/*``, ``/v2``,
    ``/v2/repository/index`` and a 404 for unknown models.

    ``models``: the served models (each the application of that name; it is ready while Serve
    reports it RUNNING); ``failed``: models that could not be deployed, with the reason (reported
    as not ready, as ``ember serve`` reports a model that failed to load)."""

    def __init__(self, models: list[str], failed: Optional[Mapping[str, str]] = None) -> None:
        self.models = list(models)
        self.failed = dict(failed or {})

    def __serve_build_asgi_app__(self) -> Any:
        return front_app(self.models, self.failed, self._readiness)

    async def _readiness(self) -> dict[str, Optional[str]]:
        status = await asyncio.get_running_loop().run_in_executor(None, serve.status)
        states: dict[str, Optional[str]] = dict(self.failed)
        for model in self.models:
            states[model] = app_state(status, model)
        return states


#: The Serve deployment of one model: ``EmberDeployment.options(num_replicas=2).bind(source)``.
EmberDeployment: Any = serve.deployment(name="EmberDeployment", health_check_period_s=5,
                                        graceful_shutdown_timeout_s=10)(serve.ingress()(EmberModelServer))
#: The Serve deployment of a repository's server-wide endpoints (no CPU reserved: it only routes).
EmberFrontDoor: Any = serve.deployment(name="EmberFrontDoor", ray_actor_options={"num_cpus": 0},
                                       health_check_period_s=5)(serve.ingress()(FrontDoorServer))


def app_state(status: Any, app: str) -> Optional[str]:
    """``None`` when Serve runs the application ``app``, else why it does not (from ``serve.status()``)."""
    overview = status.applications.get(app)
    if overview is None:
        return "not deployed"
    state = getattr(overview.status, "value", str(overview.status))
    if state == "RUNNING":
        return None
    message = " ".join(str(overview.message or "").split())[:500]
    return f"{state}{': ' + message if message else ''}"


def model_application(model: Union[str, Path, ModelSource], options: Optional[RayServeOptions] = None,
                      cache_dir: Union[str, Path, None] = None) -> Any:
    """The Serve application of one model folder (``REPOSITORY/<model>``), with the replicas,
    autoscaling bounds and GPUs of ``options``; run it at ``route_prefix=f"/v2/models/{name}"``."""
    opts = options or RayServeOptions()
    source = model if isinstance(model, ModelSource) else resolve_model(model, cache_dir)
    deployment = EmberDeployment.options(**opts.deployment_options(source.max_batch_size, source.device))
    return deployment.bind(source, opts.limits)


def deploy_repository(repository: Union[str, Path],
                      options: Union[RayServeOptions, Mapping[str, RayServeOptions], None] = None, *,
                      address: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
                      cache_dir: Union[str, Path, None] = None, exit_on_error: bool = False,
                      request_timeout_s: Optional[float] = None) -> dict[str, str]:
    """Deploys every model of ``repository`` on a Ray cluster (``address``; ``None`` starts a
    local one unless this process is connected already) with its front door, Serve's HTTP proxy
    listening on ``host:port``; the models' replicas start together. ``options``: for every
    model, or per model name (the others get the defaults). ``request_timeout_s``: Serve's
    end-to-end limit, after which the proxy answers HTTP 408 (a request routed to a replica that
    died can otherwise wait on Serve's recovery for as long as that takes); it is the proxy's
    setting, so it holds for the Serve instance this call starts, not one already running. Returns
    each model's state: ``"READY"`` or the reason it failed; with ``exit_on_error`` a failure
    raises ``ModelConfigError`` instead."""
    timeout = request_timeout(request_timeout_s)
    root = Path(repository)
    names = ModelRepository(root, Path(cache_dir) if cache_dir else root).names_on_disk()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    limit = {} if timeout is None else {"request_timeout_s": timeout}
    serve.start(http_options={"host": host, "port": port, **limit})
    failed: dict[str, str] = {}
    targets = []
    for name in names:
        opts = options.get(name) if isinstance(options, Mapping) else options
        try:
            app = model_application(root / name, opts or RayServeOptions(), cache_dir)
        except EmberError as exc:  # the reason as clients read it: paths relative to the repository
            text = str(exc).replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
            failed[name] = " ".join(text.split())[:500]
            if exit_on_error:
                raise ModelConfigError(f"model '{name}' could not be deployed: {failed[name]}") from exc
            log.error("model %s could not be deployed: %s", name, failed[name])
            continue
        targets.append(serve.RunTarget(target=app, name=name, route_prefix=f"/v2/models/{name}"))
    served = [t.name for t in targets]
    targets.append(serve.RunTarget(target=EmberFrontDoor.bind(served, failed), name=FRONT_DOOR_APP,
                                   route_prefix="/"))
    try:
        serve.run_many(targets, wait_for_applications_running=True)
    except RuntimeError as exc:  # an application failed to start: its state says why, below
        log.error("deploying the repository: %s", " ".join(str(exc).split())[:500])
    status = serve.status()
    states = {name: app_state(status, name) or "READY" for name in served}
    states.update(failed)
    bad = {n: s for n, s in states.items() if s != "READY"}
    if bad and exit_on_error:
        raise ModelConfigError("models could not be deployed: " + "; ".join(f"{n}: {s}" for n, s in bad.items()))
    return dict(sorted(states.items()))


def undeploy_repository(states: Mapping[str, str]) -> None:
    """Deletes the applications ``deploy_repository`` made (its models and the front door)."""
    for name in [*states, FRONT_DOOR_APP]:
        _delete_quietly(name)


def _delete_quietly(name: str) -> None:
    try:
        serve.delete(name)
    except Exception as exc:  # noqa: BLE001 - deleting what may not exist
        log.debug("serve.delete(%r): %s", name, exc)
