"""The op registry: for each ``OpType``, its attribute class and its shape/type inference.

Op families register themselves with ``@register_op(OpType.X, attrs=XAttrs)`` on their infer
function. An infer function gets the node, the input types (``None`` for an omitted optional
input) and the constant values of inputs that are constants (else ``None``), and returns the
output types. Symbolic dims (strings) must be propagated, not guessed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType

InferFn = Callable[[Node, Sequence[Optional[TensorType]], Sequence[Optional[np.ndarray]]], list[TensorType]]


@dataclass(frozen=True)
class OpSpec:
    op: OpType
    attrs: type | None
    infer: InferFn


_SPECS: dict[OpType, OpSpec] = {}


def register_op(op: OpType, attrs: type | None = None) -> Callable[[InferFn], InferFn]:
    def deco(fn: InferFn) -> InferFn:
        if op in _SPECS:
            raise RuntimeError(f"op {op} registered twice")
        _SPECS[op] = OpSpec(op, attrs, fn)
        return fn

    return deco


def get_spec(op: OpType) -> OpSpec:
    _load_families()
    try:
        return _SPECS[op]
    except KeyError:
        raise ShapeError(f"no shape inference registered for op {op}") from None


def registered_ops() -> list[OpType]:
    _load_families()
    return sorted(_SPECS, key=lambda o: o.value)


def infer_node(node: Node, in_types: Sequence[Optional[TensorType]],
               consts: Sequence[Optional[np.ndarray]]) -> list[TensorType]:
    spec = get_spec(node.op)
    try:
        out = spec.infer(node, in_types, consts)
    except ShapeError as e:
        raise ShapeError(f"node {node.name!r} ({node.op}): {e}") from None
    except (ValueError, IndexError, TypeError) as e:
        shapes = ", ".join(str(t) if t else "-" for t in in_types)
        raise ShapeError(f"node {node.name!r} ({node.op}) cannot infer output shapes from inputs "
                         f"({shapes}): {e}") from None
    return out


_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    # explicit list, never discovered by scanning
    from ember.ops import (  # noqa: F401
        activation,
        conv,
        elementwise,
        fused,
        index,
        linalg,
        movement,
        norm,
        plugin,
        pool,
        qlayers,
        quantize,
        recurrent,
        reduce,
        roi,
        shape,
        shape_gen,
        signal,
    )
