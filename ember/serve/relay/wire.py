"""The relay's wire format on the Unix socket between a front end and the hub.

Little-endian, both directions::

    frame  = header payload
    header = u32 payload length, u32 call id, u16 method (request) or status (reply)

A request's method is its index in ``METHODS``; ``HELLO`` announces a front end (payload: its
pid). A reply's status is 0 with the serialized response, or a gRPC status code number with the
error message in UTF-8.

Metadata: a model-control call (``CONTROL_METHODS``) is relayed as ``AUTHED``, its payload
``AUTH_HEAD`` (u16 method index, u16 length of the ``authorization`` metadata's UTF-8 bytes), those
bytes, then the serialized request, so that the server checks the model-control token.

Staged tensors: each front end owns a staging pool in shared memory (``--staging-mb``,
``ember.serve.shm``), announced once with ``POOL`` (payload: ``POOL_SIZE`` (u64 size), then the
pool's path). A ``ModelInfer`` call whose raw tensor bytes are large is relayed as
``STAGED_INFER``: the front end copies its ``raw_input_contents`` into the pool and sends
``BLOCK_COUNT`` (u16 count), count x ``BLOCK`` (u64 offset, u64 size), and the rest of the
message. The hub reads the tensors in place (no copy in the server process) and a CUDA instance
process copies them to the GPU straight from the pool; the front end frees the block when the
reply comes. Without room in the pool, a call is relayed whole.

>>> FrameReader().feed(encode(7, 0, b"hi"))
[(7, 0, b'hi')]
"""
from __future__ import annotations

import struct

from ember.serve.proto import service_methods

HEADER = struct.Struct("<IIH")
#: the relayed RPCs, by index (the order of ``service_methods()``: the .proto's)
METHODS: tuple[str, ...] = tuple(service_methods())
#: control frames' method numbers (above any index of ``METHODS``)
HELLO = 0xFFFF
POOL = 0xFFFE
STAGED_INFER = 0xFFFD
AUTHED = 0xFFFC
#: an ``AUTHED`` payload's head: the relayed method's index, the length of its authorization
AUTH_HEAD = struct.Struct("<HH")
#: the methods whose calls carry their ``authorization`` metadata to the server
CONTROL_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
#: a ``POOL`` payload's head (the pool's size; its path follows)
POOL_SIZE = struct.Struct("<Q")
#: a ``STAGED_INFER`` payload: the number of staged blocks, then each block's offset and size
BLOCK_COUNT = struct.Struct("<H")
BLOCK = struct.Struct("<QQ")
#: relay a ModelInfer call through the staging pool from this many raw tensor bytes on
STAGE_MIN_BYTES = 16 << 10
DEFAULT_STAGING_MB = 32


def encode(call: int, code: int, payload: bytes) -> bytes:
    """One frame: ``code`` is the method (request) or the status (reply)."""
    return HEADER.pack(len(payload), call, code) + payload


class FrameReader:
    """Splits a byte stream into ``(call, code, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        frames, pos, buf = [], 0, self._buf
        with memoryview(buf) as view:  # one copy per payload (a bytearray slice would be two)
            while len(buf) - pos >= HEADER.size:
                size, call, code = HEADER.unpack_from(buf, pos)
                end = pos + HEADER.size + size
                if len(buf) < end:
                    break
                frames.append((call, code, bytes(view[pos + HEADER.size:end])))
                pos = end
        if pos:
            del buf[:pos]
        return frames
