"""Rewrite rules: a pattern plus a callback that returns the replacement nodes or ``None``.

A pattern is a small tree (or DAG: a named ``Op`` used twice must match the same node)::

    conv = Op(OpType.CONV, name="conv")
    RULE = Rule("conv(x, w, b) -> relu => conv_relu(x, w, b)",
                Op(OpType.RELU, (conv,)), build=lambda m: [m.fuse(OpType.FUSED_CONV, ...)])

``apply_rules`` sweeps the graph in topological order, tries every rule whose root op matches a
node, and commits a replacement only when it is safe: every matched node's output that the
replacement does not produce again is read by matched nodes alone and is not protected (graph
outputs, ``PassContext.keep``). This is what stops a Conv whose output has a second reader from
being fused. Sweeps repeat until nothing fires, so rules compose (conv+bias, then +relu).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ember.errors import GraphError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.passes.edit import const_type, contiguous, dead_code
from ember.passes.manager import PassContext

COMMUTATIVE = frozenset({OpType.ADD, OpType.MUL, OpType.MAX, OpType.MIN, OpType.EQUAL})


class Pattern:
    """Base class of pattern elements."""


@dataclass(frozen=True, eq=False)
class Var(Pattern):
    """Any tensor (never an omitted input); ``name`` captures it, a second use must agree."""

    name: str = ""
    where: Callable[[str, View], bool] | None = None


@dataclass(frozen=True, eq=False)
class Const(Pattern):
    """A graph constant, optionally checked by ``where(value)``."""

    name: str = ""
    where: Callable[[np.ndarray], bool] | None = None


@dataclass(frozen=True, eq=False)
class Absent(Pattern):
    """An omitted optional input (``""``)."""


@dataclass(frozen=True, eq=False)
class Op(Pattern):
    """A node of one of ``op``'s types whose output ``output`` is the tensor being matched.

    ``inputs`` match the node's inputs positionally (``None``: any inputs); with
    ``extra_inputs`` the node may have more inputs than listed. Commutative ops (Add, Mul, Max,
    Min) also try their first two inputs swapped.
    """

    op: OpType | frozenset[OpType]
    inputs: tuple[Pattern, ...] | None = None
    name: str = ""
    where: Callable[[Node, View], bool] | None = None
    extra_inputs: bool = False
    output: int = 0
    absorb: bool = True  # False: the node is read, not replaced (it stays for its other readers)

    @property
    def ops(self) -> frozenset[OpType]:
        return self.op if isinstance(self.op, frozenset) else frozenset({self.op})

    @property
    def commutative(self) -> bool:
        return self.ops <= COMMUTATIVE


@dataclass(frozen=True, eq=False)
class Alt(Pattern):
    """The first of ``options`` that matches (all are tried, in order, on backtracking)."""

    options: tuple[Pattern, ...]


def alt(*options: Pattern) -> Alt:
    return Alt(tuple(options))


def optional(p: Pattern) -> Alt:
    """``p`` or an omitted input."""
    return Alt((p, Absent()))


# ---- matching ---------------------------------------------------------------------------------
@dataclass
class View:
    """Read access to the graph being rewritten (maps are cached for the whole sweep)."""

    graph: Graph
    producers: dict[str, Node]
    consumers: dict[str, list[Node]]
    index: dict[str, int]
    dead: set[str] = field(default_factory=set)

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.constants.get(name) if name else None

    def type(self, name: str) -> TensorType:
        return self.graph.type_of(name)

    def readers(self, tensor: str) -> list[Node]:
        return [n for n in self.consumers.get(tensor, []) if n.name not in self.dead]

    def producer(self, tensor: str) -> Node | None:
        n = self.producers.get(tensor)
        return None if n is None or n.name in self.dead else n


@dataclass(frozen=True)
class _Bind:
    tensors: Mapping[str, str]
    nodes: Mapping[str, Node]
    matched: tuple[Node, ...]
    read: tuple[Node, ...] = ()  # matched with absorb=False: computed again, not removed

    def with_tensor(self, name: str, t: str) -> _Bind:
        if not name:
            return self
        return _Bind({**self.tensors, name: t}, self.nodes, self.matched, self.read)

    def with_node(self, name: str, node: Node, absorb: bool = True) -> _Bind:
        nodes = {**self.nodes, name: node} if name else self.nodes
        if not absorb:
            return _Bind(self.tensors, nodes, self.matched, self.read + (node,))
        matched = self.matched if any(m.name == node.name for m in self.matched) \
            else self.matched + (node,)
        return _Bind(self.tensors, nodes, matched, self.read)


def _match(p: Pattern, t: str, b: _Bind, v: View) -> Iterator[_Bind]:
    if isinstance(p, Alt):
        for o in p.options:
            yield from _match(o, t, b, v)
    elif isinstance(p, Absent):
        if not t:
            yield b
    elif isinstance(p, (Var, Const)):
        yield from _match_leaf(p, t, b, v)
    elif isinstance(p, Op):
        yield from _match_op(p, t, b, v)
    else:
        raise TypeError(f"not a pattern: {p!r}")


def _match_leaf(p: Var | Const, t: str, b: _Bind, v: View) -> Iterator[_Bind]:
    if not t:
        return
    if p.name and p.name in b.tensors:
        if b.tensors[p.name] == t:
            yield b
        return
    if isinstance(p, Const):
        value = v.const(t)
        if value is None or (p.where is not None and not p.where(value)):
            return
    elif p.where is not None and not p.where(t, v):
        return
    yield b.with_tensor(p.name, t)


def _match_op(p: Op, t: str, b: _Bind, v: View) -> Iterator[_Bind]:
    node = v.producer(t) if t else None
    if node is None:
        return
    if p.name and p.name in b.nodes:
        if b.nodes[p.name].name == node.name and node.outputs[p.output] == t:
            yield b
        return
    if node.op not in p.ops or p.output >= len(node.outputs) or node.outputs[p.output] != t:
        return
    if p.where is not None and not p.where(node, v):
        return
    b = b.with_node(p.name, node, p.absorb)
    if p.inputs is None:
        yield b
        return
    ins = node.inputs
    if not p.extra_inputs and any(ins[len(p.inputs):]):
        return
    yield from _match_seq(p.inputs, ins, b, v)
    if p.commutative and len(ins) >= 2 and ins[0] != ins[1]:
        yield from _match_seq(p.inputs, (ins[1], ins[0]) + tuple(ins[2:]), b, v)


def _match_seq(pats: Sequence[Pattern], ts: Sequence[str], b: _Bind, v: View) -> Iterator[_Bind]:
    if not pats:
        yield b
        return
    t = ts[0] if ts else ""
    for b2 in _match(pats[0], t, b, v):
        yield from _match_seq(pats[1:], ts[1:], b2, v)


# ---- the match handed to a rule's callback ----------------------------------------------------
class Match:
    """One way a rule's pattern matched; the callback builds the replacement from it.

    ``m["x"]`` is the tensor captured as ``x`` (for an ``Op`` capture: its output);
    ``m.node("conv")`` the node; ``m.const("b")`` a captured constant's value. ``absorb`` adds
    nodes the callback found beyond the pattern; ``add_constant`` / ``add_tensor`` make fresh
    names; ``fuse`` makes the fused node with the absorbed nodes' origins and the rule's name.
    """

    def __init__(self, rule: Rule, view: View, root: Node, bind: _Bind, sweep: _Sweep,
                 ctx: PassContext | None = None) -> None:
        self.rule = rule
        #: the pass's context: a callback may read and update its records (``ctx.records``)
        self.ctx = ctx
        self.view = view
        self.root = root
        self.tensors = dict(bind.tensors)
        self.nodes = dict(bind.nodes)
        self.matched: list[Node] = list(bind.matched)
        self.read: list[Node] = list(bind.read)
        self._sweep = sweep
        self.new_constants: dict[str, np.ndarray] = {}
        self.new_types: dict[str, TensorType] = {}

    @property
    def graph(self) -> Graph:
        return self.view.graph

    def __getitem__(self, name: str) -> str:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.nodes:
            return self.nodes[name].outputs[0]
        raise KeyError(f"rule {self.rule.name!r} captured no {name!r}")

    def get(self, name: str) -> str:
        """The captured tensor ``name`` or ``""`` when that capture did not take part."""
        try:
            return self[name]
        except KeyError:
            return ""

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def has(self, name: str) -> bool:
        return name in self.tensors or name in self.nodes

    def const(self, name: str) -> np.ndarray:
        value = self.view.const(self[name])
        if value is None:
            raise KeyError(f"rule {self.rule.name!r}: capture {name!r} is not a constant")
        return value

    def type(self, tensor: str) -> TensorType:
        return self.new_types.get(tensor) or self.view.type(tensor)

    def absorb(self, *nodes: Node) -> None:
        for n in nodes:
            if all(m.name != n.name for m in self.matched):
                self.matched.append(n)

    def add_constant(self, base: str, value: np.ndarray) -> str:
        name = self._sweep.fresh(base)
        value = contiguous(value)
        self.new_constants[name] = value
        self.new_types[name] = const_type(value)
        return name

    def add_tensor(self, base: str, ttype: TensorType) -> str:
        name = self._sweep.fresh(base)
        self.new_types[name] = ttype
        return name

    def fresh_node_name(self, base: str) -> str:
        return self._sweep.fresh(base)

    def ordered(self, with_read: bool = False) -> list[Node]:
        """The matched and absorbed nodes (and with ``with_read`` the ones read but kept) in
        graph order."""
        nodes = self.matched + ([n for n in self.read if n not in self.matched] if with_read else [])
        return sorted(nodes, key=lambda n: self.view.index[n.name])

    def fuse(self, op: OpType, inputs: Sequence[str], attrs: Any = None,
             outputs: Sequence[str] | None = None, name: str = "") -> Node:
        """The fused node standing for every matched node (origins in graph order)."""
        nodes = self.ordered()
        origin: list[str] = []
        rules: list[str] = []
        for n in self.ordered(with_read=True):
            origin.extend(o for o in n.origin if o not in origin)
            rules.extend(r for r in n.rule.split(" ; ") if r and r not in rules)
        if self.rule.name not in rules:
            rules.append(self.rule.name)
        inputs = list(inputs)
        while inputs and not inputs[-1]:
            inputs.pop()
        return Node(name or nodes[0].name, op, tuple(inputs),
                    tuple(outputs if outputs is not None else self.root.outputs), attrs,
                    tuple(origin), " ; ".join(rules))


Build = Callable[[Match], list[Node] | None]


@dataclass(frozen=True)
class Rule:
    """A readable name, a pattern whose root is an ``Op``, and the callback building the
    replacement (a list of nodes producing the root's outputs) or ``None`` to decline."""

    name: str
    pattern: Op
    build: Build

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, Op):
            raise TypeError(f"rule {self.name!r}: the pattern's root must be an Op")


