"""``import_caffe``: a Caffe network (``deploy.prototxt``) and its weights (``.caffemodel``) to an
Ember ``Graph``.

Tensor names: Caffe's blobs are mutable (an in-place ReLU writes the blob its convolution
wrote); the IR's tensors are written once. The last value of every blob keeps the blob's name
(so the outputs are ``prob`` and the like, and ``ember compare --per-layer`` finds Caffe's blob
names); earlier values are named ``<layer>/out`` after the layer that wrote them. Node names are
Caffe's layer names, so fused layers read ``conv1/7x7_s2 + conv1/relu_7x7``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ember.errors import GraphError, ModelLoadError, ShapeError, UnsupportedOpError
from ember.frontends.caffe.context import CaffeContext, CaffeLayer
from ember.frontends.caffe.reader import NetSource, WeightTable, read_net, read_weights
from ember.frontends.caffe.registry import IMPORTER_TYPES, find_handler, plugin_for, unknown_layers_error
from ember.frontends.caffe.upgrade import deploy_layers, upgrade
from ember.frontends.graph_builder import ShapeMap
from ember.ir.dtype import DType
from ember.ir.graph import Graph, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import Dim, format_shape

#: Layers that pass their bottom on unchanged at inference: their tops name the bottom's tensor.
ALIAS_TYPES = frozenset({"Dropout", "Split"})
#: Layers that read blobs and produce nothing (Caffe's Silence swallows unused tops).
SINK_TYPES = frozenset({"Silence"})
assert ALIAS_TYPES | SINK_TYPES | {"Input"} == IMPORTER_TYPES


def import_caffe(net: NetSource, weights: Optional[NetSource] = None, shapes: Optional[ShapeMap] = None,
                 outputs: Optional[Sequence[str]] = None) -> Graph:
    """Imports a Caffe network and its trained weights as an Ember ``Graph``.

    ``net``: the network definition (a ``deploy.prototxt`` path, its text, or a parsed
    ``NetParameter``); ``weights``: the ``.caffemodel`` (path, bytes or ``NetParameter``), needed
    when any layer has parameters; ``shapes``: input shapes that replace the prototxt's
    (``{"data": (1, 3, 224, 224)}``; same rank, dims may be symbolic strings); ``outputs``: blob
    names to return (default: the blobs no layer reads, as Caffe's net outputs).

    >>> g = import_caffe("deploy.prototxt", "bvlc_googlenet.caffemodel",       # doctest: +SKIP
    ...                  shapes={"data": (1, 3, 224, 224)})
    >>> g.outputs                                                              # doctest: +SKIP
    ['prob']
    """
    proto, label = read_net(net)
    proto = upgrade(proto, label)
    layers = deploy_layers(proto, label)
    table: Optional[WeightTable] = None
    weights_label = "the weights"
    if weights is not None:
        table, weights_label = read_weights(weights)
    error = unknown_layers_error(layers, label)
    if error is not None:
        raise error
    plan = _Plan.make(layers, label, outputs)
    ctx = CaffeContext(label)
    ctx.reserve(plan.blob_names)
    _convert(ctx, layers, plan, table, weights_label, label, dict(shapes or {}))
    out_names = [_output(ctx, plan, blob) for blob in plan.outputs]
    return ctx.finish(proto.name or "caffe_model", out_names,
                      source_info=SourceInfo("caffe", "", len(layers)))


@dataclass
class _Plan:
    """What the importer works out before converting: the last writer of every blob and the
    network's outputs."""

    last_writer: dict[str, int]
    outputs: list[str]
    blob_names: set[str]
    current: dict[str, str]

    @staticmethod
    def make(layers: list[Any], label: str, wanted: Optional[Sequence[str]]) -> _Plan:
        last: dict[str, int] = {}
        available: dict[str, None] = {}  # insertion-ordered set, as Caffe's available_blobs
        names: set[str] = set()
        for i, layer in enumerate(layers):
            for b in layer.bottom:
                available.pop(b, None)
                names.add(b)
            for t in layer.top:
                names.add(t)
                available[t] = None
                if not (layer.type in ALIAS_TYPES and t in layer.bottom):
                    last[t] = i
        if wanted is not None:
            unknown = [w for w in wanted if w not in names]
            if unknown:
                raise ModelLoadError(f"outputs {unknown} are not blobs of {label}; its blobs include "
                                     f"{', '.join(sorted(names)[:20])}")
            outs = list(dict.fromkeys(wanted))
        else:
            outs = list(available)
        if not outs:
            raise ModelLoadError(f"{label} has no output: every blob is read by a later layer; name "
                                 f"the blobs to return with outputs=[...]")
        return _Plan(last, outs, names, {})


def _convert(ctx: CaffeContext, layers: list[Any], plan: _Plan, table: Optional[WeightTable],
             weights_label: str, label: str, shapes: dict[str, Sequence[Dim]]) -> None:
    rejected: dict[tuple[str, str], list[str]] = {}
    missing: list[str] = []
    used_shapes: set[str] = set()
    skipped: set[str] = set()
    for index, p in enumerate(layers):
        if p.type == "Input":
            _add_inputs(ctx, p, plan, shapes, used_shapes, label)
            continue
        if any(b in skipped for b in p.bottom):
            skipped.update(p.top)  # reads the output of a layer already reported
            continue
        bottoms = tuple(_current(plan, b, p, label) for b in p.bottom)
        if p.type in SINK_TYPES:
            continue
        if p.type in ALIAS_TYPES:
            _alias(ctx, p, bottoms, plan, index)
            continue
        tops = tuple(_top_name(ctx, plan, p, index, i, t) for i, t in enumerate(p.top))
        blobs = None if table is None else table.get(p.name)
        layer = CaffeLayer(p, bottoms, tops, blobs, weights_label)
        try:
            _run(ctx, layer)
        except UnsupportedOpError as e:
            rejected.setdefault((p.type, str(e)), []).append(p.name)
            skipped.update(p.top)
            continue
        except ShapeError as e:
            raise ShapeError(f"{label}: {layer.label}: {e}") from None
        except GraphError as e:
            if type(e) is GraphError:
                raise GraphError(f"{label}: {layer.label}: {e}") from None
            raise
        if layer.missing is not None:
            needed, found = layer.missing
            where = ("no weights were given" if table is None else "the caffemodel has no layer of this name"
                     if blobs is None else f"the caffemodel's layer of this name has {found}")
            missing.append(f"  - {layer.label}: needs {needed} blob(s); {where}")
        for t in tops:
            if t not in ctx.types:
                raise ModelLoadError(f"{label}: {layer.label} did not define its top {t!r}")
        for blob, name in zip(p.top, tops):
            plan.current[blob] = name
    unused = sorted(set(shapes) - used_shapes)
    if unused:
        raise ShapeError(f"shapes given for {unused}, which are not inputs of {label}; its inputs are "
                         f"{ctx.inputs}")
    _report(label, rejected, missing, weights_label, table is None)


def _report(label: str, rejected: dict[tuple[str, str], list[str]], missing: list[str],
            weights_label: str, no_weights: bool) -> None:
    if missing:
        how = ("pass the trained .caffemodel: weights='model.caffemodel' (ember build ... --weights "
               "model.caffemodel)" if no_weights else
               f"{weights_label} is not the caffemodel of this network, or its layers were renamed "
               f"(Caffe matches weights to layers by name)")
        raise ModelLoadError(f"{label}: {len(missing)} layer(s) have no trained weights:\n"
                             + "\n".join(missing) + f"\n{how}")
    if rejected:
        lines = [f"  - {t}: layer{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}: {why}"
                 for (t, why), names in rejected.items()]
        raise UnsupportedOpError(f"{label} uses {len(rejected)} layer form(s) Ember cannot import:\n"
                                 + "\n".join(lines))


def _current(plan: _Plan, blob: str, p: Any, label: str) -> str:
    try:
        return plan.current[blob]
    except KeyError:
        raise ModelLoadError(f"{label}: layer {p.name!r} ({p.type}) reads blob {blob!r}, which no "
                             f"earlier layer produces; check its bottom names and the layer order") from None


def _top_name(ctx: CaffeContext, plan: _Plan, p: Any, index: int, i: int, blob: str) -> str:
    """The IR name of the value layer ``index`` writes into ``blob``: the blob's own name for its
    last value, ``<layer>/out`` for an earlier one (and for an input written in place)."""
    if plan.last_writer.get(blob) == index and blob not in ctx.types:
        return blob
    return ctx.fresh(f"{p.name}/out" if i == 0 else f"{p.name}/out{i}")


def _alias(ctx: CaffeContext, p: Any, bottoms: tuple[str, ...], plan: _Plan, index: int) -> None:
    """Dropout (an identity at inference) and Split: each top names the bottom's tensor; a top
    that is a network output under a name of its own gets an Identity node."""
    if len(bottoms) != 1:
        raise ModelLoadError(f"{ctx.source}: layer {p.name!r} ({p.type}) takes one bottom, the network "
                             f"gives {len(bottoms)}")
    for top in p.top:
        if top in plan.outputs and top != p.bottom[0] and plan.last_writer.get(top) == index:
            ctx.add_node(OpType.IDENTITY, (bottoms[0],), (top,), None, name=f"{p.name}/{top}",
                         origin=(p.name,))
            plan.current[top] = top
        else:
            plan.current[top] = bottoms[0]


def _run(ctx: CaffeContext, layer: CaffeLayer) -> None:
    handler = find_handler(layer.type)
    if handler is not None:
        handler(ctx, layer)
        return
    spec = plugin_for(layer.type)
    if spec is None:  # unknown_layers_error has listed it already
        raise UnsupportedOpError("no handler and no plugin")
    from ember.frontends.caffe.plugins import add_plugin_layer

    add_plugin_layer(ctx, layer, spec)


def _add_inputs(ctx: CaffeContext, p: Any, plan: _Plan, shapes: dict[str, Sequence[Dim]],
                used: set[str], label: str) -> None:
    declared = list(p.input_param.shape)
    if declared and len(declared) not in (1, len(p.top)):
        raise ModelLoadError(f"{label}: Input layer {p.name!r} has {len(p.top)} tops but "
                             f"{len(declared)} shapes; give one shape, or one per top")
    for i, top in enumerate(p.top):
        dims: Optional[tuple[Dim, ...]] = None
        if declared:
            dims = tuple(int(d) for d in declared[0 if len(declared) == 1 else i].dim)
        given = shapes.get(top)
        if given is not None:
            used.add(top)
            if dims is not None and len(given) != len(dims):
                raise ShapeError(f"shape {format_shape(tuple(given))} given for input {top!r} has rank "
                                 f"{len(given)}, but {label} declares rank {len(dims)} "
                                 f"({format_shape(dims)}); give {len(dims)} dims")
            dims = tuple(given)
        if dims is None:
            raise ShapeError(f"{label}: input {top!r} has no shape in the prototxt; pass "
                             f"shapes={{{top!r}: (...)}} (--shapes {top}:1x3x224x224)")
        ctx.add_input(top, DType.FLOAT32, dims)
        plan.current[top] = top


def _output(ctx: CaffeContext, plan: _Plan, blob: str) -> str:
    """The IR tensor of output ``blob`` (an unread input gets an Identity under the blob name
    only when its last value has another name)."""
    name = plan.current.get(blob)
    if name is None:
        raise ModelLoadError(f"{ctx.source}: output blob {blob!r} is not produced by any layer")
    return name
