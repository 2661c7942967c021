"""The per-model scheduler: a queue, a dynamic batcher, and ``instance_count`` execution contexts.

Requests wait in one FIFO queue. Whenever an instance is idle, the batcher takes the oldest
request and gathers the queued requests with the same non-batch shapes (and dtypes) behind it,
up to ``max_batch_size`` inferences. It dispatches at once when the batch is full or reaches a
preferred size, and otherwise waits for more requests until the oldest one has waited
``max_queue_delay_microseconds``. The batch is concatenated along dim 0, run on the instance's
own thread, and split back. Without ``dynamic_batching`` each request runs alone.

Every request accepted by ``Scheduler.infer`` is answered exactly once: with its outputs, or with
an error (timeout in the queue, engine failure, shutdown). A full queue refuses a request before
accepting it.

>>> sched = Scheduler("m", "1", engine, signature, config, ModelStats("m", "1"))  # doctest: +SKIP
>>> await sched.start(); out = await sched.infer({"x": batch}, batch_size=4)        # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

from ember.errors import IndexRangeError, InputError
from ember.serve.config import ModelConfig
from ember.serve.errors import (
    BadRequestError,
    InferenceFailedError,
    InstanceDiedError,
    InstanceFailedError,
    ModelConfigError,
    QueueFullError,
    RequestTimeoutError,
    ServeError,
    UnavailableError,
    internal_error,
)
from ember.serve.signature import Signature
from ember.serve.stats import ModelStats

if TYPE_CHECKING:
    from ember.serve.engines import ModelEngine

log = logging.getLogger("ember.serve")

Feeds = dict[str, np.ndarray]


@dataclass(eq=False)
class _Request:
    feeds: Feeds
    batch: int
    key: tuple
    future: asyncio.Future
    arrived_ns: int
    timer: Optional[asyncio.TimerHandle] = None
    retried: bool = False  # put back in the queue once, after its instance process died


@dataclass
class BatchTimings:
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


def padded_size(buckets: tuple[int, ...], total: int) -> int:
    """The bucket a batch of ``total`` rows runs as (``total`` itself past the largest)."""
    for size in buckets:
        if size >= total:
            return size
    return total


def check_batch_dim(name: str, arr: np.ndarray, rows: int) -> None:
    """A batched run's output must keep the batch first: it is split back along dim 0."""
    if arr.ndim == 0 or arr.shape[0] != rows:
        raise InferenceFailedError(
            f"output '{name}' has shape {list(arr.shape)}, whose dim 0 is not the batch size "
            f"{rows}; the model must keep the batch dim first in every output, or set "
            f"max_batch_size: 0")


