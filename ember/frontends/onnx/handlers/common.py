"""Helpers shared by handler modules."""
from __future__ import annotations

from typing import Callable, Optional

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.ir.optype import OpType

HandlerFn = Callable[[ImportContext, OnnxNode], None]


def reject(reason: str) -> UnsupportedOpError:
    """An UnsupportedOpError for one node's form; the importer adds op, node and opset."""
    return UnsupportedOpError(reason)


def reject_used_outputs(ctx: ImportContext, n: OnnxNode, start: int, what: str) -> None:
    """Rejects the node when any output from index ``start`` on is consumed."""
    used = [o for o in n.outputs[start:] if ctx.is_used(o)]
    if used:
        raise reject(f"its {what} output {used[0]!r} is used; Ember supports only the "
                     f"inference-mode first output. Remove that output from the model")


def direct(op: OpType, nin: Optional[int] = None) -> HandlerFn:
    """A handler for an op that maps 1:1 onto an IR op without attributes."""

    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        inputs = n.inputs if nin is None else n.inputs[:nin]
        ctx.emit(n, op, inputs, n.outputs[:1])

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


def ints(n: OnnxNode, name: str, default: Optional[tuple[int, ...]] = None) -> Optional[tuple[int, ...]]:
    v = n.attr(name)
    return default if v is None else tuple(int(x) for x in v)


def strip_trailing_empty(inputs: tuple[str, ...]) -> tuple[str, ...]:
    out = list(inputs)
    while out and not out[-1]:
        out.pop()
    return tuple(out)
