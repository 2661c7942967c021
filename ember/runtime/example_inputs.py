"""Random inputs for an engine or a model, shared by ``ember run --random``, ``ember compare``
and ``ember bench``.

Two steps. ``resolve_shapes`` gives every input a concrete shape: shapes the user gave (and the
dims they fix, shared by name with other inputs: giving ``input_ids`` a shape sizes the
``attention_mask`` of the same ``batch`` and ``seq`` too), then a policy for the dynamic dims
left. ``random_inputs`` then draws the values: N(0, 1) floats; integers in the range of the
embedding table they index (else 0..1), so token ids are always valid; inputs named like a mask
all ones; random bools.

>>> specs = engine_input_specs(engine)                                  # doctest: +SKIP
>>> shapes = resolve_shapes(specs, {"x": (1, 3, 224, 224)}, dynamic="opt")  # doctest: +SKIP
>>> feeds = random_inputs(specs, shapes, seed=0, int_ranges=graph_int_ranges(engine.plan.graph))  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ember.errors import InputError
from ember.ir.dtype import DType
from ember.ir.types import Dim

DYNAMIC_POLICIES = ("error", "min", "opt")


@dataclass(frozen=True)
class InputSpec:
    """An input as far as drawing it goes: ``shape`` has ints for static dims and names (or None)
    for dynamic ones; ``min``/``opt`` give each dim's profile minimum and optimum where known."""

    name: str
    dtype: DType
    shape: tuple[Optional[Dim], ...]
    min: tuple[int, ...] = ()
    opt: Optional[tuple[int, ...]] = None

    def static_size(self, axis: int) -> Optional[int]:
        """The size of dim ``axis`` where it is fixed; ``None`` where it is dynamic."""
        d = self.shape[axis]
        return d if isinstance(d, int) and d >= 0 else None

    def is_dynamic(self, axis: int) -> bool:
        return self.static_size(axis) is None


def engine_input_specs(engine: Any) -> list[InputSpec]:
    """The inputs of an ``Engine``, with each profile's opt shape from its build configuration."""
    profiles = engine.plan.config.profiles
    return [InputSpec(s.name, s.dtype, tuple(s.shape), tuple(s.min),
                      tuple(profiles[s.name].opt) if s.name in profiles else None)
            for s in engine.inputs]


def graph_input_specs(graph: Any) -> list[InputSpec]:
    """The inputs of an IR ``Graph`` (any frontend's), dynamic dims by their names."""
    return [InputSpec(name, graph.types[name].dtype,
                      tuple(d if isinstance(d, int) else (str(d) if d is not None else None)
                            for d in graph.types[name].shape))
            for name in graph.inputs]


def onnx_input_specs(model: Any) -> list[InputSpec]:
    """The graph inputs of an ``onnx.ModelProto`` (initializers excluded); a dim without a value
    keeps its ``dim_param`` name (None when it has none)."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        dtype = DType.from_numpy(helper.tensor_dtype_to_np_dtype(t.elem_type))
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


def onnx_int_ranges(model: Any) -> dict[str, int]:
    """Graph input -> number of rows of the initializer it indexes with a Gather (token ids into
    an embedding table)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            sizes[node.input[1]] = min(sizes.get(node.input[1], 1 << 62), inits[node.input[0]][axis])
    return sizes


def graph_int_ranges(graph: Any) -> dict[str, int]:
    """The same for an Ember ``Graph`` (an engine's ``plan.graph``): inputs that index a constant
    table with a Gather."""
    from ember.ir.optype import OpType

    inputs = set(graph.inputs)
    sizes: dict[str, int] = {}
    for node in graph.nodes:
        if node.op is not OpType.GATHER or len(node.inputs) != 2:
            continue
        table, index = node.inputs
        if index in inputs and table in graph.constants:
            shape = graph.constants[table].shape
            axis = getattr(node.attrs, "axis", 0) % max(len(shape), 1)
            sizes[index] = min(sizes.get(index, 1 << 62), int(shape[axis]))
    return sizes


def _example(spec: InputSpec, sizes: Mapping[Any, int]) -> str:
    """A shape to suggest for ``spec``: known dims as they are, the others at their minimum."""
    dims: list[int] = []
    for axis, d in enumerate(spec.shape):
        size = spec.static_size(axis)
        if size is not None:
            dims.append(size)
        else:
            dims.append(sizes.get(d, spec.min[axis] if axis < len(spec.min) and spec.min[axis] > 0 else 1))
    return "x".join(str(int(d)) for d in dims) if dims else "(rank 0: no dims)"


