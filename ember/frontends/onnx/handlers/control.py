"""``If`` whose condition is known at build time: the taken branch is imported inline (one known
only at run time: both branches, and a Where selects, when their outputs agree in type and in
shape up to unit dims).
``Scan`` over a sequence of build-time length: the body is imported once per step (and, for
opset 8's batched form, per batch item).

Exporters emit such Ifs for shape checks (TorchScript's ``squeeze(dim)`` on a dynamic-shape
input becomes ``If(Equal(Gather(Shape(x), d), 1))``); the condition follows from the input
shapes, so the branch can be chosen once, here. A Scan over a static length is unrolled: each
step's slices are Gathers of the scan inputs, each step's body a renamed copy of the body graph,
and the scan outputs are the steps' slices stacked (Unsqueeze + Concat).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from ember.errors import ShapeError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import ints, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ir.types import Dim
from ember.ops.attrs import AxesAttrs, AxisAttrs, ReshapeAttrs
from ember.ops.common import broadcast_shapes, norm_axis

#: The most steps a Scan is unrolled to (each step is a copy of the body in the graph).
MAX_SCAN_STEPS = 4096


@onnx_op("If", since=1)
def import_if(ctx: ImportContext, n: OnnxNode) -> None:
    from ember.frontends.onnx.importer import convert_subgraph

    cond = ctx.value(n.input(0))
    if cond is None or cond.dtype == object or cond.size != 1:
        _import_if_at_run_time(ctx, n)
        return
    taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
    branch = n.attr(taken)
    if branch is None or not hasattr(branch, "g"):
        raise reject(f"it has no {taken} graph")
    _check_outer_names(ctx, branch.g, taken)
    outputs = convert_subgraph(ctx, branch.g, n)
    if len(outputs) != len(n.outputs):
        raise reject(f"its {taken} has {len(outputs)} outputs for {len(n.outputs)} node outputs")
    for out, src in zip(n.outputs, outputs):
        if out:
            ctx.emit(n, OpType.IDENTITY, (src,), (out,), suffix=taken)


def _import_if_at_run_time(ctx: ImportContext, n: OnnxNode) -> None:
    """An If whose condition is known only at run time: both branches are imported and each
    output is ``Where(cond, then, else)``, which needs branch outputs of one type and shape."""
    from ember.frontends.onnx.importer import convert_subgraph

    why = ("its condition is only known at run time and {}; Ember runs such an If only when both "
           "branches give outputs of one type and one shape, up to unit dims (it computes both and "
           "selects). Give fixed input shapes (shapes=... / --shapes) so the condition is known at "
           "build time")
    branches = [n.attr(k) for k in ("then_branch", "else_branch")]
    if any(b is None or not hasattr(b, "g") for b in branches):
        raise reject(why.format("a branch graph is missing"))
    for key, branch in zip(("then_branch", "else_branch"), branches):
        _check_outer_names(ctx, branch.g, key)
    then_outs = convert_subgraph(ctx, branches[0].g, n)
    else_outs = convert_subgraph(ctx, branches[1].g, n)
    if not len(then_outs) == len(else_outs) == len(n.outputs):
        raise reject(why.format("its branches have different output counts"))
    for out, t, e in zip(n.outputs, then_outs, else_outs):
        tt, et = ctx.type(t), ctx.type(e)
        if tt.dtype is not et.dtype or selected_shape(tt.shape, et.shape) is None:
            raise reject(why.format(f"its branches give {tt} and {et}"))
        if tt.shape != et.shape and out in ctx.graph_outputs:
            raise reject(why.format(f"its branches give {tt} and {et} for the model output {out!r}, "
                                    f"whose rank would then depend on the condition"))
    cond = ctx.temp(n, "cond_scalar")
    shape = ctx.add_constant(ctx.temp(n, "scalar_shape"), np.zeros((0,), dtype=np.int64))
    ctx.emit(n, OpType.RESHAPE, (n.input(0), shape), (cond,), ReshapeAttrs(), suffix="cond")
    for i, (out, t, e) in enumerate(zip(n.outputs, then_outs, else_outs)):
        if out:
            ctx.emit(n, OpType.WHERE, (cond, t, e), (out,), suffix=f"select{i}")


def selected_shape(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> Optional[tuple[Dim, ...]]:
    """The shape a run-time If's output takes when its branches give shapes ``a`` and ``b``:
    their broadcast when it holds exactly the elements of either (they differ only in unit dims,
    ``[]`` and ``[1]``, ``[n]`` and ``[1, n]``), so the selected data is the taken branch's,
    viewed with the extra unit dims; None when no such shape exists.

    >>> selected_shape((), (1,)), selected_shape((3,), (1, 3)), selected_shape((1, 3), (3, 1))
    ((1,), (1, 3), None)
    """
    if a == b:
        return a
    try:
        joined = broadcast_shapes(a, b)
    except ShapeError:
        return None

    def core(shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        return tuple(d for d in shape if d != 1)

    return joined if core(joined) == core(a) == core(b) else None


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    """The names a graph (nested subgraphs included) reads from its enclosing scopes, in order."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    found: list[str] = []
    for node in graph.node:
        reads = list(node.input)
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in subgraphs:
                reads += _outer_names(g)
        found += [x for x in reads if x and x not in defined and x not in found]
        defined.update(o for o in node.output if o)
    return found


