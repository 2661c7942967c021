"""A model instance in a process of its own (``instance_kind: process``).

Why: an instance thread in the server process gives up the interpreter lock around every PyTorch
call of a run and must win it back from the event loop each time; under load that turned a
MiniLM batch's ~1 ms of GPU work into 3-5 ms. A process has its own interpreter: the server
process only copies the batch's inputs into shared memory, sends a few bytes down a pipe, and
waits (without the lock) for the answer.

Data path: the inputs of a batch are concatenated straight into an input region (an ``mmap`` of
a file in ``/dev/shm``, or the temp folder where there is none), the child reads them there in
place and writes the outputs into an output region, which the server splits into per-request
copies. A region too small for a batch is replaced by a larger one (the message names the region
to use); an output that does not fit the output region comes back through the pipe once, and the
region grows for the next batch.

Staged inputs: a request that came through a gRPC front end may hold its tensors in that front
end's staging pool (``ember.serve.shm``). Then the server copies nothing: the message names each
request's rows by ``(pool, offset)`` and the child gathers them itself, for a CUDA engine with
one copy per request from the (page-locked) pool straight into the engine's input buffer on the
GPU.

The child loads the engine from its file (``model.ember`` or the engine cache), captures every
batch bucket at start-up, and answers ``run`` messages one at a time. An error in a run comes back
as an error of that batch; a child that dies fails the batch it was running and is started again
for the next one.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import numpy as np

from ember.backends.tensors import torch_to_numpy
from ember.errors import InputError
from ember.serve.errors import InstanceDiedError, InstanceFailedError, ModelConfigError
from ember.serve.shm import REGIONS, Region, layout

if TYPE_CHECKING:
    from ember.backends.cuda.exec.executor import CudaExecutor

log = logging.getLogger("ember.serve")

Feeds = dict[str, np.ndarray]
_START_TIMEOUT_S = 600.0  # loading and capturing a large engine's buckets takes a while
_MAX_POOLS = 16  # front-end staging pools a child keeps mapped


# ---- the child ------------------------------------------------------------------------------
def _child_main(conn: Any, engine_file: str, buckets: tuple[int, ...],
                warmup_specs: Optional[list[tuple[str, str, tuple[int, ...]]]]) -> None:
    try:
        import torch

        import ember

        engine = ember.load(engine_file)
        cuda = engine.plan.config.device == "cuda"
        if cuda:
            # this process only copies and launches: a full intra-op thread pool would spin on
            # every core after each copy (seen: 14 busy cores for ResNet-50 at batch 1)
            torch.set_num_threads(min(4, torch.get_num_threads()))
        ctx = engine.create_context()
        # a CUDA engine's executor (``ExecutionContext.executor``) owns the static device input
        # buffers that staged rows are gathered into; a CPU engine takes host arrays as they are
        executor = cast("CudaExecutor", ctx.executor) if cuda else None
        if warmup_specs is not None:
            for size in buckets:
                ctx.infer({n: np.zeros((size, *dims), dtype) for n, dtype, dims in warmup_specs})
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which refuses the model
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    region = _Mapped(pin=cuda)  # the server's input and output regions
    pool = _Mapped(pin=cuda, limit=_MAX_POOLS)  # the front ends' staging pools

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg[0] == "close":
            break
        if msg[0] == "forget":  # the server replaced a region
            region.forget(msg[1])
            continue
        _, (in_path, in_size), specs, (out_path, out_size) = msg
        try:
            src = region(in_path, in_size)
            arrays_in = {name: src.array(dtype, shape, off) for name, dtype, shape, off, _ in specs}
            staged = any(pieces for *_, pieces in specs)
            feeds: dict[str, Any]
            if staged and executor is not None:
                # every input straight into the engine's own input buffer on the GPU
                feeds = {}
                for name, dtype, _shape, _, pieces in specs:
                    buf = executor.input_buffer(arrays_in, name)
                    if pieces:
                        _gather_gpu(buf, pieces, np.dtype(dtype), pool)
                    else:
                        buf.copy_(torch.from_numpy(arrays_in[name]), non_blocking=src.pinned)
                    feeds[name] = buf
            else:
                for name, _dtype, _shape, _, pieces in specs:
                    if pieces:
                        _gather_host(arrays_in[name], pieces, pool)
                feeds = arrays_in
                if src.pinned:  # the engine copies them to the GPU straight from shared memory
                    feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
            t0 = time.perf_counter_ns()
            result = ctx.infer(feeds)
            t1 = time.perf_counter_ns()
            del feeds, arrays_in
            arrays = {k: (torch_to_numpy(v) if isinstance(v, torch.Tensor) else np.ascontiguousarray(v))
                      for k, v in result.items()}
            del result
            placed, need = layout([(k, a.dtype.str, a.shape) for k, a in arrays.items()])
            if need <= out_size:
                dst = region(out_path, out_size)
                for name, dtype, shape, off in placed:
                    dst.array(dtype, shape, off)[...] = arrays[name]
                conn.send(("ok", placed, None, need, t1 - t0))
            else:
                conn.send(("ok", None, arrays, need, t1 - t0))
        except InputError as exc:
            conn.send(("error", "input", str(exc)))
        except Exception as exc:  # noqa: BLE001 - the batch fails, the instance goes on
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc(limit=4)))
    ctx.close()
    region.close()
    pool.close()


class _Mapped:
    """The regions a child has mapped, by path (page-locked for a CUDA engine); with ``limit``,
    at most that many, the least recently used closed first (a pool of a front end that is gone,
    most likely)."""

    def __init__(self, pin: bool, limit: Optional[int] = None) -> None:
        self.pin, self.limit = pin, limit
        self.maps: OrderedDict[str, Region] = OrderedDict()

    def __call__(self, path: str, size: int) -> Region:
        r = self.maps.get(path)
        if r is not None and r.size == size:
            self.maps.move_to_end(path)
            return r
        if r is not None:
            r.close(unlink=False)
        r = self.maps[path] = Region(path, size, create=False)
        if self.pin:
            r.pin()
        while self.limit and len(self.maps) > self.limit:
            self.maps.popitem(last=False)[1].close(unlink=False)
        return r

    def forget(self, path: str) -> None:
        r = self.maps.pop(path, None)
        if r is not None:
            r.close(unlink=False)

    def close(self) -> None:
        for r in self.maps.values():
            r.close(unlink=False)
        self.maps.clear()


Pieces = list[tuple[str, int, int, int]]  # (pool path, pool size, offset, rows), in batch order


def _gather_gpu(buf: Any, pieces: Pieces, dtype: np.dtype, pool: Any) -> None:
    """Copies each request's rows from its staging pool into ``buf`` (a GPU tensor of the
    padded batch), then repeats the last row into the padding."""
    import torch

    start, row_shape = 0, tuple(buf.shape[1:])
    for path, size, off, rows in pieces:
        r = pool(path, size)
        host = torch.from_numpy(r.array(dtype.str, (rows, *row_shape), off))
        buf[start:start + rows].copy_(host, non_blocking=r.pinned)
        start += rows
    if start < buf.shape[0]:
        buf[start:].copy_(buf[start - 1:start].expand_as(buf[start:]))


def _gather_host(dst: np.ndarray, pieces: Pieces, pool: Any) -> None:
    start = 0
    for path, size, off, rows in pieces:
        dst[start:start + rows] = pool(path, size).array(dst.dtype.str, (rows, *dst.shape[1:]), off)
        start += rows
    if start < dst.shape[0]:
        dst[start:] = dst[start - 1:start]


# ---- the server's side ----------------------------------------------------------------------
class ProcessInstance:
    """One execution context in a child process; the interface of ``batcher._Instance``."""

    def __init__(self, engine_file: Path, label: str, buckets: tuple[int, ...] = (),
                 warmup_specs: Optional[list[tuple[str, str, tuple[int, ...]]]] = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.engine_file = str(engine_file)
        self.label = label
        self.buckets = buckets
        self.warmup_specs = warmup_specs
        self.thread = ThreadPoolExecutor(1, thread_name_prefix=label)  # the instance's one thread
        self.proc: Optional[Any] = None
        self.conn: Any = None
        self.starts = 0
        self.staged_batches = 0  # batches the child gathered from front ends' staging pools
        self._in: Optional[Region] = None
        self._out: Optional[Region] = None

    # life cycle (on the instance's thread)
    def open(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, name=self.label, daemon=True,
                                args=(child, self.engine_file, self.buckets, self.warmup_specs))
        self.proc.start()
        child.close()
        self.conn = parent
        self.starts += 1
        if not parent.poll(_START_TIMEOUT_S):
            self._kill()
            raise ModelConfigError(f"{self.label}: the instance process did not start within "
                                   f"{_START_TIMEOUT_S:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            code = self._kill()
            raise ModelConfigError(f"{self.label}: the instance process exited while starting "
                                   f"(status {code})") from None
        if msg[0] != "ready":
            self._kill()
            raise ModelConfigError(f"{self.label}: the instance process could not load "
                                   f"{self.engine_file}: {msg[1]}")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(("close",))
            except (OSError, ValueError):
                pass
        if self.proc is not None:
            self.proc.join(10)
        self._kill()
        for r in (self._in, self._out):
            if r is not None:
                r.close(unlink=True)
        self._in = self._out = None

    def _kill(self) -> Optional[int]:
        code = None
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            code = self.proc.exitcode
            self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code

    def restart_if_dead(self) -> None:
        """Starts the process again if it died (on the instance's thread)."""
        if self.proc is None or not self.proc.is_alive():
            log.warning("%s: starting the instance process again", self.label)
            self._kill()
            self.open()

    def padded_size(self, total: int) -> int:
        from ember.serve.batcher import padded_size

        return padded_size(self.buckets, total)

    def _region(self, which: str, need: int) -> Region:
        current = self._in if which == "in" else self._out
        if current is not None and current.size >= need:
            return current
        fresh = Region.new(max(need, (current.size * 2) if current else 0), f"{which}")
        if current is not None:
            if self.conn is not None:
                self.conn.send(("forget", current.path))
            current.close(unlink=True)
        if which == "in":
            self._in = fresh
        else:
            self._out = fresh
        return fresh

    def run(self, parts: list[tuple[Feeds, int]], batched: bool,
            outputs: list[str]) -> tuple[list[Feeds], Any]:
        from ember.serve.batcher import BatchTimings, check_batch_dim

        self.restart_if_dead()
        t0 = time.perf_counter_ns()
        total = sum(b for _, b in parts)
        rows = self.padded_size(total) if batched else total
        names = list(parts[0][0])
        shapes = []
        for n in names:
            first = parts[0][0][n]
            lead = rows if batched else first.shape[0] if first.ndim else None
            shapes.append((n, first.dtype.str, first.shape if lead is None or not batched
                           else (rows, *first.shape[1:])))
        specs, need = layout(shapes)
        src = self._region("in", need)
        staged = _staged_pieces(parts, names) if batched else {}
        for (n, dtype, shape, off) in specs:
            if n in staged:
                continue  # the child gathers it from the front ends' pools
            view = src.array(dtype, shape, off)
            if not batched or (len(parts) == 1 and rows == total):
                view[...] = parts[0][0][n]
            else:
                start = 0
                for feeds, b in parts:
                    view[start:start + b] = feeds[n]
                    start += b
                if rows > total:
                    view[total:] = view[total - 1:total]
            del view
        sent_specs = [(n, dtype, shape, off, staged.get(n)) for n, dtype, shape, off in specs]
        self.staged_batches += bool(staged)
        out_region = self._out or self._region("out", need)
        t1 = time.perf_counter_ns()
        try:
            self.conn.send(("run", (src.path, src.size), sent_specs, (out_region.path, out_region.size)))
            msg = self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self._kill()
            raise InstanceDiedError(f"{self.label}: the instance process exited (status {code}) "
                                    f"while running a batch of {total}; it is started again") from exc
        t2 = time.perf_counter_ns()
        if msg[0] == "error":
            if msg[1] == "input":
                raise InputError(msg[2])
            err = InstanceFailedError(f"{self.label}: {msg[1]}: {msg[2]}")
            err.remote_traceback = msg[3] if len(msg) > 3 else ""  # type: ignore[attr-defined]
            raise err
        _, placed, arrays, out_need, _ = msg
        if arrays is None:
            result = {name: out_region.array(dtype, shape, off) for name, dtype, shape, off in placed}
        else:
            result = arrays
            self._region("out", out_need)  # big enough next time
        split: list[Feeds] = [{} for _ in parts]
        for name in outputs:
            arr = result[name]
            if batched:
                check_batch_dim(name, arr, rows)
            start = 0
            for i, (_, b) in enumerate(parts):
                split[i][name] = (arr[start:start + b] if batched else arr).copy()
                start += b
        del result
        t3 = time.perf_counter_ns()
        return split, BatchTimings(t1 - t0, t2 - t1, t3 - t2)


def _staged_pieces(parts: list[tuple[Feeds, int]], names: list[str]) -> dict[str, Pieces]:
    """For each input whose every request's rows lie in a front end's staging pool: where."""
    out = {}
    for n in names:
        pieces = []
        for feeds, b in parts:
            arr = feeds[n]
            where = REGIONS.locate(arr) if arr.ndim and arr.shape[0] == b else None
            if where is None:
                break
            pieces.append((*where, b))
        else:
            out[n] = pieces
    return out


def warmup_specs(signature: Any) -> Optional[list[tuple[str, str, tuple[int, ...]]]]:
    """(name, dtype, non-batch dims) of every input, or ``None`` when a dim is dynamic."""
    from ember.serve.datatypes import to_numpy

    if any(d < 0 for t in signature.inputs for d in t.dims):
        return None
    return [(t.name, np.dtype(to_numpy(t.datatype)).str, tuple(t.dims)) for t in signature.inputs]

