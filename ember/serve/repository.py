"""The model repository: ``REPOSITORY/<model>/config.yaml`` and version folders ``<n>/model.*``.

``ModelRepository`` loads, reloads and unloads models and finds the served version of a request.
A reload builds the new versions completely before it swaps them in, so a failed reload leaves
the old versions serving; an unload stops new requests at once and drains the queued ones.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ember.errors import EmberError
from ember.serve.batcher import Feeds, Scheduler
from ember.serve.config import ModelConfig, find_config_file, read_config
from ember.serve.engines import ModelEngine, find_model_file, load_engine
from ember.serve.errors import ModelConfigError, ModelNotFoundError
from ember.serve.signature import Signature, resolve_signature
from ember.serve.stats import ModelStats

log = logging.getLogger("ember.serve")

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class ServedModel:
    """One loaded version of a model: its config, signature, scheduler and statistics."""

    name: str
    version: str
    config: ModelConfig
    signature: Signature
    engine: ModelEngine
    scheduler: Scheduler
    stats: ModelStats
    model_file: str

    async def infer(self, feeds: Feeds, timeout_us: Optional[int] = None) -> Feeds:
        """Validates the request's tensors and runs them through the scheduler."""
        batch = self.signature.check(feeds)
        return await self.scheduler.infer(feeds, batch, timeout_us)


