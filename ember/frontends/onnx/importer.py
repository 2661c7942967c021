"""``import_onnx``: an ONNX model to an Ember ``Graph``."""
from __future__ import annotations

from typing import Mapping, Optional

import onnx
import onnx.inliner

from ember.errors import ModelLoadError, ShapeError, UnsupportedOpError
from ember.frontends.graph_builder import ShapeMap, symbolic_dim
from ember.frontends.onnx.context import (
    ImportContext,
    OnnxNode,
    decode_attribute,
    onnx_dtype,
    tensor_to_array,
)
from ember.frontends.onnx.handlers.quantize import check_quantized_types
from ember.frontends.onnx.loader import ModelLike, load_model
from ember.frontends.onnx.plugins import missing_reason, plugin_handler
from ember.frontends.onnx.registry import (
    MAX_OPSET,
    MIN_OPSET,
    HandlerFn,
    canonical_domain,
    find_handler,
    supported_op_names,
)
from ember.ir.dtype import DType
from ember.ir.graph import Graph, SourceInfo
from ember.ir.types import Dim


def import_onnx(model: ModelLike, shapes: Optional[ShapeMap] = None) -> Graph:
    """Imports an ONNX model (path, bytes or ``onnx.ModelProto``) as an Ember ``Graph``.

    ``shapes`` overrides input shapes (``{"input": (1, 3, 224, 224)}``); dims may be symbolic
    strings. Every opset variant is canonicalized to the attrs in ``ember.ops.attrs``.

    >>> g = import_onnx("resnet50.onnx", shapes={"input": (1, 3, 224, 224)})  # doctest: +SKIP
    >>> g.types[g.outputs[0]]                                                 # doctest: +SKIP
    """
    proto, label = load_model(model)
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    opsets = _opsets(proto, label)
    opset = opsets[""]
    check_quantized_types(proto.graph, label)
    nodes = _wrap_nodes(proto.graph, opsets)
    _check_handlers(nodes, label, opset)
    ctx = ImportContext(source=label, opset=opset, opsets=opsets)
    _reserve_names(ctx, proto.graph)
    _add_inputs(ctx, proto.graph, shapes or {})
    outputs = [o.name for o in proto.graph.output]
    ctx.graph_outputs = set(outputs)
    ctx.used = {i for n in nodes for i in n.inputs if i} | set(outputs)
    _convert(ctx, nodes, label)
    return ctx.finish(
        proto.graph.name or "model", outputs, opset=opset,
        source_info=SourceInfo("onnx", f"{proto.producer_name} {proto.producer_version}".strip(),
                               len(proto.graph.node), dict(opsets), int(proto.ir_version)))


def _opsets(proto: onnx.ModelProto, label: str) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for imp in proto.opset_import:
        opsets[canonical_domain(imp.domain)] = int(imp.version)
    if "" not in opsets:
        raise ModelLoadError(f"{label} declares no ai.onnx opset (opset_import is empty); "
                             f"re-export it with an explicit opset version")
    v = opsets[""]
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise UnsupportedOpError(
            f"{label} uses ONNX opset {v}; Ember imports opsets {MIN_OPSET} through {MAX_OPSET}. "
            f"Re-export the model with an opset in that range (torch.onnx.export(..., "
            f"opset_version=17)) or convert it with onnx.version_converter.convert_version(model, 17)")
    return opsets


def _wrap_nodes(graph: onnx.GraphProto, opsets: Mapping[str, int]) -> list[OnnxNode]:
    out = []
    for i, n in enumerate(graph.node):
        # an unnamed node takes the name of its first output (onnx-tensorrt's convention), so
        # profiles and inspections of models exported without node names read as the model does
        name = n.name or next((o for o in n.output if o), f"{n.op_type}_{i}")
        domain = canonical_domain(n.domain)
        attrs = {a.name: decode_attribute(a, f"node {name!r} ({n.op_type})") for a in n.attribute}
        out.append(OnnxNode(name, n.op_type, domain, tuple(n.input), tuple(n.output), attrs,
                            opsets.get(domain, 1)))
    return out


def _op_line(op_type: str, domain: str, names: list[str], opset: int, reason: str = "") -> str:
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    node_word = "node" if len(names) == 1 else "nodes"
    line = f"  - {op_type} (domain {domain or 'ai.onnx'}, opset {opset}): {node_word} {shown}"
    return line + (f": {reason}" if reason else "")


def _check_handlers(nodes: list[OnnxNode], label: str, opset: int) -> None:
    """Raises one UnsupportedOpError listing every op with no handler at the model's opset."""
    missing: dict[tuple[str, str, int], list[str]] = {}
    for n in nodes:
        if _handler(n) is None:
            missing.setdefault((n.op_type, n.domain, n.opset), []).append(n.name)
    if missing:
        lines = [_op_line(op, dom, names, v, missing_reason(dom, op, v))
                 for (op, dom, v), names in sorted(missing.items())]
        raise UnsupportedOpError(
            f"{label} (opset {opset}) uses {len(missing)} operator(s) Ember cannot import:\n"
            + "\n".join(lines) + "\n" + _supported_hint())


