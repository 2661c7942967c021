"""Kernels on uint16, uint32 and uint64 tensors.

PyTorch stores these types but implements few ops on them ("add_stub not implemented for
'UInt16'"). Every CPU kernel (and so every kernel the CUDA backend borrows, and every step of a
fused elementwise chain) is wrapped here: a kernel first runs on the tensors as they are; where
PyTorch has no implementation, it runs on int64 instead and its unsigned outputs are cast back.

- uint16 and uint32 widen to int64 exactly, and the results narrow back modulo 2^16 / 2^32,
  which is the unsigned types' own wrap-around (an overflowing Add or a BitwiseNot included).
- uint64 is reinterpreted as int64 (the same bits): Add, Sub, Mul, the bitwise ops, Equal and
  every op that moves data without reading values as numbers give the same bits. Ops that
  compare or divide (Div, Mod, Greater/Less, Max/Min, a right BitShift, a Cast from uint64) run
  in numpy's uint64 arithmetic. Other ops that read values run on int64 only while every input
  value is below 2^63 (where the two agree), and are refused otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ember.backends.base import CompileContext, Kernel
from ember.errors import UnsupportedOpError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType

WIDE_UNSIGNED = {torch.uint16: DType.UINT16, torch.uint32: DType.UINT32, torch.uint64: DType.UINT64}
_UNSIGNED_DTYPES = (DType.UINT16, DType.UINT32, DType.UINT64)
_NARROW = {DType.UINT16: torch.uint16, DType.UINT32: torch.uint32}


def _variadic(fn: Any) -> Callable[..., np.ndarray]:
    return lambda node, *xs: functools.reduce(fn, xs)


def _shift(node: Node, x: np.ndarray, n: np.ndarray) -> np.ndarray:
    right = str(getattr(node.attrs, "direction", "LEFT")).upper().endswith("RIGHT")
    n = n.astype(np.uint64)
    big = n >= np.uint64(64)
    safe = np.where(big, np.uint64(0), n)
    out = np.right_shift(x, safe) if right else np.left_shift(x, safe)
    return np.where(big, np.uint64(0), out)


def _cast(node: Node, x: np.ndarray) -> np.ndarray:
    to: DType = node.attrs.to
    if to is DType.BFLOAT16:
        return x.astype(np.float32)
    return x.astype(to.to_numpy())


#: uint64 ops whose results depend on reading the values as unsigned numbers: numpy's.
_UINT64_NUMPY: dict[OpType, Callable[..., np.ndarray]] = {
    OpType.DIV: lambda node, a, b: np.floor_divide(a, b),
    OpType.MOD: lambda node, a, b: np.mod(a, b),
    OpType.GREATER: lambda node, a, b: np.greater(a, b),
    OpType.LESS: lambda node, a, b: np.less(a, b),
    OpType.MAX: _variadic(np.maximum),
    OpType.MIN: _variadic(np.minimum),
    OpType.BIT_SHIFT: _shift,
    OpType.CAST: _cast,
}
for _name, _fn in (("GREATER_OR_EQUAL", np.greater_equal), ("LESS_OR_EQUAL", np.less_equal)):
    if hasattr(OpType, _name):
        _UINT64_NUMPY[getattr(OpType, _name)] = functools.partial(lambda fn, node, a, b: fn(a, b), _fn)

#: uint64 ops that give the same bits on the int64 reinterpretation, whatever the values.
_BIT_EXACT = {getattr(OpType, name) for name in (
    "ADD", "SUB", "MUL", "NEG", "BITWISE_AND", "BITWISE_OR", "BITWISE_XOR", "BITWISE_NOT", "EQUAL",
    "RESHAPE", "TRANSPOSE", "CONCAT", "SLICE", "GATHER", "GATHER_ELEMENTS", "GATHER_ND", "SCATTER_ND",
    "SCATTER_ELEMENTS", "SQUEEZE", "UNSQUEEZE", "EXPAND", "IDENTITY", "FLATTEN", "SPLIT", "TILE", "WHERE",
    "REDUCE_SUM", "REDUCE_PROD", "CUM_SUM", "SHAPE", "SIZE", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "COMPRESS", "REVERSE_SEQUENCE", "NON_ZERO",
) if hasattr(OpType, name)}

#: Ops that read the bits of their input as they are (never widened).
_AS_IS = {getattr(OpType, name) for name in ("BIT_CAST", "SHAPE", "SIZE") if hasattr(OpType, name)}


def _declared_dtypes(node: Node, inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[DType]]:
    """The output dtypes the op's rules give for these inputs (None where unknown)."""
    from ember.backends.tensors import from_torch_dtype
    from ember.ops.registry import infer_node

    types = [None if t is None else TensorType(from_torch_dtype(t.dtype), tuple(t.shape)) for t in inputs]
    try:
        outs = infer_node(node, types, [None] * len(inputs))
    except Exception:  # noqa: BLE001 - the op's own checks ran at build time; fall back below
        return [None] * len(node.outputs)
    return [t.dtype for t in outs]