def resolve_shapes(specs: Sequence[InputSpec], shapes: Optional[Mapping[str, Sequence[int]]] = None, *,
                   dynamic: str = "error", batch: Optional[int] = None, dynamic_batch: Optional[int] = None,
                   known: Optional[Mapping[str, Sequence[int]]] = None,
                   flag: str = "--shapes") -> dict[str, tuple[int, ...]]:
    """A concrete shape for every input in ``specs``.

    ``shapes``: shapes the user gave, by input name (a name that is no input is an error naming
    the inputs there are). A named dynamic dim they fix takes that size in every input that has
    it. ``known``: shapes of inputs that come from elsewhere (arrays from files); they size the
    dims they share with other inputs and are not checked here (the engine checks them when it
    runs). ``batch``: the size of axis 0 of every input not in ``shapes``, static or not (``ember
    bench --batch``); ``dynamic_batch``: the size of a dynamic axis 0 nothing else fixes. Any
    dynamic dim left follows ``dynamic``: ``"opt"`` the build profile's opt size (an error when
    the dim has no profile), ``"min"`` the profile minimum (1 without one), ``"error"`` an error.
    Errors name the input and dim and say what to pass with ``flag``.
    """
    if dynamic not in DYNAMIC_POLICIES:
        raise ValueError(f"dynamic={dynamic!r}; use one of {DYNAMIC_POLICIES}")
    given = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    by_name = {s.name: s for s in specs}
    unknown = [n for n in given if n not in by_name]
    if unknown:
        raise InputError(f"{flag} names {', '.join(repr(n) for n in unknown)}, which "
                         f"{'is not an input' if len(unknown) == 1 else 'are not inputs'}; the inputs are "
                         f"{', '.join(repr(s.name) for s in specs) or 'none'}")
    sizes: dict[Any, int] = {}   # dim name -> size, from the shapes given
    source: dict[Any, str] = {}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in given.items():
        spec = by_name[name]
        if len(shape) != len(spec.shape):
            raise InputError(f"{flag} {name}:{'x'.join(map(str, shape)) or '()'} has rank {len(shape)} but "
                             f"input {name!r} has rank {len(spec.shape)} ({_describe(spec)})")
        for axis, (d, n) in enumerate(zip(spec.shape, shape)):
            if n < 0 or (not spec.is_dynamic(axis) and n != d):
                raise InputError(f"{flag} gives input {name!r} size {n} in dim {axis}, which is fixed at "
                                 f"{d} ({_describe(spec)})")
            if spec.is_dynamic(axis) and d is not None:
                if d in sizes and sizes[d] != n:
                    raise InputError(f"dim {d!r} is {sizes[d]} in input {source[d]!r} but {n} in input "
                                     f"{name!r}; inputs that share a dim need the same size")
                sizes[d], source[d] = n, name
        out[name] = shape
    for name, known_shape in (known or {}).items():
        known_spec = by_name.get(name)
        if known_spec is None or name in out or len(known_shape) != len(known_spec.shape):
            continue  # the engine names what is wrong with it when it runs
        for axis, (d, n) in enumerate(zip(known_spec.shape, known_shape)):
            if known_spec.is_dynamic(axis) and d is not None and d not in sizes:
                sizes[d], source[d] = int(n), name
        out[name] = tuple(int(n) for n in known_shape)
    for spec in specs:
        if spec.name in out:
            continue
        dims = []
        for axis, d in enumerate(spec.shape):
            if axis == 0 and batch is not None:
                n = batch
            elif (size := spec.static_size(axis)) is not None:
                n = size
            elif d is not None and d in sizes:
                n = sizes[d]
            elif axis == 0 and dynamic_batch is not None:
                n = dynamic_batch
            elif dynamic == "opt" and spec.opt is not None:
                n = spec.opt[axis]
            elif dynamic == "min":
                n = max(1, spec.min[axis] if axis < len(spec.min) else 1)
            else:
                what = "the engine has no profile for it" if dynamic == "opt" else "nothing gives its size"
                raise InputError(f"input {spec.name!r} has a dynamic dim {axis}"
                                 f"{f' ({d!r})' if d is not None else ''} and {what}; pass its shape "
                                 f"with {flag} {spec.name}:{_example(spec, sizes)} (any size for dim {axis})")
            if d is not None and spec.is_dynamic(axis) and d not in sizes:
                sizes[d], source[d] = n, spec.name
            dims.append(n)
        out[spec.name] = tuple(dims)
    return {s.name: out[s.name] for s in specs}


def _describe(spec: InputSpec) -> str:
    dims = ", ".join(str(d) if not spec.is_dynamic(i) else (repr(d) if d is not None else "?")
                     for i, d in enumerate(spec.shape))
    return f"{spec.dtype.value}[{dims}]"


def random_inputs(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]], seed: int = 0,
                  int_ranges: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
    """Random arrays of ``shapes`` (from ``resolve_shapes``) for ``specs``, drawn in order from one
    generator seeded with ``seed``: N(0, 1) floats; integers in ``0..int_ranges[name]`` (the
    embedding table they index, from ``onnx_int_ranges``/``graph_int_ranges``; else 0..1); inputs
    with "mask" in their name all ones; random bools."""
    rng = np.random.default_rng(seed)
    ranges = int_ranges or {}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(shapes[spec.name])
        if spec.dtype is DType.BFLOAT16:
            raise InputError(f"input {spec.name!r} is bfloat16, which numpy cannot hold; give it from a "
                             f"file as float32 or build the engine with float32 inputs")
        np_dtype = spec.dtype.to_numpy()
        if spec.dtype.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(np_dtype)
        elif spec.dtype is DType.BOOL:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        elif "mask" in spec.name.lower():
            feeds[spec.name] = np.ones(shape, np_dtype)
        else:
            feeds[spec.name] = rng.integers(0, ranges.get(spec.name, 2), shape).astype(np_dtype)
    return feeds


def array_stats(value: Any) -> str:
    """``min -0.53 max 2.1 mean 0.12 std 0.9`` (and NaN/Inf counts) of an output, for printing."""
    a = np.asarray(value)
    if a.size == 0:
        return "empty"
    if a.dtype == bool:
        return f"true {int(a.sum())} of {a.size}"
    if a.dtype.kind not in "fiu":
        return ""
    x = a.astype(np.float64)
    finite = np.isfinite(x)
    parts = []
    if not finite.all():
        parts.append(f"NaN {int(np.isnan(x).sum())} Inf {int(np.isinf(x).sum())}")
    if finite.any():
        f = x[finite]
        parts.insert(0, f"min {f.min():.6g} max {f.max():.6g} mean {f.mean():.6g} std {f.std():.6g}")
    return ", ".join(parts)