def _check_outer_names(ctx: ImportContext, graph: onnx.GraphProto, which: str) -> None:
    """A branch reads outer tensors without listing them as the If's inputs, so the importer
    cannot see that one of them is missing (made by a node it rejected): refuse the If here,
    naming the tensor, instead of failing inside the branch."""
    missing = [x for x in _outer_names(graph) if x not in ctx.types]
    if missing:
        raise reject(f"its {which} reads {missing[0]!r}, which was not imported: the node that makes "
                     f"it was refused (see the other refused nodes) or the model does not define it")


def _renamed_body(body: onnx.GraphProto, prefix: str) -> onnx.GraphProto:
    """A copy of ``body`` whose own tensors and nodes carry ``prefix`` (names from the outer
    scope stay as they are)."""
    for node in body.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise reject(f"its body has a nested subgraph ({node.op_type} {node.name!r})")
    own = {i.name for i in body.input} | {t.name for t in body.initializer} | \
        {o for node in body.node for o in node.output if o}
    copy = onnx.GraphProto()
    copy.CopyFrom(body)

    def rename(name: str) -> str:
        return prefix + name if name in own else name

    for vi in list(copy.input) + list(copy.output) + list(copy.value_info):
        vi.name = rename(vi.name)
    for t in copy.initializer:
        t.name = rename(t.name)
    for i, node in enumerate(copy.node):
        node.name = f"{prefix}{node.name or f'node{i}'}"
        node.input[:] = [rename(x) if x else x for x in node.input]
        node.output[:] = [rename(x) if x else x for x in node.output]
    return copy


@onnx_op("Scan", since=9)
def import_scan(ctx: ImportContext, n: OnnxNode) -> None:
    """Scan 9+ (states + scan inputs along any axis, either direction), unrolled over the scan
    inputs' build-time length."""
    body_attr = n.attr("body")
    if body_attr is None or not hasattr(body_attr, "g"):
        raise reject("it has no body graph")
    body: onnx.GraphProto = body_attr.g
    m = int(n.attr("num_scan_inputs"))
    inputs = list(n.inputs)
    n_state = len(inputs) - m
    n_scan_out = len(body.output) - n_state
    if n_state < 0 or n_scan_out < 0 or len(body.input) != len(inputs):
        raise reject(f"its body has {len(body.input)} inputs and {len(body.output)} outputs for "
                     f"{n_state} states and {m} scan inputs")

    def per(name: str, count: int) -> tuple[int, ...]:
        given: Optional[tuple[int, ...]] = ints(n, name)
        if given is None:
            return (0,) * count
        if len(given) != count:
            raise reject(f"{name} has {len(given)} entries for {count}")
        return given

    in_axes, in_dirs = per("scan_input_axes", m), per("scan_input_directions", m)
    out_axes, out_dirs = per("scan_output_axes", n_scan_out), per("scan_output_directions", n_scan_out)
    lengths = set()
    scans = inputs[n_state:]
    axes = []
    for name, axis in zip(scans, in_axes):
        t = ctx.type(name)
        axes.append(norm_axis(axis, t.rank, "Scan scan_input_axes"))
        lengths.add(t.shape[axes[-1]])
    if len(lengths) != 1 or not all(isinstance(d, int) for d in lengths):
        raise reject(f"its scan inputs' lengths {sorted(map(str, lengths))} are not one build-time "
                     f"length; Ember unrolls Scan over a fixed length. Give fixed input shapes")
    steps = int(next(iter(lengths)))
    if not 0 < steps <= MAX_SCAN_STEPS:
        raise reject(f"it scans {steps} steps; Ember unrolls 1 to {MAX_SCAN_STEPS}")

    states, slices = _unroll(ctx, n, body, inputs[:n_state], list(zip(scans, axes, in_dirs)), steps, "")
    for out, src in zip(n.outputs[:n_state], states):
        if out:
            ctx.emit(n, OpType.IDENTITY, (src,), (out,), suffix="final_state")
    for k, out in enumerate(n.outputs[n_state:n_state + n_scan_out]):
        if out:
            rank = ctx.type(slices[k][0]).rank + 1
            _stack(ctx, n, slices[k][::-1] if out_dirs[k] else slices[k],
                   norm_axis(out_axes[k], rank, "Scan scan_output_axes"), out, f"out{k}")