def batch_key(feeds: Feeds) -> tuple:
    """Requests may share a batch only if every input agrees in dtype and non-batch dims."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feeds.items()))


class _Instance:
    """One execution context, created, used and closed on its own thread.

    ``buckets``: batch sizes a gathered batch is padded up to (its last row repeated; the padded
    rows' outputs are dropped), so a CUDA engine sees a handful of shapes, each captured once as
    a CUDA graph when the instance opens, instead of capturing (and cuDNN-benchmarking) every
    new batch size while serving. Dynamic batching already requires rows to be independent.
    """

    def __init__(self, engine: ModelEngine, label: str, buckets: tuple[int, ...] = (),
                 warmup: Optional[Callable[[int], Feeds]] = None) -> None:
        self.engine = engine
        self.label = label
        self.buckets = buckets
        self.warmup = warmup
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=label)  # the instance's one thread
        self._cm: Any = None
        self._ctx: Any = None

    def open(self) -> None:
        self._cm = self.engine.create_context()
        self._ctx = self._cm.__enter__()
        if self.warmup is not None:
            for size in self.buckets:  # capture every bucket's graph before serving
                try:
                    self._ctx.infer(self.warmup(size))
                except Exception as exc:  # noqa: BLE001 - serving works without the warm-up
                    log.warning("%s: warm-up at batch %d failed (%s: %s); that size is prepared on "
                                "first use", self.label, size, type(exc).__name__, exc)
                    break

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._ctx = None

    def padded_size(self, total: int) -> int:
        return padded_size(self.buckets, total)

    def restart_if_dead(self) -> None:
        """Nothing to do: a thread instance does not die (``ProcessInstance`` restarts its process)."""

    def run(self, parts: list[tuple[Feeds, int]], batched: bool,
            outputs: list[str]) -> tuple[list[Feeds], BatchTimings]:
        """Runs the requests as one batch; returns each request's outputs (copies it owns)."""
        t0 = time.perf_counter_ns()
        total = sum(b for _, b in parts)
        rows = self.padded_size(total) if batched else total
        if len(parts) == 1 and rows == total:
            feeds = parts[0][0]
        else:
            feeds = {}
            for n in parts[0][0]:
                pieces = [p[0][n] for p in parts]
                if rows > total:
                    pieces.append(np.repeat(pieces[-1][-1:], rows - total, axis=0))
                feeds[n] = np.concatenate(pieces, axis=0)
        t1 = time.perf_counter_ns()
        result = self._ctx.infer(feeds)
        t2 = time.perf_counter_ns()
        split: list[Feeds] = [{} for _ in parts]
        for name in outputs:
            arr = np.asarray(result[name])
            if batched:
                check_batch_dim(name, arr, rows)
            # an array the run made for us alone is handed out as views (no copy per request)
            own = arr.flags.owndata and arr is not parts[0][0].get(name)
            start = 0
            for i, (_, b) in enumerate(parts):
                part = arr[start:start + b] if batched else arr
                split[i][name] = part if own else part.copy()
                start += b
        t3 = time.perf_counter_ns()
        return split, BatchTimings(t1 - t0, t2 - t1, t3 - t2)


def batch_buckets(config: ModelConfig, max_batch_size: int) -> tuple[int, ...]:
    """The padded batch sizes of a model (see ``BatchingConfig.batch_buckets``)."""
    b = config.dynamic_batching
    if b is None or max_batch_size <= 1:
        return ()
    if b.batch_buckets is not None:
        return tuple(b.batch_buckets)
    if config.device != "cuda":
        return ()
    sizes = {max_batch_size, *b.preferred_batch_sizes}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def _warmup_feeds(signature: Signature) -> Optional[Callable[[int], Feeds]]:
    """Zero-filled inputs of a given batch size, or ``None`` when a non-batch dim is dynamic."""
    from ember.serve.datatypes import to_numpy

    if any(d < 0 for t in signature.inputs for d in t.dims):
        return None
    specs = [(t.name, to_numpy(t.datatype), tuple(t.dims)) for t in signature.inputs]
    return lambda size: {n: np.zeros((size, *dims), dtype) for n, dtype, dims in specs}


@dataclass
class _State:
    accepting: bool = True
    flush: bool = False
    tasks: set = field(default_factory=set)


class Scheduler:
    """Queue, dynamic batcher and instances of one model version (see the module docstring)."""

    def __init__(self, name: str, version: str, engine: ModelEngine, signature: Signature,
                 config: ModelConfig, stats: ModelStats, engine_file: Optional[Path] = None,
                 default_max_queue_size: int = 0, default_timeout_us: int = 0) -> None:
        self.name, self.version = name, version
        #: the bound of the queue: the config's max_queue_size, else the server's default (0: none)
        self.max_queue_size = config.max_queue_size or default_max_queue_size
        #: the longest wait in the queue of a request that sets no timeout: the config's
        #: default_timeout_microseconds, else the server's --request-timeout (0: none)
        self.default_timeout_us = config.default_timeout_us or default_timeout_us
        self.engine_file = engine_file
        self.engine, self.signature, self.config, self.stats = engine, signature, config, stats
        self._queue: deque[_Request] = deque()
        self._changed = asyncio.Event()
        self._idle: asyncio.Queue[_Instance] = asyncio.Queue()
        self._instances: list[_Instance] = []
        self._state = _State()
        self._loop_task: Optional[asyncio.Task] = None
        b = config.dynamic_batching
        self._delay_ns = b.max_queue_delay_us * 1000 if b else 0
        self._preferred = set(b.preferred_batch_sizes) if b else set()

    # ---- life cycle ---------------------------------------------------------------------
    @property
    def instance_kind(self) -> str:
        """``thread`` or ``process``: ``instance_kind`` with ``auto`` resolved (a process for cuda
        engines that have a file, see ``ember.serve.instance_process``)."""
        kind = self.config.instance_kind
        if kind == "auto":
            return "process" if self.config.device == "cuda" and self.engine_file is not None else "thread"
        if kind == "process" and self.engine_file is None:
            raise ModelConfigError(
                f"model '{self.name}': instance_kind process loads the engine from its file, but the "
                f"engine built from ONNX could not be written to the engine cache; make the cache "
                f"folder writable (--cache-dir) or use instance_kind: thread")
        return kind

    async def start(self) -> None:
        """Opens ``instance_count`` execution contexts, each on its own thread or process."""
        from ember.serve.instance_process import ProcessInstance, warmup_specs

        loop = asyncio.get_running_loop()
        buckets = batch_buckets(self.config, self.signature.max_batch_size)
        warmup = _warmup_feeds(self.signature) if buckets else None
        kind = self.instance_kind
        for i in range(self.config.instance_count):
            label = f"ember-{self.name}-v{self.version}-{i}"
            if kind == "process":
                inst: Any = ProcessInstance(self.engine_file, label, buckets,  # type: ignore[arg-type]
                                            warmup_specs(self.signature) if buckets else None)
            else:
                inst = _Instance(self.engine, label, buckets, warmup)
            self._instances.append(inst)
            await loop.run_in_executor(inst.thread, inst.open)
            self._idle.put_nowait(inst)
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name=f"batcher-{self.name}")

    async def drain(self) -> None:
        """Refuses new requests, runs every queued one at once (no delay), waits for all answers."""
        self._state.accepting = False
        self._state.flush = True
        self._changed.set()
        if self._loop_task is not None:
            await self._loop_task
        while self._state.tasks:
            await asyncio.gather(*list(self._state.tasks), return_exceptions=True)

    async def close(self) -> None:
        """Drains, then closes the execution contexts and their threads."""
        await self.drain()
        loop = asyncio.get_running_loop()
        # all at once: an instance process takes a while to exit (its engine, torch)
        await asyncio.gather(*(loop.run_in_executor(inst.thread, inst.close) for inst in self._instances))
        for inst in self._instances:
            inst.thread.shutdown(wait=True)
        self._instances.clear()

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    # ---- requests -----------------------------------------------------------------------
    async def infer(self, feeds: Feeds, batch_size: int, timeout_us: Optional[int] = None) -> Feeds:
        """Queues one validated request and returns its outputs (all of the model's outputs).

        ``timeout_us``: the request's longest wait in the queue (``None`` or 0: the default, see
        ``timeout_for``).
        Raises ``QueueFullError`` before accepting when the queue is full; afterwards the request
        is answered with its outputs or with a ``ServeError``.
        """
        if not self._state.accepting:
            raise UnavailableError(f"model '{self.name}' version {self.version} is being unloaded or "
                                   f"the server is shutting down; retry on another server")
        limit = self.max_queue_size
        if limit and len(self._queue) >= limit:
            raise QueueFullError(f"the queue of model '{self.name}' is full ({limit} requests waiting, "
                                 f"max_queue_size {limit}); retry later or raise max_queue_size "
                                 f"(model config) or --max-queue-size")
        loop = asyncio.get_running_loop()
        req = _Request(feeds, batch_size, batch_key(feeds), loop.create_future(), time.perf_counter_ns())
        timeout = self.timeout_for(timeout_us)
        if timeout > 0:
            req.timer = loop.call_later(timeout / 1e6, self._expire, req, timeout)
        self._queue.append(req)
        self.stats.pending = len(self._queue)
        self._changed.set()
        return await req.future

    def timeout_for(self, requested_us: Optional[int]) -> int:
        """The queue timeout of a request asking for ``requested_us`` (``None`` or 0: not set):
        the default unless the request sets one; with ``allow_timeout_override: false`` the
        default always; when the model's config sets the default, a request may only shorten it
        (Triton's rule). 0: no timeout."""
        default = self.default_timeout_us
        b = self.config.dynamic_batching
        if not requested_us or (b is not None and not b.allow_timeout_override):
            return default
        if self.config.default_timeout_us:
            return min(requested_us, self.config.default_timeout_us)
        return requested_us

    def _expire(self, req: _Request, timeout_us: int) -> None:
        if req.future.done() or req not in self._queue:
            return
        self._queue.remove(req)
        self.stats.pending = len(self._queue)
        waited = (time.perf_counter_ns() - req.arrived_ns) // 1000
        req.future.set_exception(RequestTimeoutError(
            f"request to model '{self.name}' timed out after {waited} us in the queue (timeout "
            f"{timeout_us} us); raise the request's timeout, the model's default_timeout_microseconds "
            f"or the server's --request-timeout, or add instances"))
        self._changed.set()

    # ---- batching -----------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            inst = await self._idle.get()
            batch = await self._next_batch()
            if batch is None:
                self._idle.put_nowait(inst)
                return
            task = asyncio.create_task(self._execute(inst, batch))
            self._state.tasks.add(task)
            task.add_done_callback(self._state.tasks.discard)

    async def _next_batch(self) -> Optional[list[_Request]]:
        while True:
            while self._queue and self._queue[0].future.done():   # cancelled by its client
                self._queue.popleft()
            if not self._queue:
                if not self._state.accepting:
                    return None
                await self._wait(None)
                continue
            head = self._queue[0]
            picked = self._gather(head)
            chosen = self._choose(picked, head)
            if chosen is not None:
                return self._take(chosen)
            await self._wait((head.arrived_ns + self._delay_ns - time.perf_counter_ns()) / 1e9)

    def _gather(self, head: _Request) -> list[_Request]:
        if self.config.dynamic_batching is None:
            return [head]
        picked, size = [], 0
        for r in self._queue:
            if r.key != head.key or r.future.done():
                continue
            if size + r.batch > self.signature.max_batch_size:
                break
            picked.append(r)
            size += r.batch
        return picked

    def _choose(self, picked: list[_Request], head: _Request) -> Optional[list[_Request]]:
        """The batch to run now, or ``None`` to wait for more requests."""
        if self.config.dynamic_batching is None:
            return picked
        sizes = np.cumsum([r.batch for r in picked])
        if sizes[-1] >= self.signature.max_batch_size:
            return picked
        best = [i for i, s in enumerate(sizes) if int(s) in self._preferred]
        if best:
            return picked[:best[-1] + 1]
        if self._state.flush or time.perf_counter_ns() >= head.arrived_ns + self._delay_ns:
            return picked
        return None

    async def _wait(self, timeout: Optional[float]) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _take(self, chosen: list[_Request]) -> list[_Request]:
        ids = {id(r) for r in chosen}
        self._queue = deque(r for r in self._queue if id(r) not in ids)
        self.stats.pending = len(self._queue)
        for r in chosen:
            if r.timer is not None:
                r.timer.cancel()
        return chosen

    async def _execute(self, inst: _Instance, batch: list[_Request]) -> None:
        start = time.perf_counter_ns()
        died = False
        try:
            try:
                outs, t = await self._run(inst, batch)
            except Exception as exc:  # noqa: BLE001 - find the request at fault, answer every one
                died = isinstance(exc, InstanceDiedError)
                if died and self._requeue(batch):
                    log.warning("%s; its batch of %d runs again on the next free instance", exc,
                                sum(r.batch for r in batch))
                elif died or (len(batch) > 1 and not isinstance(exc, UnavailableError)):
                    await self._isolate(inst, batch, start)  # died twice: each request alone
                else:
                    self._fail(batch, exc)
            else:
                self._answer(batch, outs, t, start)
        finally:
            if died:  # started again before it takes a batch (meanwhile the others serve)
                try:
                    await asyncio.get_running_loop().run_in_executor(inst.thread, inst.restart_if_dead)
                except Exception as exc:  # noqa: BLE001 - the next run tries again
                    log.error("%s: cannot start the instance process again: %s", inst.label, exc)
            self._idle.put_nowait(inst)

    def _requeue(self, batch: list[_Request]) -> bool:
        """Puts the requests of a batch whose instance process died back at the head of the
        queue, once each (a request that was in two such batches is run alone instead, see
        ``_isolate``: it may be what kills the process); ``False`` when it cannot."""
        if any(r.retried for r in batch) or self._loop_task is None or self._loop_task.done():
            return False
        for r in reversed(batch):
            r.retried = True
            self._queue.appendleft(r)
        self.stats.pending = len(self._queue)
        self._changed.set()
        return True

    async def _run(self, inst: _Instance, batch: list[_Request]) -> tuple[list[Feeds], BatchTimings]:
        loop = asyncio.get_running_loop()
        parts = [(r.feeds, r.batch) for r in batch]
        return await loop.run_in_executor(inst.thread, inst.run, parts, self.signature.max_batch_size > 0,
                                          self.signature.output_names())

    def _answer(self, batch: list[_Request], outs: list[Feeds], t: BatchTimings, start: int) -> None:
        self.stats.record_execution(sum(r.batch for r in batch), t.input_ns, t.infer_ns, t.output_ns)
        for r, out in zip(batch, outs):
            self.stats.record_compute(start - r.arrived_ns, t.input_ns, t.infer_ns, t.output_ns)
            if not r.future.done():
                r.future.set_result(out)

    async def _isolate(self, inst: _Instance, batch: list[_Request], start: int) -> None:
        """A batch failed: runs its requests one by one, so that only the request at fault hears
        of the failure and its batchmates get their outputs. A request that fails alone while a
        batchmate succeeds failed on its own input data: a client error (400). (A batch whose
        instance process died comes here too, even a batch of one: each request runs once more.)"""
        failed: list[tuple[_Request, Exception]] = []
        succeeded = False
        for r in batch:
            if r.future.done():  # its client went away meanwhile
                continue
            try:
                outs, t = await self._run(inst, [r])
            except Exception as exc:  # noqa: BLE001 - answered below
                failed.append((r, exc))
            else:
                succeeded = True
                self._answer([r], outs, t, start)
        if failed and not succeeded:  # nothing runs: not the data's fault, one error for all
            self._fail([r for r, _ in failed], failed[0][1])
            return
        for r, error in failed:
            self._fail([r], error, data_fault=True)

    def _fail(self, batch: list[_Request], exc: Exception, data_fault: bool = False) -> None:
        """Answers ``batch`` with the error ``exc`` stands for (``request_error``)."""
        err = request_error(exc, model=self.name, version=self.version, rows=sum(r.batch for r in batch),
                            feeds=batch[0].feeds, data_fault=data_fault, batchmates=True)
        for r in batch:
            if not r.future.done():
                r.future.set_exception(err)


