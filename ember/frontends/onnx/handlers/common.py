"""Helpers shared by handler modules: rejections, ONNX attribute parsing, small IR patterns."""
from __future__ import annotations

import enum
from typing import Callable, Collection, Mapping, Optional, TypeVar, overload

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.ir.optype import OpType

HandlerFn = Callable[[ImportContext, OnnxNode], None]
E = TypeVar("E", bound=enum.Enum)


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


@overload
def ints(n: OnnxNode, name: str, default: tuple[int, ...]) -> tuple[int, ...]: ...
@overload
def ints(n: OnnxNode, name: str, default: None = None) -> Optional[tuple[int, ...]]: ...
def ints(n: OnnxNode, name: str, default: Optional[tuple[int, ...]] = None) -> Optional[tuple[int, ...]]:
    """An ints attribute as a tuple, or ``default`` when the node does not have it."""
    v = n.attr(name)
    return default if v is None else tuple(int(x) for x in v)


def choice(n: OnnxNode, name: str, default: E, supported: Optional[Collection[E]] = None,
           aliases: Optional[Mapping[str, E]] = None, ignore_case: bool = False) -> E:
    """The string attribute ``name`` as a member of ``default``'s enum: a file's string becomes
    an enum once, here.

    ``supported`` narrows the enum to what Ember can run (every member by default); ``aliases``
    maps other spellings (an opset's renamed modes) onto members. A value outside both is
    rejected with the attribute, its value and the allowed values; the importer adds the node.
    """
    kind = type(default)
    raw = n.attr(name)
    if raw is None:
        return default
    allowed = list(supported) if supported is not None else list(kind)
    spellings = {str(m.value): m for m in allowed} | dict(aliases or {})
    fold: Callable[[str], str] = str.lower if ignore_case else str
    found = {fold(k): m for k, m in spellings.items()}.get(fold(str(raw)))
    if found is not None:
        return found
    listed = ", ".join(repr(s) for s in spellings)
    if fold(str(raw)) in {fold(str(m.value)) for m in kind}:  # valid ONNX, not implemented
        raise reject(f"attribute {name}={raw!r} is not supported by Ember (supported: {listed})")
    raise reject(f"attribute {name}={raw!r} is not one of {listed}")


def scalar_input(ctx: ImportContext, n: OnnxNode, i: int, what: str) -> Optional[int]:
    """The int value of a constant scalar input ``i``; None when it is known only at run time."""
    values = ctx.const_ints(n.input(i))
    if values is None:
        return None
    if len(values) != 1:
        raise reject(f"its {what} input {n.input(i)!r} has {len(values)} values; it must be a scalar")
    return values[0]


def binary_chain(ctx: ImportContext, n: OnnxNode, op: OpType, out: str) -> int:
    """A variadic op (Sum, Max, ...) over the node's present inputs as a chain of binary ``op``
    nodes writing ``out`` (an Identity for one input); returns the number of inputs."""
    inputs = [i for i in n.inputs if i]
    if not inputs:
        raise reject("it has no inputs")
    if len(inputs) == 1:
        ctx.emit(n, OpType.IDENTITY, inputs, (out,))
        return 1
    acc = inputs[0]
    for k, other in enumerate(inputs[1:]):
        last = k == len(inputs) - 2
        dst = out if last else ctx.temp(n, f"partial{k}")
        ctx.emit(n, op, (acc, other), (dst,), suffix="" if last else f"part{k}")
        acc = dst
    return len(inputs)


def strip_trailing_empty(inputs: tuple[str, ...]) -> tuple[str, ...]:
    out = list(inputs)
    while out and not out[-1]:
        out.pop()
    return tuple(out)
