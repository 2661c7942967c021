"""Input shapes of a build: fixed shapes, optimization profiles, and the ranges they allow.

``config.shapes`` fixes an input's shape. ``config.profiles`` gives min/opt/max per input: a dim
whose min equals its max becomes static; the others stay symbolic and the engine accepts any
size in ``[min, max]``. A dynamic dim with neither (no shape, no profile) stays symbolic with no
upper bound: the engine accepts any size, and tensors whose size depends on it are left out of
the static memory plan and allocated at run time (TensorRT would refuse such a build; we accept
it because a plan for the largest shape is an optimization, not a need, on the CPU).

A symbol shared by several inputs (``batch`` in ``input_ids`` and ``attention_mask``) takes one
value: fixing it in one input fixes it in all, and profile ranges given for it intersect.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from ember.errors import BuildError, EmberError
from ember.ir.graph import Graph
from ember.ir.types import Dim, TensorType, format_shape
from ember.plan.config import BuildConfig, Profile
from ember.plan.plan import TensorSpec

Range = tuple[int, int | None]


@dataclass(frozen=True)
class InputShapes:
    """What the build's shapes and profiles make of the model's inputs.

    ``shapes``: the new shape of every input (symbols the build fixed are ints);
    ``ranges``: the allowed range of every symbol left; ``overrides_static``: the build changed a
    dim the model had fixed (the frontend must then re-import with these shapes, because the
    exporter may have baked that dim into the graph).
    """

    shapes: dict[str, tuple[Dim, ...]]
    ranges: dict[str, Range]
    overrides_static: bool


def infer_types(graph: Graph) -> Graph:
    """Re-derives every node output type (``ember.ops.infer.infer_graph``)."""
    from ember.ops.infer import infer_graph

    return infer_graph(graph)


def _check_names(graph: Graph, names: list[str], what: str) -> None:
    unknown = [n for n in names if n not in graph.inputs]
    if unknown:
        raise BuildError(f"{what} name input {unknown[0]!r}, which the model does not have; its inputs "
                         f"are {', '.join(f'{i} {graph.types[i]}' for i in graph.inputs)}")


def _bind(symbols: dict[str, int], sym: str, value: int, where: str) -> None:
    if symbols.setdefault(sym, value) != value:
        raise BuildError(f"dim '{sym}' is {symbols[sym]} in one input and {value} in {where}; "
                         f"inputs sharing a dim name must agree in --shapes / profiles")


def _fixed_dims(graph: Graph, config: BuildConfig
                ) -> tuple[dict[str, tuple[Dim, ...]], dict[str, int], dict[str, Range]]:
    """New input shapes, symbols bound to ints, and the ranges profiles give to symbols."""
    new_shapes: dict[str, tuple[Dim, ...]] = {}
    symbols: dict[str, int] = {}
    ranges: dict[str, Range] = {}
    for name in graph.inputs:
        old = graph.types[name].shape
        given = config.shapes.get(name)
        profile: Profile | None = config.profiles.get(name)
        want = len(given) if given is not None else len(profile.min) if profile is not None else None
        if want is not None and want != len(old):
            raise BuildError(f"input {name!r} has rank {len(old)} ({format_shape(old)}) in the model but "
                             f"the build gives it rank {want}; give {len(old)} dims")
        if given is not None:
            for d, g in zip(old, given):
                if isinstance(d, str):
                    _bind(symbols, d, g, f"input {name!r}")
            new_shapes[name] = tuple(given)
        elif profile is not None:
            new_shapes[name] = _profile_dims(name, old, profile, symbols, ranges)
    return new_shapes, symbols, ranges


def _profile_dims(name: str, old: tuple[Dim, ...], p: Profile, symbols: dict[str, int],
                  ranges: dict[str, Range]) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for axis, (d, lo, hi) in enumerate(zip(old, p.min, p.max)):
        if isinstance(d, int):
            if not lo == d == hi:
                raise BuildError(f"input {name!r} dim {axis} is fixed at {d} in the model but its "
                                 f"profile asks for {lo}..{hi}; give {d}..{d} for that dim, or "
                                 f"export the model with that dim dynamic")
            dims.append(d)
        elif lo == hi:
            _bind(symbols, d, lo, f"the profile of input {name!r}")
            dims.append(lo)
        else:
            prev_lo, prev_hi = ranges.get(d, (0, None))
            new_hi = hi if prev_hi is None else min(hi, prev_hi)
            new_lo = max(lo, prev_lo)
            ranges[d] = (new_lo, new_hi)
            if new_hi is not None and new_lo > new_hi:
                raise BuildError(f"profiles give dim '{d}' disjoint ranges; inputs sharing a dim "
                                 f"name must have overlapping profiles")
            dims.append(d)
    return tuple(dims)


def resolve_input_shapes(graph: Graph, config: BuildConfig) -> InputShapes:
    """Works out every input's shape under ``config.shapes`` and ``config.profiles``."""
    _check_names(graph, list(config.shapes), "--shapes")
    _check_names(graph, list(config.profiles), "the profiles")
    new_shapes, symbols, ranges = _fixed_dims(graph, config)
    shapes: dict[str, tuple[Dim, ...]] = {}
    overrides = False
    for name in graph.inputs:
        old = graph.types[name].shape
        shape = new_shapes.get(name, old)
        shapes[name] = tuple(symbols.get(d, d) if isinstance(d, str) else d for d in shape)
        overrides |= any(isinstance(o, int) and o != n for o, n in zip(old, shapes[name]))
    for sym in list(ranges):
        if sym in symbols:
            lo, hi = ranges.pop(sym)
            if symbols[sym] < lo or (hi is not None and symbols[sym] > hi):
                raise BuildError(f"dim '{sym}' is fixed at {symbols[sym]} but a profile asks for {lo}..{hi}")
    return InputShapes(shapes, ranges, overrides)