def _handler(n: OnnxNode) -> Optional[HandlerFn]:
    """The built-in handler of ``n`` at its opset, else a registered plugin's (ember.ops.plugin)."""
    found = find_handler(n.domain, n.op_type, n.opset)
    return found.fn if found is not None else plugin_handler(n)


def _supported_hint() -> str:
    return ("Ember supports: " + ", ".join(supported_op_names())
            + " (see the supported-op table in README.md for opset ranges)")


def _reserve_names(ctx: ImportContext, graph: onnx.GraphProto) -> None:
    ctx.reserve([i.name for i in graph.input] + [t.name for t in graph.initializer])
    for n in graph.node:
        ctx.reserve(list(n.input) + list(n.output))


def _add_inputs(ctx: ImportContext, graph: onnx.GraphProto, shapes: ShapeMap) -> None:
    """Initializers become constants; the other graph inputs become inputs (``shapes`` wins)."""
    for t in graph.initializer:
        ctx.add_constant(t.name, tensor_to_array(t, f"initializer {t.name!r}"))
    for vi in graph.input:
        if vi.name in ctx.constants:
            continue  # an initializer listed as an input is a constant (ONNX IR < 4 style)
        dtype, dims = _input_type(vi, ctx.source)
        ctx.add_input(vi.name, dtype, dims, shapes.get(vi.name))
    ctx.check_shapes(shapes)


def _input_type(vi: onnx.ValueInfoProto, label: str) -> tuple[DType, Optional[list[Dim]]]:
    """The element type and the dims an input declares (None: no shape, not even a rank).

    Unnamed dynamic dims become ``"<input>_d<i>"``; named ones (``dim_param``) are written in
    canonical form once, here.
    """
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"{label}: input {vi.name!r} is not a tensor "
                                 f"({vi.type.WhichOneof('value')}); Ember takes tensor inputs only")
    tt = vi.type.tensor_type
    dtype = onnx_dtype(tt.elem_type, f"{label}: input {vi.name!r}")
    if not tt.HasField("shape"):
        return dtype, None
    dims: list[Dim] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(symbolic_dim(d.dim_param) if d.dim_param else f"{vi.name}_d{i}")
    return dtype, dims


def _convert(ctx: ImportContext, nodes: list[OnnxNode], label: str) -> None:
    """Runs every node's handler; collects every rejected node, then raises once."""
    rejected = convert_nodes(ctx, nodes, label)
    if rejected:
        lines = [_op_line(op, dom, names, v, why) for (op, dom, v, why), names in rejected.items()]
        raise UnsupportedOpError(
            f"{label} (opset {ctx.opset}) uses {len(rejected)} operator form(s) Ember cannot import:\n"
            + "\n".join(lines))


Rejections = dict[tuple[str, str, int, str], list[str]]


def convert_nodes(ctx: ImportContext, nodes: list[OnnxNode], label: str) -> Rejections:
    """Converts nodes in order; returns the rejected ones grouped by (op, domain, opset, reason)."""
    rejected: Rejections = {}
    for n in nodes:
        if any(i and i not in ctx.types for i in n.inputs) and rejected:
            continue  # reads the output of a rejected node: nothing more to learn here
        handler = _handler(n)
        try:
            if handler is None:
                raise UnsupportedOpError("Ember has no handler for it at this opset")
            handler(ctx, n)
        except UnsupportedOpError as e:
            rejected.setdefault((n.op_type, n.domain, n.opset, str(e)), []).append(n.name)
            continue
        except ShapeError as e:
            where = f"{label} (opset {n.opset})" if str(e).startswith("node ") else f"{label}: {n.label}"
            raise ShapeError(f"{where}: {e}") from None
        for o in n.outputs:
            if o and o not in ctx.types and ctx.is_used(o):
                raise ModelLoadError(f"{label}: {n.label} does not define its output {o!r}")
    return rejected


def convert_subgraph(ctx: ImportContext, graph: onnx.GraphProto, parent: OnnxNode) -> list[str]:
    """Imports the nodes of a control-flow branch inline; returns the branch's output names."""
    for t in graph.initializer:
        ctx.add_constant(t.name, tensor_to_array(t, f"initializer {t.name!r} of {parent.label}"))
    nodes = _wrap_nodes(graph, ctx.opsets)
    outputs = [o.name for o in graph.output]
    ctx.used |= {i for n in nodes for i in n.inputs if i} | set(outputs)
    ctx.reserve([o for n in nodes for o in n.outputs])
    rejected = convert_nodes(ctx, nodes, ctx.source)
    if rejected:
        raise UnsupportedOpError("its branch uses ops Ember cannot import: " + "; ".join(
            f"{op} ({', '.join(repr(x) for x in names)}: {why})"
            for (op, _, _, why), names in rejected.items()))
    return outputs