def _unroll(ctx: ImportContext, n: OnnxNode, body: onnx.GraphProto, states: list[str],
            scans: list[tuple[str, int, int]], steps: int, tag: str) -> tuple[list[str], list[list[str]]]:
    """The body imported once per step: (final states, each scan output's per-step slices)."""
    from ember.frontends.onnx.importer import convert_subgraph

    n_state = len(states)
    slices: list[list[str]] = [[] for _ in range(len(body.output) - n_state)]
    for step in range(steps):
        where = f"{tag}step{step}"
        copy = _renamed_body(body, f"{n.name}/{where}/")
        for j, (src, axis, rev) in enumerate(scans):
            index = ctx.add_constant(ctx.temp(n, f"{where}_index{j}"),
                                     np.array(steps - 1 - step if rev else step, dtype=np.int64))
            ctx.emit(n, OpType.GATHER, (src, index), (copy.input[n_state + j].name,), AxisAttrs(axis=axis),
                     suffix=f"{where}/slice{j}")
        for j, src in enumerate(states):
            ctx.emit(n, OpType.IDENTITY, (src,), (copy.input[j].name,), suffix=f"{where}/state{j}")
        outs = convert_subgraph(ctx, copy, n)
        states = outs[:n_state]
        for k, o in enumerate(outs[n_state:]):
            slices[k].append(o)
    return states, slices


def _stack(ctx: ImportContext, n: OnnxNode, parts: list[str], axis: int, out: str, tag: str) -> None:
    """``parts`` stacked along a new ``axis`` into ``out`` (Unsqueeze each, then Concat)."""
    expanded = []
    for i, src in enumerate(parts):
        part = ctx.temp(n, f"{tag}_{i}")
        ctx.emit(n, OpType.UNSQUEEZE, (src,), (part,), AxesAttrs(axes=(axis,)), suffix=f"{tag}/unsqueeze{i}")
        expanded.append(part)
    ctx.emit(n, OpType.CONCAT, expanded, (out,), AxisAttrs(axis=axis), suffix=f"{tag}/concat")


def _batch_item(ctx: ImportContext, n: OnnxNode, src: str, b: int, what: str) -> str:
    """``src[b]`` (a Gather on axis 0)."""
    index = ctx.add_constant(ctx.temp(n, f"b{b}_{what}_index"), np.array(b, dtype=np.int64))
    name = ctx.temp(n, f"b{b}_{what}")
    ctx.emit(n, OpType.GATHER, (src, index), (name,), AxisAttrs(axis=0), suffix=f"b{b}/{what}")
    return name


@onnx_op("Scan", since=8)
def import_scan8(ctx: ImportContext, n: OnnxNode) -> None:
    """Scan 8: a leading batch axis on states and scan inputs (scanned along axis 1), the body
    run per batch item; unrolled over batch and steps, both build-time sizes."""
    body_attr = n.attr("body")
    if body_attr is None or not hasattr(body_attr, "g"):
        raise reject("it has no body graph")
    body: onnx.GraphProto = body_attr.g
    m = int(n.attr("num_scan_inputs"))
    lens, inputs = n.input(0), list(n.inputs[1:])
    n_state = len(inputs) - m
    n_scan_out = len(body.output) - n_state
    if n_state < 0 or n_scan_out < 0 or len(body.input) != len(inputs):
        raise reject(f"its body has {len(body.input)} inputs and {len(body.output)} outputs for "
                     f"{n_state} states and {m} scan inputs")
    dirs = ints(n, "directions") or (0,) * m
    shapes = [ctx.type(x).shape for x in inputs[n_state:]]
    if not shapes or any(len(s) < 2 for s in shapes):
        raise reject("its scan inputs need a batch and a sequence axis")
    batches, lengths = {s[0] for s in shapes}, {s[1] for s in shapes}
    if len(batches) != 1 or len(lengths) != 1 or not all(isinstance(d, int) for d in batches | lengths):
        raise reject("its batch and sequence sizes are not build-time constants; Ember unrolls Scan. "
                     "Give fixed input shapes")
    batch, steps = int(next(iter(batches))), int(next(iter(lengths)))
    if lens:
        given = ctx.value(lens)
        if given is None or np.any(np.asarray(given) != steps):
            raise reject("sequence_lens other than the full length (or not constant) is not supported")
    if not 0 < steps * batch <= MAX_SCAN_STEPS:
        raise reject(f"it scans {batch} x {steps} steps; Ember unrolls 1 to {MAX_SCAN_STEPS}")
    finals: list[list[str]] = [[] for _ in range(n_state)]
    outs: list[list[str]] = [[] for _ in range(n_scan_out)]
    for b in range(batch):
        states = [_batch_item(ctx, n, s, b, f"state{j}") for j, s in enumerate(inputs[:n_state])]
        scans = [(_batch_item(ctx, n, s, b, f"scan{j}"), 0, int(d))
                 for j, (s, d) in enumerate(zip(inputs[n_state:], dirs))]
        states, slices = _unroll(ctx, n, body, states, scans, steps, f"b{b}/")
        for j, s in enumerate(states):
            finals[j].append(s)
        for k, parts in enumerate(slices):
            per = ctx.temp(n, f"b{b}_out{k}")
            _stack(ctx, n, parts, 0, per, f"b{b}_out{k}")
            outs[k].append(per)
    for j, out in enumerate(n.outputs[:n_state]):
        if out:
            _stack(ctx, n, finals[j], 0, out, f"final{j}")
    for k, out in enumerate(n.outputs[n_state:n_state + n_scan_out]):
        if out:
            _stack(ctx, n, outs[k], 0, out, f"out{k}")