class ModelRepository:
    """The models of one repository folder and their load state."""

    def __init__(self, root: Path, cache_dir: Path, default_max_queue_size: int = 0,
                 default_timeout_us: int = 0) -> None:
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)
        #: the queue bound of models whose config sets no max_queue_size (0: unbounded)
        self.default_max_queue_size = default_max_queue_size
        #: the queue timeout of models whose config sets no default_timeout_microseconds (0: none)
        self.default_timeout_us = default_timeout_us
        self._served: dict[str, dict[str, ServedModel]] = {}
        self._state: dict[str, tuple[str, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._attempted: set[str] = set()   # models whose load was asked for and not undone
        if not self.root.is_dir():
            raise ModelConfigError(f"model repository {self.root} is not a folder; give the folder "
                                   f"that holds <model>/config.yaml and <model>/<version>/model.*")

    # ---- what is there ------------------------------------------------------------------
    def names_on_disk(self) -> list[str]:
        """Folders of the repository that hold a model (a config file or version folders)."""
        out = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (
                    find_config_file(d) is not None or version_dirs(d)):
                out.append(d.name)
        return out

    def index(self) -> list[dict]:
        """Every model on disk or loaded, with its versions and state (``/v2/repository/index``)."""
        rows = []
        for name in sorted(set(self.names_on_disk()) | set(self._served) | set(self._state)):
            state, reason = self._state.get(name, (UNAVAILABLE, "not loaded"))
            versions = sorted(self._served.get(name, {}), key=int) or [""]
            for v in versions:
                row = {"name": name, "version": v, "state": state}
                if reason:
                    row["reason"] = reason
                rows.append(row)
        return rows

    def all_stats(self) -> list[ModelStats]:
        return [m.stats for versions in self._served.values() for m in versions.values()]

    def served(self) -> list[ServedModel]:
        return [m for name in sorted(self._served) for _, m in sorted(self._served[name].items(),
                                                                       key=lambda kv: int(kv[0]))]

    def failed(self) -> list[str]:
        """Models whose last load failed."""
        return [n for n, (s, _) in self._state.items() if s == UNAVAILABLE and n in self._attempted]

    # ---- lookup -------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> ServedModel:
        """The served model for a request; ``ModelNotFoundError`` (404) names what exists."""
        versions = self._served.get(name)
        if not versions:
            if name in self._state or name in self.names_on_disk():
                state, reason = self._state.get(name, (UNAVAILABLE, "not loaded"))
                raise ModelNotFoundError(
                    f"model '{name}' is not ready (state {state}{': ' + reason if reason else ''}); "
                    f"load it with POST /v2/repository/models/{name}/load")
            known = ", ".join(sorted(self._served)) or "none"
            raise ModelNotFoundError(f"unknown model '{name}'; the server serves: {known}")
        if not version:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFoundError(f"model '{name}' has no version '{version}' loaded; loaded versions "
                                     f"are {', '.join(sorted(versions, key=int))}")
        return versions[version]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ModelNotFoundError:
            return False
        return self._state.get(name, (READY, ""))[0] == READY

    # ---- load / unload ------------------------------------------------------------------
    async def load_all(self, exit_on_error: bool = False) -> None:
        """Loads every model of the repository; a failure is logged, kept as the model's state
        (UNAVAILABLE with the reason) and the other models are served, unless ``exit_on_error``:
        then the first failure is raised."""
        for name in self.names_on_disk():
            try:
                await self.load(name)
            except EmberError as exc:
                if exit_on_error:
                    raise
                log.error("%s", exc)

    async def load(self, name: str, config: Optional[Mapping[str, Any]] = None) -> None:
        """(Re)loads a model from its folder; ``config`` replaces its config file when given."""
        if name not in self.names_on_disk():
            raise ModelNotFoundError(f"model '{name}' is not in the model repository; its models "
                                     f"are: {', '.join(self.names_on_disk()) or 'none'}")
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._attempted.add(name)
            previous = self._state.get(name)
            self._state[name] = (LOADING, "")
            try:
                fresh = await self._load_versions(name, config)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the model UNAVAILABLE, never LOADING
                reason = self._reason(exc)
                keep = previous if previous and previous[0] == READY and self._served.get(name) else None
                self._state[name] = keep or (UNAVAILABLE, reason)
                if isinstance(exc, ModelConfigError):
                    raise ModelConfigError(reason) from None
                if not isinstance(exc, EmberError):
                    log.error("model %s: loading failed with %s", name, type(exc).__name__, exc_info=exc)
                raise ModelConfigError(f"failed to load model '{name}': {reason}") from None
            except BaseException:
                self._state[name] = previous or (UNAVAILABLE, "loading was interrupted")
                raise
            old = self._served.get(name, {})
            self._served[name] = fresh
            self._state[name] = (READY, "")
            for m in old.values():
                await m.scheduler.close()
            log.info("model %s ready: versions %s", name, ", ".join(fresh))

    def _reason(self, exc: BaseException) -> str:
        """An error's text for clients: paths relative to the repository, one bounded line."""
        text = f"{exc}" if isinstance(exc, EmberError) else f"{type(exc).__name__}: {exc}"
        text = text.replace(f"{self.root.resolve()}/", "").replace(f"{self.root}/", "")
        text = " ".join(text.split())
        return text if len(text) <= 500 else text[:500] + "..."

    async def unload(self, name: str) -> None:
        """Stops routing requests to the model, answers its queued ones, closes its instances."""
        if name not in self._served and name not in self._state:
            raise ModelNotFoundError(f"unknown model '{name}'; nothing to unload")
        async with self._locks.setdefault(name, asyncio.Lock()):
            served = self._served.pop(name, {})
            self._state[name] = (UNLOADING, "")
            for m in served.values():
                await m.scheduler.close()
            self._state[name] = (UNAVAILABLE, "unloaded")
            self._attempted.discard(name)
            log.info("model %s unloaded", name)

    async def close(self) -> None:
        """Drains and closes every model (server shutdown)."""
        await asyncio.gather(*(m.scheduler.drain() for m in self.served()))
        log.debug("ember serve: queues drained")
        await asyncio.gather(*(m.scheduler.close() for m in self.served()))
        self._served.clear()

    async def _load_versions(self, name: str, replacement: Optional[Mapping[str, Any]]) -> dict[str, ServedModel]:
        folder = self.root / name
        config = read_config(folder, replacement)
        available = version_dirs(folder)
        chosen = config.version_policy.select(available)
        if not chosen:
            raise ModelConfigError(f"{folder}: no version folder matches the version policy "
                                   f"(folders: {available or 'none'}); add e.g. {folder}/1/model.onnx")
        fresh: dict[str, ServedModel] = {}
        try:
            for v in chosen:
                fresh[str(v)] = await self._load_version(config, folder / str(v))
        except BaseException:
            for m in fresh.values():
                await m.scheduler.close()
            raise
        return fresh

    async def _load_version(self, config: ModelConfig, vdir: Path) -> ServedModel:
        loop = asyncio.get_running_loop()
        engine, engine_file = await loop.run_in_executor(None, load_engine, vdir, config, self.cache_dir)
        signature = resolve_signature(config, engine)
        stats = ModelStats(config.name, vdir.name)
        scheduler = Scheduler(config.name, vdir.name, engine, signature, config, stats, engine_file,
                              default_max_queue_size=self.default_max_queue_size,
                              default_timeout_us=self.default_timeout_us)
        await scheduler.start()
        return ServedModel(config.name, vdir.name, config, signature, engine, scheduler, stats,
                           find_model_file(vdir).name)


def version_dirs(folder: Path) -> list[int]:
    """The numbered version folders (1/, 2/, ...) of a model folder, in increasing order."""
    return sorted(int(d.name) for d in folder.iterdir()
                  if d.is_dir() and d.name.isdigit() and int(d.name) > 0)