def _widen(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None or t.dtype not in WIDE_UNSIGNED:
        return t
    return t.view(torch.int64) if t.dtype is torch.uint64 else t.to(torch.int64)


def _narrow(t: Optional[torch.Tensor], dtype: Optional[DType]) -> Optional[torch.Tensor]:
    if t is None or t.dtype is not torch.int64 or dtype not in _UNSIGNED_DTYPES:
        return t
    return t.view(torch.uint64) if dtype is DType.UINT64 else t.to(_NARROW[dtype])


def _numpy_uint64(node: Node, inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
    device = next(t.device for t in inputs if t is not None)
    arrays = [None if t is None else t.detach().cpu().numpy() for t in inputs]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(_UINT64_NUMPY[node.op](node, *[a for a in arrays if a is not None]))
    return [torch.from_numpy(np.ascontiguousarray(out)).to(device)]


def unsigned_kernel(node: Node, inner: Kernel) -> Kernel:
    """``inner`` made to run on uint16/uint32/uint64 inputs (see the module's docstring)."""

    def widened(inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        has64 = any(t is not None and t.dtype is torch.uint64 for t in inputs)
        if has64 and node.op not in _BIT_EXACT:
            if any(t is not None and t.dtype is torch.uint64 and t.numel()
                   and bool((t.view(torch.int64) < 0).any()) for t in inputs):
                raise UnsupportedOpError(
                    f"node {node.name!r} ({node.op}) reads uint64 values of 2^63 or more, which "
                    f"Ember computes only for Add, Sub, Mul, Div, Mod, comparisons, Max, Min, "
                    f"BitShift, the bitwise ops, Cast and data movement")
        declared = _declared_dtypes(node, inputs)
        outs = inner([_widen(t) for t in inputs])
        return [_narrow(t, d) for t, d in zip(outs, list(declared) + [None] * len(outs))]

    def run(inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        if not any(t is not None and t.dtype in WIDE_UNSIGNED for t in inputs) or node.op in _AS_IS:
            return inner(inputs)
        if node.op in _UINT64_NUMPY and any(t is not None and t.dtype is torch.uint64 for t in inputs):
            return _numpy_uint64(node, inputs)
        try:
            return inner(inputs)
        except (RuntimeError, TypeError):  # PyTorch has no kernel of this op for this type
            return widened(inputs)

    return run


def may_see_unsigned(node: Node, ctx: CompileContext) -> bool:
    """Whether ``node`` may get uint16/uint32/uint64 inputs (unknown types count as maybe)."""
    types = ctx.graph.types if ctx.graph is not None else {}
    for name in node.inputs:
        if not name:
            continue
        t = types.get(name)
        if t is None or t.dtype in _UNSIGNED_DTYPES:
            return True
    return False
