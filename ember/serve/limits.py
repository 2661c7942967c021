"""The server's limits on what one request may hold, with their defaults (``ember serve`` flags).

A request over a limit is refused with a short message before the server holds more of it than
the limit: the HTTP body is read only up to ``max_body_bytes`` (a larger ``Content-Length`` is
refused before reading), a compressed body is inflated only up to ``max_decompressed_bytes``,
gRPC refuses messages over ``grpc_max_message_bytes`` before decoding them. Slow clients are cut
off by timeouts: an HTTP request's head (``http_header_timeout_s``) and body
(``http_body_timeout_s``), an idle kept-alive HTTP connection (``http_keep_alive_s``), a gRPC
connection's HTTP/2 handshake, idleness and age (``grpc_*_s``, in ``grpc_server_options``, which
the server process and the gRPC front ends both use). A request waits in a model's queue at most
``request_timeout_s`` unless the request or the model's config says otherwise.

>>> Limits().max_body_bytes // 2**20
256
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ember.serve.errors import BadRequestError, PayloadTooLargeError

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """What one request or connection may hold; every field has a flag of ``ember serve`` (see the
    README)."""

    #: bytes of an HTTP request body as sent (``--http-max-body-mb``)
    max_body_bytes: int = 256 * MiB
    #: bytes of an HTTP body once gzip/deflate is undone, checked while inflating
    #: (``--max-decompressed-mb``)
    max_decompressed_bytes: int = 256 * MiB
    #: bytes of a gRPC message received or sent (``--grpc-max-message-mb``)
    grpc_max_message_bytes: int = 256 * MiB
    #: nesting depth of an HTTP request's JSON (``--max-json-depth``)
    max_json_depth: int = 64
    #: dims of one input tensor (``--max-input-dims``)
    max_input_dims: int = 16
    #: elements of one input tensor; zero dims count as 1, so ``[0, 2**62]`` is refused
    #: (``--max-input-elements``)
    max_input_elements: int = 2**31 - 1
    #: requests waiting in a model's queue when its config sets no ``max_queue_size``
    #: (``--max-queue-size``; 0: unbounded)
    max_queue_size: int = 4096
    #: open HTTP connections plus requests in progress; past it new requests answer 503
    #: (``--http-max-connections``, uvicorn's ``limit_concurrency``)
    http_max_connections: int = 2048
    #: seconds a connection may take to send a request's headers, from its opening or the end
    #: of its previous response; then it is closed (``--http-header-timeout``)
    http_header_timeout_s: float = 30.0
    #: seconds an idle kept-alive connection stays open (``--http-keep-alive-timeout``)
    http_keep_alive_s: float = 5.0
    #: seconds a request's body may take to arrive once its head has (``--http-body-timeout``);
    #: then it is answered 408 and the connection closed, so slow-drip bodies cannot hold it
    http_body_timeout_s: float = 60.0
    #: seconds a request may wait in a model's queue when neither the request (its ``timeout``
    #: parameter) nor the model's config (``default_timeout_microseconds``) says
    #: (``--request-timeout``; 0: no limit); then it is answered 503 / UNAVAILABLE
    request_timeout_s: float = 60.0
    #: seconds a gRPC connection may take to open its HTTP/2 session (``--grpc-handshake-timeout``)
    grpc_handshake_timeout_s: float = 30.0
    #: seconds an idle gRPC connection (no call in progress) stays open; clients reconnect on
    #: their own (``--grpc-idle-timeout``)
    grpc_idle_timeout_s: float = 300.0
    #: seconds a gRPC connection lives before the server asks the client to reconnect (calls in
    #: progress then get ``grpc_connection_grace_s`` more); this bounds how long a client that
    #: drips a message can hold a connection (``--grpc-max-connection-age``; 0: no limit)
    grpc_max_connection_age_s: float = 3600.0
    #: seconds calls in progress get once a connection is past its age (``--grpc-connection-grace``)
    grpc_connection_grace_s: float = 60.0
    #: gRPC calls in progress at once per process; past it new calls answer RESOURCE_EXHAUSTED
    #: (``--grpc-max-concurrent-rpcs``)
    grpc_max_concurrent_rpcs: int = 2048

    def check_shape(self, name: str, shape: Sequence[Any]) -> None:
        """Refuses a tensor shape with too many dims or elements (``BadRequestError``)."""
        if len(shape) > self.max_input_dims:
            raise BadRequestError(f"input '{name}' has {len(shape)} dims; the server takes at most "
                                  f"{self.max_input_dims} (--max-input-dims)")
        if math.prod(max(int(d), 1) for d in shape) > self.max_input_elements:
            raise PayloadTooLargeError(
                f"input '{name}' has shape {_short_shape(shape)}, over the server's limit of "
                f"{self.max_input_elements} elements per input (--max-input-elements; zero dims "
                f"count as 1)")


    @property
    def request_timeout_us(self) -> int:
        """``request_timeout_s`` in microseconds (0: no limit)."""
        return int(self.request_timeout_s * 1e6)

    def grpc_server_options(self) -> list[tuple[str, int]]:
        """The options of a ``grpc.aio`` server for these limits (the server process's and the
        front ends' alike): message sizes, handshake, idle and age timeouts."""
        size = min(self.grpc_max_message_bytes, 2**31 - 1)
        options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size),
                   ("grpc.server_handshake_timeout_ms", _ms(self.grpc_handshake_timeout_s)),
                   ("grpc.max_connection_idle_ms", _ms(self.grpc_idle_timeout_s))]
        if self.grpc_max_connection_age_s > 0:
            options += [("grpc.max_connection_age_ms", _ms(self.grpc_max_connection_age_s)),
                        ("grpc.max_connection_age_grace_ms", _ms(self.grpc_connection_grace_s))]
        return options


def _ms(seconds: float) -> int:
    return max(1, min(int(seconds * 1000), 2**31 - 1))


def _short_shape(shape: Sequence[Any]) -> str:
    text = str([int(d) for d in shape])
    return text if len(text) <= 120 else text[:120] + "...]"


_SCALARS = (int, float, str, bool, type(None))


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than ``limit`` (iterative: no recursion on hostile input).

    A list that starts with a scalar counts as a leaf: tensor data is a list of numbers, and
    walking each number would cost as much as parsing them. A container hidden later in such a
    list is refused where the list is read (NumPy finds the data ragged); nothing recurses on it.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (list, dict)))
        elif isinstance(item, list) and item and not isinstance(item[0], _SCALARS):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (list, dict)))
    return False


DEFAULT_LIMITS = Limits()