def request_error(exc: BaseException, *, model: str, version: str, rows: int, feeds: Mapping[str, np.ndarray],
                  data_fault: bool = False, batchmates: bool = False) -> ServeError:
    """The error a request whose run failed with ``exc`` is answered with: ``exc`` itself when it
    is already a serving error; a client's error (400) when the engine failed on the request's
    own values (``data_fault``: it failed alone; an index out of range) or on its inputs
    (``InputError``); else an internal error, logged with an id. ``feeds``: the request's inputs
    (their names are the suspects); ``batchmates``: say that the rest of its batch was answered.
    ``ember serve``'s batcher and the Ray Serve replicas answer alike through this."""
    if isinstance(exc, ServeError) and not isinstance(exc, InstanceFailedError):
        return exc
    if data_fault or isinstance(exc, IndexRangeError) or _is_data_error(exc):
        mates = "its batchmates were answered; " if batchmates else ""
        return BadRequestError(f"model '{model}' failed on the values of {_suspects(feeds, exc)}: "
                               f"{_first_line(exc)}; {mates}fix the values of this request")
    if isinstance(exc, InputError):
        return BadRequestError(f"model '{model}': {exc}")
    return internal_error(f"model '{model}' version {version} ran a batch of {rows}", exc)


def _suspects(feeds: Mapping[str, np.ndarray], exc: BaseException) -> str:
    """The inputs a data error most likely comes from: integer inputs for index errors."""
    names = sorted(feeds)
    ints = [n for n in names if feeds[n].dtype.kind in "iu"]
    chosen = ints if ints and _is_data_error(exc) else names
    return ", ".join(f"input '{n}'" for n in chosen)


#: What an engine error says when an index input held a value out of range (a client error).
_DATA_ERRORS = ("index out of range", "out of bounds", "index out of bound", "indices out of range",
                "out of range for dimension", "index is out of bounds")


def _is_data_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(p in text for p in _DATA_ERRORS)


def _first_line(exc: BaseException) -> str:
    """The engine error's message without the instance label or a traceback, bounded."""
    lines = str(exc).splitlines()
    text = lines[0] if lines else type(exc).__name__
    if isinstance(exc, InstanceFailedError):  # "<instance label>: <type>: <message>"
        text = text.split(": ", 2)[-1]
    return text if len(text) <= 300 else text[:300] + "..."
