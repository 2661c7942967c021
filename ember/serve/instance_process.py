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

The child loads the engine from its file (``model.ember`` or the engine cache), captures every
batch bucket at start-up, and answers ``run`` messages one at a time. An error in a run comes back
as an error of that batch; a child that dies fails the batch it was running and is started again
for the next one.
"""
from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ember.errors import InputError
from ember.serve.errors import InferenceFailedError, ModelConfigError

log = logging.getLogger("ember.serve")

Feeds = dict[str, np.ndarray]
_ALIGN = 64
_START_TIMEOUT_S = 600.0  # loading and capturing a large engine's buckets takes a while


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class Region:
    """A shared-memory region: a file mapped by both processes."""

    def __init__(self, path: str, size: int, create: bool) -> None:
        """Maps ``path``; ``create``: it is a fresh empty file of ours, sized here to ``size``."""
        self.path, self.size = path, size
        fd = os.open(path, os.O_RDWR)
        try:
            if create:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def new(cls, size: int, label: str) -> "Region":
        fd, path = tempfile.mkstemp(prefix=f"ember-{label}-", dir=_shm_dir())  # mode 0600
        os.close(fd)
        return cls(path, max(size, _ALIGN), create=True)

    def array(self, dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
        return np.ndarray(shape, np.dtype(dtype), buffer=self.map, offset=offset)

    def pin(self) -> bool:
        """Registers the region with CUDA as page-locked memory, so copies to and from the GPU
        read it directly (no staging copy); ``False`` where the driver refuses."""
        import torch

        view = np.frombuffer(self.map, np.uint8)
        try:
            ok = int(torch.cuda.cudart().cudaHostRegister(view.ctypes.data, self.size, 1)) == 0
        except (AttributeError, RuntimeError):
            ok = False
        self._pinned = view if ok else None
        return ok

    def close(self, unlink: bool) -> None:
        pinned = getattr(self, "_pinned", None)
        if pinned is not None:
            import torch

            torch.cuda.cudart().cudaHostUnregister(pinned.ctypes.data)
            self._pinned = None
            del pinned
        try:
            self.map.close()
        except BufferError:  # a view of it is still alive somewhere: the OS frees it at exit
            pass
        if unlink:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def layout(arrays: list[tuple[str, str, tuple[int, ...]]]) -> tuple[list[tuple[str, str, tuple[int, ...], int]], int]:
    """Offsets of tensors packed one after another, each aligned; and the bytes needed."""
    out, pos = [], 0
    for name, dtype, shape in arrays:
        out.append((name, dtype, shape, pos))
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        pos += (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    return out, pos


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
        if warmup_specs is not None:
            for size in buckets:
                ctx.infer({n: np.zeros((size, *dims), dtype) for n, dtype, dims in warmup_specs})
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which refuses the model
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    regions: dict[str, Region] = {}

    pinned: set[str] = set()

    def region(path: str, size: int) -> Region:
        r = regions.get(path)
        if r is None:
            r = regions[path] = Region(path, size, create=False)
            if cuda and r.pin():
                pinned.add(path)
        return r

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg[0] == "close":
            break
        if msg[0] == "forget":  # the server replaced a region
            r = regions.pop(msg[1], None)
            pinned.discard(msg[1])
            if r is not None:
                r.close(unlink=False)
            continue
        _, (in_path, in_size), specs, (out_path, out_size) = msg
        try:
            src = region(in_path, in_size)
            feeds: dict[str, Any] = {name: src.array(dtype, shape, off) for name, dtype, shape, off in specs}
            if in_path in pinned:  # the engine copies them to the GPU straight from shared memory
                feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
            t0 = time.perf_counter_ns()
            result = ctx.infer(feeds)
            t1 = time.perf_counter_ns()
            del feeds
            arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in result.items()}
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
            conn.send(("error", type(exc).__name__, f"{exc}\n{traceback.format_exc(limit=4)}"))
    ctx.close()
    for r in regions.values():
        r.close(unlink=False)


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
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=label)
        self.proc: Optional[Any] = None
        self.conn: Any = None
        self.starts = 0
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

        if self.proc is None or not self.proc.is_alive():
            log.warning("%s: starting the instance process again", self.label)
            self._kill()
            self.open()
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
        for (n, dtype, shape, off) in specs:
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
        out_region = self._out or self._region("out", need)
        t1 = time.perf_counter_ns()
        try:
            self.conn.send(("run", (src.path, src.size), specs, (out_region.path, out_region.size)))
            msg = self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self._kill()
            raise InferenceFailedError(f"{self.label}: the instance process exited (status {code}) "
                                       f"while running a batch of {total}; it is started again for "
                                       f"the next batch") from exc
        t2 = time.perf_counter_ns()
        if msg[0] == "error":
            if msg[1] == "input":
                raise InputError(msg[2])
            raise InferenceFailedError(f"{self.label}: {msg[1]}: {msg[2]}")
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


def warmup_specs(signature: Any) -> Optional[list[tuple[str, str, tuple[int, ...]]]]:
    """(name, dtype, non-batch dims) of every input, or ``None`` when a dim is dynamic."""
    from ember.serve.datatypes import to_numpy

    if any(d < 0 for t in signature.inputs for d in t.dims):
        return None
    return [(t.name, np.dtype(to_numpy(t.datatype)).str, tuple(t.dims)) for t in signature.inputs]

