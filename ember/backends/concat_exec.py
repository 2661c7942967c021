"""Carrying out the concat-elimination plan (``Records.concat``, a ``ConcatPlan``) in a program.

For every planned Concat this decides, once, when the program is made:

- which in-place inputs are *written* into their slice by their producer: the producer's kernel
  has the ``WriteInto`` capability (``ember.backends.base``) and accepts a view of the slice's
  shape, strides and dtype; every other input of that Concat is *copied* into its slice when the
  Concat's turn comes (only that slice: the Concat layer itself does nothing else);
- before which step the Concat's buffer is allocated (the first writing producer's step).

A Concat none of whose inputs can be written in place keeps its ordinary kernel (``torch.cat``):
"elimination" through a temporary and a copy would only move the same copy elsewhere.

At run time a writing producer gets the view of its slice; if its kernel declines that view
after all (``write_into`` returns ``False``, e.g. the input arrived in another memory format),
the kernel runs normally and its result is copied into the slice, so the answer is always the
same. The counts of both cases are reported through the ``stats`` dictionary of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

import torch

from ember.backends.base import Kernel, WriteInto, write_into_of, write_or_copy
from ember.backends.layout import CHANNELS_LAST, format_in
from ember.backends.tensors import compute_dtype, torch_dtype
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.plan import Plan
from ember.plan.records import ConcatEntry, Records


@dataclass(frozen=True)
class Buffer:
    """A Concat's output buffer: allocated once, before the first writing producer runs."""

    concat: str
    output: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    channels_last: Optional[bool]  # True/False: fixed by the layout plan; None: follow the data

    def allocate(self, device: torch.device, sample: Optional[torch.Tensor]) -> torch.Tensor:
        cl = self.channels_last
        if cl is None:
            cl = bool(sample is not None and sample.dim() == len(self.shape) and _is_channels_last(sample))
        fmt = _format(len(self.shape)) if cl else torch.contiguous_format
        return torch.empty(self.shape, dtype=self.dtype, device=device, memory_format=fmt)

    def meta_view(self, axis: int, start: int, length: int) -> torch.Tensor:
        """A meta-device view of one slice in the statically known layout (for ``accepts``)."""
        fmt = _format(len(self.shape)) if self.channels_last else torch.contiguous_format
        buf = torch.empty(self.shape, dtype=self.dtype, device="meta", memory_format=fmt)
        return buf.narrow(axis, start, length)


@dataclass(frozen=True)
class Target:
    """Where a producer step writes its output: a slice of a Concat's buffer."""

    output: str          # the Concat's output tensor (its buffer)
    axis: int
    start: int
    length: int
    write: WriteInto


@dataclass(frozen=True)
class Finish:
    """The Concat step of an eliminated Concat: copy the inputs that were not written in place."""

    output: str
    axis: int
    copies: tuple[tuple[str, int, int], ...]  # (tensor, start, length)


@dataclass
class ConcatExec:
    """The decisions for one program, by step index (see module docstring)."""

    allocs: dict[int, list[Buffer]] = field(default_factory=dict)
    targets: dict[int, Target] = field(default_factory=dict)
    finishes: dict[int, Finish] = field(default_factory=dict)
    report: dict[str, dict[str, Any]] = field(default_factory=dict)
    concats: int = 0  # Concat nodes in the graph

    def special_steps(self) -> set[int]:
        return set(self.allocs) | set(self.targets) | set(self.finishes)

    def summary(self) -> dict[str, int]:
        """``concats`` in the graph, ``planned`` and ``eliminated`` ones, ``inputs`` of the
        eliminated ones and how many of them are ``written`` in place."""
        return {"concats": self.concats, "planned": len(self.report),
                "eliminated": sum(1 for r in self.report.values() if r["eliminated"]),
                "inputs": sum(r["inputs"] for r in self.report.values() if r["eliminated"]),
                "written": sum(len(r["written"]) for r in self.report.values())}


def _format(rank: int) -> torch.memory_format:
    return torch.channels_last if rank == 4 else torch.channels_last_3d


def _is_channels_last(t: torch.Tensor) -> bool:
    if t.dim() not in (4, 5) or t.is_contiguous():
        return False
    return t.is_contiguous(memory_format=_format(t.dim()))


