"""Shared memory between the processes of ``ember serve``.

- ``Region``: a file in ``/dev/shm`` (or the temp folder where there is none) mapped by several
  processes; its pages are reserved when it is created, so a full ``/dev/shm`` is an error at
  creation, never a ``SIGBUS`` while writing a tensor.
- ``StagingPool``: a region with a first-fit allocator. A gRPC front end copies the large input
  tensors of a request into its pool and relays only the small rest of the message; the server
  process reads the tensors in place and a CUDA instance process copies them to the GPU straight
  from the pool (see ``ember.serve.relay.frontend`` and ``ember.serve.instance_process``).
- ``REGIONS``: the server process's index of the foreign regions it has mapped, so an array can
  be traced back to ``(region, offset)`` and handed to another process by reference.
- ``split_raw_inputs``: the raw tensor bytes of a serialized ``ModelInferRequest`` found by
  walking its top-level protobuf fields, without parsing (copying) the message.
- ``Owner``: the files a server (and its child processes) leaves in ``/dev/shm`` and the temp
  folder carry its owner token (``ember-o<token>-...``); the server holds an ``flock`` on
  ``ember-o<token>.lock`` while it runs. A server killed with ``kill -9`` leaves its files and the
  lock file behind; the next server to start takes the free lock and removes them
  (``remove_stale``). A lock still held means its server is alive, whatever PID namespace it runs in.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from typing import Optional

import numpy as np

ALIGN = 64
#: the environment variable that hands a server's owner token to its child processes
OWNER_ENV = "EMBER_SERVE_OWNER"
_OWNED = re.compile(r"^ember-(?:serve-)?o([0-9a-f]{8,32})[-.]")


def owner_token() -> str:
    """The token this process's shared files carry: its server's (``OWNER_ENV``), else none."""
    token = os.environ.get(OWNER_ENV, "")
    return token if re.fullmatch(r"[0-9a-f]{8,32}", token) else ""


def owned_prefix(kind: str = "") -> str:
    """``ember-[kind-]o<token>-`` (``ember-[kind-]`` outside a server)."""
    token = owner_token()
    return f"ember-{kind + '-' if kind else ''}{'o' + token + '-' if token else ''}"


class Owner:
    """A running server's claim on its leftovers: an ``flock`` held on its lock file, released by
    the kernel however the process ends. ``release`` removes the lock file (a clean exit)."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(6)
        self.lock_path = os.path.join(shm_dir(), f"ember-o{self.token}.lock")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


def remove_stale() -> list[str]:
    """Removes the shared-memory regions and temp folders of servers that died without cleaning
    up (their lock file is there and no process holds it); returns what it removed."""
    folders = {os.path.realpath(shm_dir()), os.path.realpath(tempfile.gettempdir())}
    found: dict[str, list[str]] = {}
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = _OWNED.match(name)
            if m:
                found.setdefault(m.group(1), []).append(os.path.join(folder, name))
    removed = []
    for token, paths in found.items():
        lock = os.path.join(shm_dir(), f"ember-o{token}.lock")
        if not _dead(lock):
            continue
        for path in sorted(paths, key=lambda p: p == lock):  # the lock file last
            try:
                st = os.lstat(path)
                if st.st_uid != os.getuid():
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                    os.unlink(path)
                else:
                    continue
            except OSError:
                continue
            removed.append(path)
    return removed


