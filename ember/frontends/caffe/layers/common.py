"""Parameter spellings Caffe accepts several ways: window sizes (``kernel_size`` repeated, or
``kernel_h``/``kernel_w``), axes (negative, or the deprecated ``*_dim`` aliases)."""
from __future__ import annotations

from typing import Any, Sequence

from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.ir.types import Dim


def window_values(p: Any, name: str, n: int, default: int | None, layer: CaffeLayer) -> tuple[int, ...]:
    """``pad``/``kernel_size``/``stride``/``dilation`` of a ConvolutionParameter for ``n`` spatial
    axes: ``<name>_h``/``<name>_w`` (2-D only), else the repeated field (one value for every axis,
    or one per axis), else ``default``."""
    short = {"kernel_size": "kernel", "pad": "pad", "stride": "stride", "dilation": ""}[name]
    has_hw = bool(short) and (p.HasField(f"{short}_h") or p.HasField(f"{short}_w"))
    values = list(getattr(p, name))
    if has_hw:
        if n != 2:
            raise reject(f"{short}_h/{short}_w are for 2-D inputs; this one has {n} spatial axes")
        if values:
            raise reject(f"give either {name} or {short}_h/{short}_w, not both")
        if short in ("kernel", "stride") and not (p.HasField(f"{short}_h") and p.HasField(f"{short}_w")):
            raise reject(f"give both {short}_h and {short}_w")
        fallback = default if default is not None else 0
        h = getattr(p, f"{short}_h") if p.HasField(f"{short}_h") else fallback
        w = getattr(p, f"{short}_w") if p.HasField(f"{short}_w") else fallback
        return int(h), int(w)
    if not values:
        if default is None:
            raise reject(f"{name} is missing (give {name}, or {short}_h and {short}_w)")
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise reject(f"{name} has {len(values)} values; give 1 or one per spatial axis ({n})")
    return tuple(int(v) for v in values)


def static_dims(ctx: CaffeContext, name: str, dims: Sequence[Dim], what: str) -> tuple[int, ...]:
    """``dims`` as ints; an error naming ``what`` when one is symbolic."""
    if not all(isinstance(d, int) for d in dims):
        raise reject(f"{what} must be known when the network is imported, but {name!r} has dims "
                     f"{tuple(dims)}; give fixed input shapes (shapes={{...}})")
    return tuple(int(d) for d in dims)


def axis_of(p: Any, field: str, legacy: str | None, rank: int, default: int = 1) -> int:
    """An axis parameter in ``[0, rank)``: ``field`` when set, else the deprecated non-negative
    alias ``legacy`` (``concat_dim``, ``slice_dim``) when set, else ``default``."""
    if p.HasField(field):
        axis = int(getattr(p, field))
    elif legacy is not None and p.HasField(legacy):
        axis = int(getattr(p, legacy))
    else:
        axis = default
    if not -rank <= axis < rank:
        raise reject(f"{field} {axis} is out of range for a rank-{rank} blob")
    return axis + rank if axis < 0 else axis


def trailing_ones(shape: Sequence[int], axis: int, rank: int) -> tuple[int, ...]:
    """``shape`` placed at ``axis`` of a rank-``rank`` tensor: padded with 1s to broadcast."""
    return tuple(shape) + (1,) * (rank - axis - len(shape))