def _layout_hint(graph: Graph, records: Records, name: str, rank: int, static_layout: bool) -> Optional[bool]:
    if rank == 4 and format_in(graph, records.layout, name) is CHANNELS_LAST:
        return True
    return False if static_layout or rank not in (4, 5) else None


def plan_concat_exec(graph: Graph, records: Records, kernels: Sequence[Optional[Kernel]], *,
                     static_layout: bool, skip: Sequence[bool] = (),
                     float_dtype: Optional[Mapping[str, torch.dtype]] = None) -> ConcatExec:
    """The decisions for ``graph`` (with its ``records``) whose node ``i`` runs ``kernels[i]``.

    ``static_layout``: the backend stores tensors as ``records.layout`` says (CUDA), so a
    buffer's memory format is known now; otherwise (CPU) a buffer takes the memory format of the
    data its first producer reads. ``skip[i]``: node ``i`` may not take part (e.g. it runs on the
    host). ``float_dtype[concat name]``: the dtype a floating-point Concat computes in, where it
    is not the graph's (CUDA's reduced precisions).
    """
    result = ConcatExec(concats=sum(1 for n in graph.nodes if n.op is OpType.CONCAT))
    if not records.concat:
        return result
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
    for cname, entry in records.concat.concats.items():
        ci = index.get(cname)
        if ci is None or (skip and skip[ci]):
            continue
        buf = _planned_buffer(graph, records, cname, entry, graph.nodes[ci], static_layout, float_dtype)
        if buf is None:
            continue
        axis = entry.axis
        written: dict[int, Target] = {}
        copies = []
        for s in entry.slices:
            start, length = s.start, s.length
            pi = producer.get(s.tensor)
            w = write_into_of(kernels[pi]) if (s.in_place and pi is not None and pi < ci
                                              and not (skip and skip[pi])) else None
            if (w is not None and pi is not None and pi not in written
                    and w.accepts(_static_view(buf, axis, start, length))):
                written[pi] = Target(buf.output, axis, start, length, w)
            else:
                copies.append((s.tensor, start, length))
        result.report[cname] = {"output": buf.output, "inputs": len(entry.slices),
                                "written": [graph.nodes[i].outputs[0] for i in sorted(written)],
                                "eliminated": bool(written)}
        if not written:
            continue
        result.allocs.setdefault(min(written), []).append(buf)
        result.targets.update(written)
        result.finishes[ci] = Finish(buf.output, axis, tuple(copies))
    return result


def _planned_buffer(graph: Graph, records: Records, cname: str, entry: ConcatEntry, node: Node,
                    static_layout: bool, float_dtype: Optional[Mapping[str, torch.dtype]]) -> Optional[Buffer]:
    """The buffer of planned Concat ``node`` (``entry`` its plan), or ``None`` where the plan no
    longer matches the graph (the graph changed after planning: that Concat is left alone)."""
    out_t = graph.types.get(entry.output)
    if out_t is None or not out_t.is_static:
        return None
    if node.outputs[0] != entry.output or [i for i in node.inputs if i] != [s.tensor for s in entry.slices]:
        return None
    shape = tuple(int(d) for d in out_t.shape)
    dtype = torch_dtype(out_t.dtype)
    if float_dtype and dtype.is_floating_point and cname in float_dtype:
        dtype = float_dtype[cname]
    return Buffer(cname, entry.output, shape, dtype,
                  _layout_hint(graph, records, entry.output, len(shape), static_layout))


