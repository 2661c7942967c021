"""Helpers shared by the op families: axes, broadcasting and dim arithmetic with symbols.

Symbolic dims
-------------
A dim is an ``int`` or a ``str``. A string is read as a *product* of factors joined by ``*`` at
the top level (``"batch*128"``, ``"batch*seq"``); a factor that parses as an int is a
coefficient, anything else (``"batch"``, ``"(h+1)//2"``) is an opaque symbol. Products are
written in a canonical form: symbols sorted, then the coefficient if it is not 1. This lets
Reshape/Flatten merge and split symbolic dims exactly: ``[batch, seq, 384] -> [-1, 384]`` gives
``"batch*seq"``, and ``["batch*seq", 384] -> [batch, -1, 384]`` gives ``seq`` back. When a
division does not come out exactly, a fresh symbol is made instead.

A *fresh* symbol, for a dim whose size only the run time knows (a Reshape whose shape input is
not constant, say), is named ``"<output tensor>_d<i>"``, the same convention the ONNX frontend
uses for unnamed dynamic input dims.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.types import Dim, TensorType, format_shape

Shape = tuple[Dim, ...]
#: What an infer function gets: the input types (None for an omitted optional input) and the
#: values of inputs known at build time (constants or shape values; None otherwise).
Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


# ---- axes ------------------------------------------------------------------------------
def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    """Maps a possibly negative axis into ``[0, rank)``; ShapeError when out of range."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for a tensor of rank {rank} "
                         f"(valid: {-rank}..{rank - 1})")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Iterable[int], rank: int, what: str = "axes") -> tuple[int, ...]:
    out = tuple(norm_axis(int(a), rank, what) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {tuple(axes)} repeat an axis")
    return out


def require(cond: bool, message: str) -> None:
    """Raises ShapeError(message) unless cond holds."""
    if not cond:
        raise ShapeError(message)


def need(t: Optional[TensorType], what: str) -> TensorType:
    """The type of a required input; ShapeError naming it when absent."""
    if t is None:
        raise ShapeError(f"required input {what} is missing")
    return t


def input_at(in_types: Types, i: int) -> Optional[TensorType]:
    """Input ``i``'s type, or None when it is omitted or past the end (optional inputs)."""
    return in_types[i] if i < len(in_types) else None


def need_input(in_types: Types, i: int, what: str) -> TensorType:
    """Required input ``i``'s type; ShapeError naming it (``what``) when it is absent."""
    return need(input_at(in_types, i), what)


def const_at(consts: Consts, i: int) -> Optional[np.ndarray]:
    """The build-time value of input ``i``, or None."""
    return consts[i] if i < len(consts) else None


def const_ints(value: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def const_dims(value: np.ndarray) -> tuple[Dim, ...]:
    """Entries of a build-time shape value: ints, or symbolic dims (str) where not known."""
    return tuple(v if isinstance(v, str) else int(v) for v in np.asarray(value).reshape(-1))


def const_floats(value: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(value).reshape(-1))


def same_dtype(types: Sequence[Optional[TensorType]], what: str = "inputs") -> DType:
    """The common dtype of the given (present) types; ShapeError if they differ."""
    present = [t for t in types if t is not None]
    dtypes = {t.dtype for t in present}
    if len(dtypes) > 1:
        listed = ", ".join(str(t) for t in present)
        raise ShapeError(f"{what} must have one dtype, got {listed}; insert a Cast")
    return present[0].dtype


def fresh_dims(output: str, rank: int) -> Shape:
    """Fresh symbols for an output whose dims only the run time knows."""
    return tuple(f"{output}_d{i}" for i in range(rank))


# ---- symbolic products -----------------------------------------------------------------
def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "*" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def factorize(dim: Dim) -> tuple[int, tuple[str, ...]]:
    """``"batch*128"`` -> (128, ("batch",)); ``6`` -> (6, ())."""
    if isinstance(dim, (int, np.integer)):
        return int(dim), ()
    coeff = 1
    syms: list[str] = []
    for part in _split_top(dim):
        part = part.strip()
        try:
            coeff *= int(part)
        except ValueError:
            syms.append(part)
    return coeff, tuple(sorted(syms))


def make_dim(coeff: int, syms: Iterable[str]) -> Dim:
    """Inverse of ``factorize``: the canonical dim for ``coeff * prod(syms)``."""
    syms = sorted(syms)
    if not syms or coeff == 0:
        return int(coeff)
    parts = list(syms) + ([str(coeff)] if coeff != 1 else [])
    return "*".join(parts)


def mul_dims(dims: Iterable[Dim]) -> Dim:
    """The product of dims, symbolic when any is."""
    coeff = 1
    syms: list[str] = []
    for d in dims:
        c, s = factorize(d)
        coeff *= c
        syms.extend(s)
    return make_dim(coeff, syms)


def div_dim(total: Dim, known: Dim) -> Optional[Dim]:
    """``total / known`` when it divides exactly (symbol by symbol), else None."""
    tc, ts = factorize(total)
    kc, ks = factorize(known)
    if kc == 0 or tc % kc:
        return None
    rest = list(ts)
    for s in ks:
        if s not in rest:
            return None
        rest.remove(s)
    return make_dim(tc // kc, rest)


def affine_dim(dim: Dim, num_add: int, den: int, ceil: bool = False) -> Dim:
    """``floor((dim + num_add) / den) + 1`` (or ceil), symbolic when dim is.

    The common output-size formula of convolution and pooling windows.
    """
    if isinstance(dim, int):
        n = dim + num_add
        q = -(-n // den) if ceil else n // den
        return q + 1
    if den == 1:
        if num_add == -1:
            return dim
        return _paren(dim, num_add + 1)
    op = "ceildiv" if ceil else "//"
    inner = f"({dim}{num_add:+d})" if num_add else f"({dim})"
    if op == "//":
        return f"({inner}//{den}+1)"
    return f"(ceil({inner}/{den})+1)"


def _paren(dim: str, add: int) -> Dim:
    return f"({dim}{add:+d})" if add else dim


def add_dims(a: Dim, b: Dim) -> Dim:
    """``a + b``; an opaque ``"(a+b)"`` symbol when either is symbolic."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    return f"({a}+{b})"


# ---- broadcasting ----------------------------------------------------------------------
def broadcast_dim(a: Dim, b: Dim) -> Dim:
    """numpy broadcasting of one dim pair.

    Two different symbols cannot be resolved before run time; the left one is kept (the run
    time checks the actual sizes). An int other than 1 wins over a symbol, since the symbol must
    then be 1 or that int.
    """
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ShapeError(f"dims {a} and {b} cannot be broadcast together")
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy-style multidirectional broadcasting of several shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dim: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j >= 0:
                try:
                    dim = broadcast_dim(dim, s[j])
                except ShapeError:
                    listed = " and ".join(format_shape(x) for x in shapes)
                    raise ShapeError(f"shapes {listed} cannot be broadcast together "
                                     f"(axis {i - rank})") from None
        out.append(dim)
    return tuple(out)


def static_numel(shape: Shape) -> Optional[int]:
    """The element count of a shape whose dims are all ints, else None."""
    ints = [d for d in shape if isinstance(d, int)]
    return math.prod(ints) if len(ints) == len(shape) else None