# ---- applying rules ---------------------------------------------------------------------------
class _Sweep:
    def __init__(self, graph: Graph) -> None:
        self.taken = set(graph.types) | {n.name for n in graph.nodes} | set(graph.constants)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def apply_rules(graph: Graph, rules: Sequence[Rule], ctx: PassContext, max_sweeps: int = 64) -> Graph:
    """Applies ``rules`` until none fires; returns the rewritten graph (unused constants pruned)."""
    by_op: dict[OpType, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.ops:
            by_op.setdefault(op, []).append(r)
    changed = False
    for _ in range(max_sweeps):
        graph, fired = _sweep(graph, by_op, ctx)
        if not fired:
            break
        changed = True
    else:
        raise GraphError(f"rewrite rules {[r.name for r in rules]} still firing after "
                         f"{max_sweeps} sweeps on graph {graph.name!r}; this is an optimizer bug")
    return dead_code(graph, ctx.protected(graph) | set(graph.inputs)) if changed else graph


def _sweep(graph: Graph, by_op: dict[OpType, list[Rule]], ctx: PassContext) -> tuple[Graph, int]:
    view = View(graph, graph.producers(), graph.consumers(),
                {n.name: i for i, n in enumerate(graph.nodes)})
    sweep = _Sweep(graph)
    protected = ctx.protected(graph)
    pos = {t: i for i, n in enumerate(graph.nodes) for t in n.outputs if t}
    dead_tensors: set[str] = set()
    inserts: dict[int, list[Node]] = {}
    constants, types = dict(graph.constants), dict(graph.types)
    fired = 0
    for node in graph.nodes:
        if node.name in view.dead:
            continue
        for rule in by_op.get(node.op, ()):
            found = _try_rule(rule, node, view, sweep, protected, pos, dead_tensors, ctx)
            if found is None:
                continue
            m, new_nodes, at = found
            removed = {n.name for n in m.matched}
            view.dead |= removed
            for n in m.matched:
                dead_tensors.update(o for o in n.outputs if o)
            inserts.setdefault(at, []).extend(new_nodes)
            for n in new_nodes:
                for o in n.outputs:
                    if o:
                        pos[o] = at
                        dead_tensors.discard(o)
            constants.update(m.new_constants)
            types.update(m.new_types)
            ctx.count(rule.name)
            fired += 1
            break
    if not fired:
        return graph, 0
    nodes: list[Node] = []
    for i, n in enumerate(graph.nodes):
        nodes.extend(inserts.get(i, ()))
        if n.name not in view.dead:
            nodes.append(n)
    return graph.copy(nodes=nodes, constants=constants, types=types), fired


def _try_rule(rule: Rule, node: Node, view: View, sweep: _Sweep, protected: set[str],
              pos: dict[str, int], dead_tensors: set[str],
              ctx: PassContext | None = None) -> tuple[Match, list[Node], int] | None:
    if rule.pattern.output >= len(node.outputs) or not node.outputs[rule.pattern.output]:
        return None
    for bind in _match(rule.pattern, node.outputs[rule.pattern.output], _Bind({}, {}, ()), view):
        m = Match(rule, view, node, bind, sweep, ctx)
        new_nodes = rule.build(m)
        if new_nodes is None:
            continue
        at = _check(m, new_nodes, view, protected, pos, dead_tensors)
        if at is not None:
            _fill_types(m, new_nodes)
            return m, new_nodes, at
    return None


def _check(m: Match, new_nodes: list[Node], view: View, protected: set[str],
           pos: dict[str, int], dead_tensors: set[str]) -> int | None:
    """The insertion index when the replacement is safe, else ``None``."""
    if any(n.name in view.dead for n in m.matched):
        return None
    removed = {n.name for n in m.matched}
    at = max(view.index[n] for n in removed)
    produced = {o for n in new_nodes for o in n.outputs if o}
    for n in m.matched:
        for o in n.outputs:
            if not o or o in produced:
                continue
            if o in protected or any(r.name not in removed for r in view.readers(o)):
                return None
    old_outputs = {o for n in m.matched for o in n.outputs if o}
    if any(o in view.producers and o not in old_outputs for o in produced):
        return None
    defined: set[str] = set(m.new_constants)
    for n in new_nodes:
        for i in n.inputs:
            if not i or i in defined or i in view.graph.constants or i in view.graph.inputs:
                continue
            if i in dead_tensors or pos.get(i, at) >= at:
                return None
        defined.update(o for o in n.outputs if o)
    return at


def _fill_types(m: Match, new_nodes: list[Node]) -> None:
    """Infers the types of new tensors the callback did not type itself."""
    from ember.ops.registry import infer_node

    for n in new_nodes:
        if all(not o or o in m.new_types or o in m.view.graph.types for o in n.outputs):
            continue
        in_types = [m.type(i) if i else None for i in n.inputs]
        consts = [m.new_constants.get(i, m.view.const(i)) if i else None for i in n.inputs]
        for o, t in zip(n.outputs, infer_node(n, in_types, consts)):
            if o and o not in m.view.graph.types:
                m.new_types[o] = t
