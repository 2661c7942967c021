"""One served model inside one Ray process: its config, signature and one execution context.

This module holds no Ray: a Serve replica (``ember.integrations.ray.serve``) wraps a
``ModelReplica``, and its tests run it without a cluster. The model folder is read exactly as
``ember serve`` reads it (``ember.serve.config.read_config``, ``ember.serve.engines.load_engine``,
``ember.serve.signature.resolve_signature``), so a repository serves the same way under both.

>>> source = resolve_model("models/resnet")                                  # doctest: +SKIP
>>> replica = ModelReplica(source)                                           # doctest: +SKIP
>>> pending = replica.prepare({"input": batch}, None)                        # doctest: +SKIP
>>> outputs = await replica.run_alone(pending)                               # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

import ember
from ember.errors import EmberError
from ember.plan.config import Device
from ember.serve.batcher import batch_buckets, batch_key, check_batch_dim, padded_size, request_error
from ember.serve.config import ModelConfig, read_config
from ember.serve.datatypes import to_numpy
from ember.serve.engines import default_cache_dir, find_model_file, load_engine, onnx_build_config
from ember.serve.errors import BadRequestError, ModelConfigError, ServeError
from ember.serve.repository import version_dirs
from ember.serve.signature import Signature, resolve_signature

log = logging.getLogger("ember.integrations.ray")

Feeds = dict[str, np.ndarray]
#: what one request of a batch comes back with: its outputs, or the error it is answered with
Outcome = Union[Feeds, ServeError]


@dataclass(frozen=True)
class ModelSource:
    """Where a replica finds its model; resolved once on the driver (``resolve_model``).

    ``engine_file``: an engine built once and shipped to every replica (``model.ember`` of the
    version folder, or the build cached by the driver); ``None``, or a path that does not exist
    on a replica's node, makes the replica build the version folder's ONNX model itself, cached
    in ``cache_dir`` on its node, as ``ember serve`` does.
    """

    name: str
    model_dir: str
    version: str
    engine_file: Optional[str]
    cache_dir: str
    device: str
    #: the config's ``max_batch_size`` (0: no batch dim)
    max_batch_size: int = 0


def resolve_model(model_dir: Union[str, Path], cache_dir: Union[str, Path, None] = None,
                  build: bool = True) -> ModelSource:
    """Reads ``model_dir/config.yaml``, picks the version to serve (the newest its version
    policy selects) and, for a CPU model given as ONNX, builds the engine here once (``build``)
    so that every replica loads the same file. A CUDA model given as ONNX is built by each
    replica on its own GPU (the engine is tuned to the device it is built on).

    Raises ``ModelConfigError`` naming the file at fault, before any replica starts.
    """
    folder = Path(model_dir).resolve()
    if not folder.is_dir():
        raise ModelConfigError(f"{model_dir}: not a model folder; give REPOSITORY/<model>, the folder "
                               f"that holds config.yaml and version folders 1/, 2/, ...")
    config = read_config(folder)
    available = version_dirs(folder)
    chosen = config.version_policy.select(available)
    if not chosen:
        raise ModelConfigError(f"{folder}: no version folder matches the version policy (folders: "
                               f"{available or 'none'}); add e.g. {folder}/1/model.onnx")
    if len(chosen) > 1:
        log.warning("model %s: the version policy selects versions %s; under Ray the newest (%d) is "
                    "served", config.name, chosen, chosen[-1])
    vdir = folder / str(chosen[-1])
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model_file = find_model_file(vdir)
    engine_file: Optional[Path] = model_file if model_file.suffix == ".ember" else None
    if engine_file is None:
        onnx_build_config(model_file, config)  # the config's shapes and profiles, checked here
        if build and config.device == Device.CPU:
            engine, engine_file = load_engine(vdir, config, cache)
            resolve_signature(config, engine)   # a config that disagrees with the engine fails now
    return ModelSource(name=config.name, model_dir=str(folder), version=vdir.name,
                       engine_file=None if engine_file is None else str(engine_file),
                       cache_dir=str(cache), device=config.device.value,
                       max_batch_size=config.max_batch_size)


@dataclass(eq=False)
class Pending:
    """One validated request: its tensors, its rows (dim 0) and the outputs it asked for."""

    feeds: Feeds
    rows: int
    key: tuple[Any, ...]
    requested: Optional[list[str]]


def total_rows(items: list[Pending]) -> int:
    """The size of a batch in inferences (rows), what ``max_batch_size`` bounds."""
    return sum(p.rows for p in items)


class ModelReplica:
    """A model's engine with one execution context, run on a thread of its own.

    The event loop that receives requests never waits on the engine: every run goes to the
    context's thread (PyTorch releases the interpreter lock while it computes).
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        folder = Path(source.model_dir)
        self.config: ModelConfig = read_config(folder)
        self.name, self.version = self.config.name, source.version
        self.engine = self._load(folder / source.version)
        self.signature: Signature = resolve_signature(self.config, self.engine)
        self.buckets = batch_buckets(self.config, self.signature.max_batch_size)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"ember-{self.name}")
        self._ctx: Any = None
        #: engine runs so far, the rows they took, the largest run in rows, their time in the engine
        self.runs = self.rows_run = self.largest_run = self.infer_ns = 0
        self._waiting: deque[tuple[Pending, asyncio.Future[Outcome]]] = deque()
        self._drainer: Optional[asyncio.Task[None]] = None
        self._thread.submit(self._open).result()

    def _load(self, vdir: Path) -> Any:
        file = self.source.engine_file
        if file is not None and Path(file).is_file():
            return ember.load(file)
        if file is not None:
            log.info("model %s: engine file %s is not on this node; building %s here", self.name, file, vdir)
        engine, _ = load_engine(vdir, self.config, Path(self.source.cache_dir))
        return engine

    def _open(self) -> None:
        self._ctx = self.engine.create_context()
        fixed = all(d >= 0 for t in self.signature.inputs for d in t.dims)
        for size in self.buckets if fixed else ():  # CUDA: capture each bucket's graph before serving
            feeds = {t.name: np.zeros((size, *t.dims), to_numpy(t.datatype)) for t in self.signature.inputs}
            try:
                self._ctx.infer(feeds)
            except EmberError as exc:
                log.warning("model %s: warm-up at batch %d failed (%s); that size is prepared on first use",
                            self.name, size, exc)
                break

    def close(self) -> None:
        """Closes the execution context and its thread."""
        if self._ctx is not None:
            self._thread.submit(self._ctx.close).result()
            self._ctx = None
        self._thread.shutdown(wait=True)

    # ---- what the model takes ---------------------------------------------------------------
    @property
    def batching(self) -> bool:
        """Whether requests are batched together (``dynamic_batching`` in the config)."""
        return self.config.dynamic_batching is not None and self.signature.max_batch_size > 0

    @property
    def max_batch_size(self) -> int:
        """The most inferences (rows) one engine run takes, at least 1."""
        return max(self.signature.max_batch_size, 1)

    @property
    def batch_wait_s(self) -> float:
        """How long the first request of a batch waits for company (the config's
        ``max_queue_delay_microseconds``)."""
        b = self.config.dynamic_batching
        return b.max_queue_delay_us / 1e6 if b is not None else 0.0

    def prepare(self, feeds: Feeds, requested: Optional[list[str]]) -> Pending:
        """Checks a request against the model (``BadRequestError`` names the input or output at
        fault) and returns it ready to run."""
        names = self.signature.output_names()
        unknown = [n for n in requested or () if n not in names]
        if unknown:
            raise BadRequestError(f"model '{self.name}' has no output '{unknown[0]}'; its outputs are "
                                  f"{', '.join(names)}")
        rows = self.signature.check(feeds)
        return Pending(feeds, rows, batch_key(feeds), requested)

    # ---- running ------------------------------------------------------------------------
    async def run_alone(self, pending: Pending) -> Feeds:
        """Runs one request by itself; raises the ``ServeError`` it is answered with."""
        outcome = (await self.run_batch([pending]))[0]
        if isinstance(outcome, ServeError):
            raise outcome
        return outcome

    async def run_batch(self, items: list[Pending]) -> list[Outcome]:
        """Queues requests for the engine and returns one outcome per request, in order.

        The engine takes work only when it is free, as ``ember serve``'s batcher does: then it
        runs the oldest waiting request together with every waiting request whose non-batch dims
        and dtypes agree, up to ``max_batch_size`` rows, whichever call queued them. (``@serve.batch``
        hands batches over as soon as its wait time passes, busy engine or not; merging them here
        keeps batches full under load.) When a run of several fails, its requests run again one
        by one, so only the request at fault hears of it."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in items]
        self._waiting.extend(zip(items, futures))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return [await f for f in futures]

    async def _drain(self) -> None:
        while self._waiting:
            taken = self._take()
            outcomes = await self._run_group([p for p, _ in taken])
            for (_, future), outcome in zip(taken, outcomes):
                if not future.done():
                    future.set_result(outcome)

    def _take(self) -> list[tuple[Pending, asyncio.Future[Outcome]]]:
        """The next run: the oldest request and, when batching, the waiting ones that fit with it."""
        head = self._waiting.popleft()
        if not self.batching:
            return [head]
        taken, rows = [head], head[0].rows
        rest: deque[tuple[Pending, asyncio.Future[Outcome]]] = deque()
        while self._waiting:
            item = self._waiting.popleft()
            if item[0].key != head[0].key:
                rest.append(item)
            elif rows + item[0].rows <= self.max_batch_size:
                taken.append(item)
                rows += item[0].rows
            else:  # full: the next run starts with this one (first come, first served)
                self._waiting.appendleft(item)
                break
        self._waiting.extendleft(reversed(rest))
        return taken

    async def _run_group(self, members: list[Pending]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        try:
            outs = await loop.run_in_executor(self._thread, self._run, members)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            if len(members) == 1:
                return [self._error(members[0], exc, data_fault=False)]
            return await self._isolate(members)
        return [self._select(p, out) for p, out in zip(members, outs)]

    async def _isolate(self, members: list[Pending]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        results: list[Union[Feeds, Exception]] = []
        for p in members:
            try:
                results.append((await loop.run_in_executor(self._thread, self._run, [p]))[0])
            except Exception as exc:  # noqa: BLE001 - answered below
                results.append(exc)
        alone_ok = any(not isinstance(r, Exception) for r in results)
        return [self._error(p, r, data_fault=alone_ok) if isinstance(r, Exception) else self._select(p, r)
                for p, r in zip(members, results)]

    def _select(self, p: Pending, out: Feeds) -> Feeds:
        names = p.requested if p.requested is not None else self.signature.output_names()
        return {n: out[n] for n in names}

    def _run(self, members: list[Pending]) -> list[Feeds]:
        """On the context's thread: one engine run over the members' rows, split back."""
        batched = self.signature.max_batch_size > 0
        total = sum(p.rows for p in members)
        rows = padded_size(self.buckets, total) if batched else total
        if len(members) == 1 and rows == total:
            feeds = members[0].feeds
        else:
            feeds = {}
            for name in members[0].feeds:
                pieces = [p.feeds[name] for p in members]
                if rows > total:
                    pieces.append(np.repeat(pieces[-1][-1:], rows - total, axis=0))
                feeds[name] = np.concatenate(pieces, axis=0)
        t0 = time.perf_counter_ns()
        result = self._ctx.infer(feeds)
        self.infer_ns += time.perf_counter_ns() - t0
        self.runs, self.rows_run, self.largest_run = self.runs + 1, self.rows_run + total, max(self.largest_run, total)
        split: list[Feeds] = [{} for _ in members]
        for name in self.signature.output_names():
            arr = np.asarray(result[name])
            if batched:
                check_batch_dim(name, arr, rows)
            start = 0
            for i, p in enumerate(members):
                split[i][name] = arr[start:start + p.rows] if batched else arr
                start += p.rows
        return split

    def _error(self, p: Pending, exc: BaseException, data_fault: bool) -> ServeError:
        """The error a failed request is answered with, as ``ember serve`` answers it
        (``request_error``): a client's error (400) when the engine failed on the request's own
        values, otherwise an internal error with an id in the log."""
        return request_error(exc, model=self.name, version=self.version, rows=p.rows, feeds=p.feeds,
                             data_fault=data_fault)