@dataclass(frozen=True)
class PlannedSlice:
    """Where an in-place Concat input lives: ``buffer.narrow(axis, start, length)``."""

    buffer: Buffer
    axis: int
    start: int
    length: int

    def key(self) -> list:
        """What the slice's view depends on (buffer shape and format, position), for keys."""
        return [list(self.buffer.shape), self.axis, self.start, self.length, self.buffer.channels_last]

    def with_dtype(self, dtype: torch.dtype) -> PlannedSlice:
        return replace(self, buffer=replace(self.buffer, dtype=dtype))

    def view(self, device: torch.device, sample: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A fresh buffer's view of this slice, laid out as a program allocates it."""
        return self.buffer.allocate(device, sample).narrow(self.axis, self.start, self.length)


def planned_slice(graph: Graph, records: Records, tensor: str, *,
                  static_layout: bool = True) -> Optional[PlannedSlice]:
    """The slice of a planned Concat's buffer that ``tensor`` is to be written into in place
    (``records.concat``, ``in_place``), with the buffer as ``plan_concat_exec`` allocates it (the
    graph's dtype: see ``with_dtype``); ``None`` for any other tensor. Tactic timing uses it to
    time a producer as it will run: writing into that view, or computing and copying into it."""
    for cname, entry in records.concat.concats.items():
        for s in entry.slices:
            if s.tensor != tensor or not s.in_place:
                continue
            node = next((n for n in graph.nodes if n.name == cname), None)
            buf = None if node is None else _planned_buffer(graph, records, cname, entry, node,
                                                            static_layout, None)
            if buf is None:
                return None
            return PlannedSlice(buf, entry.axis, s.start, s.length)
    return None


def _static_view(buf: Buffer, axis: int, start: int, length: int) -> torch.Tensor:
    if buf.channels_last is None:  # format known only at run time: ask about the plain layout
        return Buffer(buf.concat, buf.output, buf.shape, buf.dtype, False).meta_view(axis, start, length)
    return buf.meta_view(axis, start, length)


def produce_into(target: Target, kernel: Kernel, args: Sequence[Optional[torch.Tensor]],
                 env: Mapping[str, Any], stats: Optional[dict]) -> torch.Tensor:
    """Runs a writing producer into its slice; returns the slice (the producer's output value)."""
    view = env[target.output].narrow(target.axis, target.start, target.length)
    written = write_or_copy(kernel, args, view, target.write)
    if stats is not None:
        key = "written" if written else "declined"
        stats[key] = stats.get(key, 0) + 1
    return view


def finish(f: Finish, env: Mapping[str, Any], stats: Optional[dict]) -> torch.Tensor:
    """The Concat step: copies the inputs not written in place; returns the buffer."""
    buf = env[f.output]
    for name, start, length in f.copies:
        buf.narrow(f.axis, start, length).copy_(env[name])
    if stats is not None:
        stats["copied"] = stats.get("copied", 0) + len(f.copies)
        stats["concats"] = stats.get("concats", 0) + 1
    return buf


def first_tensor(args: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() >= 4:
            return a
    return None


def report_line(summary: Mapping[str, int]) -> str:
    """``concat elimination: 9 of 9 Concats written in place (27 of 36 inputs)``."""
    total = summary.get("concats", summary.get("planned", 0))
    if not total:
        return "concat elimination: no Concat"
    line = (f"concat elimination: {summary['eliminated']} of {total} Concats written in place "
            f"({summary['written']} of {summary['inputs']} inputs)")
    if summary.get("planned", 0) > summary["eliminated"]:
        line += (f"; {summary['planned'] - summary['eliminated']} planned Concats kept as copies "
                 f"(no producer kernel writes into its slice)")
    return line


def plan_summary(plan: Plan) -> dict[str, int]:
    """The concat-elimination counts of an engine plan without building its program: compiles
    only the producers of the planned in-place slices (on the plan's device)."""
    from ember.backends.base import CompileContext
    from ember.backends.devices import get_backend
    from ember.backends.tensors import numpy_to_torch

    graph, records = plan.graph, plan.records
    concats = sum(1 for n in graph.nodes if n.op is OpType.CONCAT)
    entries = records.concat.concats
    if not entries:
        return {"concats": concats, "planned": 0, "eliminated": 0, "inputs": 0, "written": 0}
    device_type = plan.config.device
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the plan is for CUDA and this machine has no GPU; the kernels' "
                           "capabilities are known on the device only")
    device = torch.device(device_type)
    wanted = {s.tensor for e in entries.values() for s in e.slices if s.in_place}
    backend = get_backend(device_type)
    kernels: list[Optional[Kernel]] = []
    for node, layer in zip(graph.nodes, plan.layers):
        if not any(o in wanted for o in node.outputs):
            kernels.append(None)
            continue
        consts = {n: numpy_to_torch(graph.constants[n], device) for n in node.inputs if n in graph.constants}
        kernels.append(backend.compile_node(node, CompileContext(graph, consts, device, layer.tactic,
                                                                 layer.precision, records, plan.config)))
    float_dtype = None
    if device_type == "cuda":
        float_dtype = {lay.name: compute_dtype(lay.precision) for lay in plan.layers if lay.kind == "Concat"}
    return plan_concat_exec(graph, records, kernels, static_layout=device_type == "cuda",
                            float_dtype=float_dtype).summary()