def apply_input_shapes(graph: Graph, resolved: InputShapes) -> Graph:
    """The graph with its inputs retyped to ``resolved.shapes`` and every type re-inferred."""
    types = dict(graph.types)
    for name in graph.inputs:
        types[name] = graph.types[name].with_shape(resolved.shapes[name])
    if all(types[n] == graph.types[n] for n in graph.inputs):
        return graph
    return infer_types(graph.copy(types=types))


def symbols_of(graph: Graph) -> set[str]:
    return {d for n in graph.inputs for d in graph.types[n].shape if isinstance(d, str)}


def types_at(graph: Graph, values: Mapping[str, int]) -> dict[str, TensorType]:
    """Every tensor's type with input symbols replaced by ``values`` (for the max-shape plan).

    Shape arithmetic (``Shape -> Gather -> Concat -> Reshape``) is folded on a copy at these
    sizes, so tensors whose shapes come from such chains get static sizes too; tensors the
    folding removes keep their symbolic types (they are small shape vectors).
    """
    if not values:
        return dict(graph.types)
    types = dict(graph.types)
    for name in graph.inputs:
        t = types[name]
        types[name] = t.with_shape(tuple(values.get(d, d) if isinstance(d, str) else d for d in t.shape))
    at = infer_types(graph.copy(types=types))
    folded = _fold_shapes(at)
    return {**graph.types, **at.types, **folded.types}


def _fold_shapes(graph: Graph) -> Graph:
    if importlib.util.find_spec("ember.passes.manager") is None:
        return graph
    from ember.passes.manager import PassContext, get_pass

    try:
        return get_pass("fold_constants")(graph, PassContext())
    except (KeyError, EmberError):
        return graph  # no folding pass, or a model it cannot fold: plan with what inference gives


def tensor_specs(graph: Graph, names: list[str], ranges: Mapping[str, Range],
                 lo_types: Mapping[str, TensorType] | None = None,
                 hi_types: Mapping[str, TensorType] | None = None) -> list[TensorSpec]:
    """Specs of ``names`` with per-dim ranges: profile ranges for input symbols, and for other
    tensors the dims inferred at the profiles' min and max shapes (else unbounded)."""
    specs = []
    for name in names:
        t = graph.types[name]
        lo_t = (lo_types or {}).get(name)
        hi_t = (hi_types or {}).get(name)
        mins: list[int] = []
        maxs: list[int | None] = []
        for axis, d in enumerate(t.shape):
            if isinstance(d, int):
                mins.append(d)
                maxs.append(d)
                continue
            lo, hi = ranges.get(d, (0, None))
            if d not in ranges:
                lo_d = lo_t.shape[axis] if lo_t is not None else None
                hi_d = hi_t.shape[axis] if hi_t is not None else None
                if isinstance(lo_d, int):
                    lo = lo_d
                if isinstance(hi_d, int):
                    hi = hi_d
            mins.append(lo)
            maxs.append(hi)
        specs.append(TensorSpec(name, t.dtype, t.shape, tuple(mins), tuple(maxs)))
    return specs