def _dead(lock: str) -> bool:
    """Whether ``lock`` exists and no process holds it (its server is gone)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file: a server we cannot judge (or one that exited cleanly)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock we took, if any
    return True


def shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """A shared-memory region: a file mapped by every process that uses it."""

    def __init__(self, path: str, size: int, create: bool) -> None:
        """Maps ``path``; ``create``: it is a fresh empty file of ours, sized (and its pages
        reserved) here to ``size``."""
        self.path, self.size = path, size
        fd = os.open(path, os.O_RDWR)
        try:
            if create:
                os.ftruncate(fd, size)
                if hasattr(os, "posix_fallocate"):
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as exc:
                        raise OSError(exc.errno, f"cannot reserve {size >> 20} MiB of shared memory in "
                                                 f"{os.path.dirname(path)} ({exc.strerror}); free some or "
                                                 f"make it larger") from None
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.base = np.frombuffer(self.map, np.uint8, count=1).ctypes.data
        self._pinned: Optional[np.ndarray] = None

    @classmethod
    def new(cls, size: int, label: str) -> Region:
        fd, path = tempfile.mkstemp(prefix=f"{owned_prefix()}{label}-", dir=shm_dir())  # mode 0600
        os.close(fd)
        try:
            return cls(path, max(size, ALIGN), create=True)
        except BaseException:
            os.unlink(path)
            raise

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

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    def close(self, unlink: bool) -> None:
        if self._pinned is not None:
            import torch

            torch.cuda.cudart().cudaHostUnregister(self._pinned.ctypes.data)
            self._pinned = None
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
        pos += aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return out, pos


class StagingPool:
    """A region carved into blocks by a first-fit allocator (one process allocates and frees)."""

    def __init__(self, size: int, label: str = "staging") -> None:
        self.region = Region.new(aligned(size), label)
        self._free: list[list[int]] = [[0, self.region.size]]  # [offset, size], sorted by offset
        self.in_use = 0

    @property
    def path(self) -> str:
        return self.region.path

    @property
    def size(self) -> int:
        return self.region.size

    def alloc(self, nbytes: int) -> Optional[int]:
        """The offset of a free block of ``nbytes`` (aligned), or ``None`` when none is left."""
        need = aligned(max(nbytes, 1))
        for i, (off, size) in enumerate(self._free):
            if size >= need:
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = [off + need, size - need]
                self.in_use += need
                return off
        return None

    def free(self, offset: int, nbytes: int) -> None:
        size = aligned(max(nbytes, 1))
        self.in_use -= size
        free = self._free
        i = 0
        while i < len(free) and free[i][0] < offset:
            i += 1
        if i and free[i - 1][0] + free[i - 1][1] > offset or i < len(free) and offset + size > free[i][0]:
            raise ValueError(f"staging block at {offset} (+{size}) is already free")
        free.insert(i, [offset, size])
        if i + 1 < len(free) and offset + size == free[i + 1][0]:  # merge with the next block
            free[i][1] += free.pop(i + 1)[1]
        if i and free[i - 1][0] + free[i - 1][1] == offset:  # and with the previous one
            free[i - 1][1] += free.pop(i)[1]

    def close(self) -> None:
        self.region.close(unlink=True)


class RegionIndex:
    """The foreign regions a process has mapped, by path; ``locate`` finds an array's region."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, Region] = {}

    def open(self, path: str, size: int) -> Region:
        """Maps the region at ``path`` (once) and indexes it. Only files of ``ember serve`` in
        the shared-memory folder are accepted."""
        real = os.path.realpath(path)
        if (os.path.dirname(real) != os.path.realpath(shm_dir())
                or not os.path.basename(real).startswith("ember-")):
            raise ValueError(f"refusing to map {path!r}: not an ember serve shared-memory region")
        with self._lock:
            r = self._regions.get(path)
            if r is None or r.size != size:
                r = self._regions[path] = Region(path, size, create=False)
            return r

    def close(self, path: str, unlink: bool = False) -> None:
        with self._lock:
            r = self._regions.pop(path, None)
        if r is not None:
            r.close(unlink=unlink)

    def locate(self, arr: np.ndarray) -> Optional[tuple[str, int, int]]:
        """``(path, region size, offset)`` of a C-contiguous array that lies in an indexed
        region, else ``None``."""
        if not arr.flags.c_contiguous or arr.nbytes == 0:
            return None
        ptr = arr.ctypes.data
        with self._lock:
            for r in self._regions.values():
                if r.base <= ptr and ptr + arr.nbytes <= r.base + r.size:
                    return r.path, r.size, ptr - r.base
        return None


#: the server process's index of the front ends' staging pools
REGIONS = RegionIndex()

# ---- the protobuf wire format, just enough to find raw_input_contents --------------------------
_RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def split_raw_inputs(message: bytes) -> Optional[tuple[bytes, list[memoryview]]]:
    """``(the message without its raw_input_contents, views of each raw_input_contents)`` of a
    serialized ``ModelInferRequest``, walking only its top-level fields; ``None`` when it is not
    well-formed enough to split (the caller then passes it on whole, to be refused by the parser)."""
    view = memoryview(message)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    pos, n = 0, len(view)
    try:
        while pos < n:
            start = pos
            tag, pos = _varint(view, pos)
            field, wire = tag >> 3, tag & 7
            if wire == 2:
                size, pos = _varint(view, pos)
                end = pos + size
                if end > n:
                    return None
                if field == _RAW_INPUT_CONTENTS:
                    raw.append(view[pos:end])
                else:
                    kept.append(view[start:end])
                pos = end
                continue
            if wire == 0:
                _, pos = _varint(view, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return None
            if pos > n:
                return None
            kept.append(view[start:pos])
    except ValueError:
        return None
    return b"".join(kept), raw
