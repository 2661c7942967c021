"""Plugins in the frontends: finding the plugin of a custom op and adding it to a graph.

Every frontend adds a plugin's op the same way, through ``add_plugin_node``: a plugin with a
lowering writes built-in IR nodes (``BuilderLowering`` implements ``ember.ops.plugin.Lowering``
on the frontend-neutral ``GraphBuilder``); any other becomes one ``Plugin`` node, its output
types inferred by the plugin's shape function at once.

``find_plugin`` first loads Ember's own pack for a domain it serves (``BUILTIN_PACKS``, an
explicit table), so ``com.microsoft`` models import without any set-up.

>>> find_plugin("com.microsoft", "FastGelu").key
'com.microsoft::FastGelu@1'
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ember.errors import EmberError, GraphError, ShapeError, UnsupportedOpError
from ember.frontends.graph_builder import GraphBuilder
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops import plugin as registry
from ember.ops.plugin import PluginAttrs, PluginSpec

#: Ember's own packs, loaded on the first lookup of an op they may serve: (domain, op types or
#: None for the whole domain, module). ONNX Runtime registers ``LayerNormalization`` (before
#: ONNX had it, opset 17) and ``SimplifiedLayerNormalization`` in the default domain.
BUILTIN_PACKS: tuple[tuple[str, Optional[frozenset[str]], str], ...] = (
    ("com.microsoft", None, "ember.frontends.contrib_ms"),
    ("", frozenset({"LayerNormalization", "SimplifiedLayerNormalization"}), "ember.frontends.contrib_ms"),
)


def _load_pack(domain: str, op_type: str) -> None:
    for dom, ops, module in BUILTIN_PACKS:
        if dom == domain and (ops is None or op_type in ops):
            importlib.import_module(module)  # registers the pack's plugins


def find_plugin(domain: str, op_type: str, version: Optional[int] = None) -> Optional[PluginSpec]:
    """The plugin serving ``op_type`` of ``domain`` at ``version`` (highest version <= it; the
    newest when None), loading Ember's own pack for the domain first; None when there is none."""
    _load_pack(domain, op_type)
    return registry.find_plugin(domain, op_type, version)


def caffe_plugin(layer_type: str) -> Optional[PluginSpec]:
    """The plugin serving Caffe layers of ``layer_type`` (domain ``"caffe"``), or None."""
    return find_plugin(registry.CAFFE_DOMAIN, layer_type)


def missing_plugin_reason(domain: str, op_type: str, version: Optional[int]) -> str:
    """Why no plugin serves this op, and how to supply one (for unsupported-op messages)."""
    versions = registry.plugin_versions(domain, op_type)
    if versions and version is not None:
        return (f"plugin versions {versions} are registered but version {version} of domain "
                f"{domain or 'ai.onnx'} is asked for; register one with version <= {version}")
    return (f"no built-in handler and no plugin is registered; supply one with "
            f"@ember.plugin({op_type!r}, domain={domain!r}) (see docs/PLUGINS.md)")


class BuilderLowering:
    """``ember.ops.plugin.Lowering`` on a ``GraphBuilder``: a plugin's lowering adds nodes named
    after the plugin node (``<name>/<suffix>``), each standing for it (``origin``)."""

    def __init__(self, builder: GraphBuilder, spec: PluginSpec, name: str, inputs: Sequence[str],
                 outputs: Sequence[str], used: Optional[Sequence[bool]] = None,
                 origin: Sequence[str] = ()) -> None:
        self.builder = builder
        self.spec = spec
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._used = tuple(used) if used is not None else tuple(bool(o) for o in outputs)
        self._origin = tuple(origin) or (name,)
        self._count = 0

    def input(self, i: int) -> str:
        return self.inputs[i] if i < len(self.inputs) else ""

    def type(self, name: str) -> TensorType:
        return self.builder.type(name)

    def value(self, name: str) -> Optional[np.ndarray]:
        return self.builder.value(name)

    def is_used(self, i: int) -> bool:
        return i < len(self.outputs) and bool(self.outputs[i]) and self._used[i]

    def op(self, op: OpType, inputs: Sequence[str], attrs: Any = None, *,
           outputs: int | Sequence[str] = 1, suffix: str = "") -> list[str]:
        self._count += 1
        tag = suffix or f"{op.value.lower()}_{self._count}"
        if isinstance(outputs, int):
            names = [self.builder.fresh(f"{self.name}/{tag}" + (f":{i}" if i else "")) for i in range(outputs)]
        else:
            names = list(outputs)
        self.builder.add_node(op, inputs, names, attrs, name=f"{self.name}/{tag}", origin=self._origin)
        return names

    def constant(self, value: np.ndarray, what: str = "const") -> str:
        return self.builder.add_constant(self.builder.fresh(f"{self.name}/{what}"), np.asarray(value))

    def scalar(self, value: float | int | bool, dtype: DType, what: str = "scalar") -> str:
        return self.builder.add_scalar(f"{self.name}/{what}", value, dtype)

    def reject(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.spec.label}: node {self.name!r}: {reason}")


def add_plugin_node(builder: GraphBuilder, spec: PluginSpec, inputs: Sequence[str],
                    outputs: Sequence[str], attributes: Optional[Mapping[str, Any]] = None, *,
                    name: str, used: Optional[Sequence[bool]] = None,
                    origin: Sequence[str] = ()) -> Optional[Node]:
    """Adds the op ``spec`` serves: its lowering's built-in nodes, or one ``Plugin`` node
    (returned). ``outputs`` are the names to define ("" for an unused one); ``used`` says which
    outputs are read (default: the named ones). Errors name the plugin and the node:
    ``UnsupportedOpError`` for a form it cannot lower, ``ShapeError`` for shapes."""
    try:
        attrs = spec.attrs(attributes)
    except TypeError as e:
        raise UnsupportedOpError(f"{spec.label}: node {name!r}: {e}") from None
    if spec.lower is not None:
        lowering = BuilderLowering(builder, spec, name, inputs, outputs, used, origin)
        mark = len(builder.nodes)
        try:
            spec.lower(lowering, attrs)
        except EmberError:
            del builder.nodes[mark:]
            raise
        except Exception as e:  # noqa: BLE001 - a user's lowering may raise anything
            del builder.nodes[mark:]
            raise GraphError(f"{spec.label}: its lowering failed on node {name!r} "
                             f"({type(e).__name__}: {e})") from None
        for i, out in enumerate(outputs):
            if out and lowering.is_used(i) and out not in builder.types:
                del builder.nodes[mark:]
                raise GraphError(f"{spec.label}: its lowering did not define output {i} "
                                 f"({out!r}) of node {name!r}")
        return None
    return builder.add_node(OpType.PLUGIN, inputs, outputs, attrs, name=name, origin=tuple(origin))


def plugin_output_count(builder: GraphBuilder, spec: PluginSpec, inputs: Sequence[str],
                        attributes: Optional[Mapping[str, Any]], name: str) -> int:
    """How many outputs the plugin's shape function gives for these inputs (for callers that
    do not know, such as the network API)."""
    if spec.infer is None:
        raise ShapeError(f"{spec.label} only lowers; say how many outputs node {name!r} has "
                         f"(num_outputs=)")
    probe = Node(name, OpType.PLUGIN, tuple(inputs), (), spec.attrs(attributes))
    types = [builder.type(i) if i else None for i in inputs]
    return len(spec.output_types(probe, types))


__all__ = ["BUILTIN_PACKS", "BuilderLowering", "PluginAttrs", "PluginSpec", "add_plugin_node",
           "caffe_plugin", "find_plugin", "missing_plugin_reason", "plugin_output_count"]


def network_plugin(builder: GraphBuilder, op_type: str, inputs: Sequence[str],
                   attrs: Optional[Mapping[str, Any]] = None, *, domain: str = "",
                   version: Optional[int] = None, name: Optional[str] = None,
                   num_outputs: Optional[int] = None) -> list[str]:
    """The network API's plugin call (``ember.Network.plugin``): finds the plugin, adds its op
    and returns the output names; errors name the network, the plugin and the inputs."""
    spec = find_plugin(domain, op_type, version)
    if spec is None:
        raise UnsupportedOpError(f"{builder.source}: plugin({op_type!r}, domain={domain!r}"
                                 f"{'' if version is None else f', version={version}'}): "
                                 f"{missing_plugin_reason(domain, op_type, version)}")
    node_name = name or op_type.lower()
    mark = len(builder.nodes)
    try:
        count = num_outputs if num_outputs is not None else plugin_output_count(
            builder, spec, inputs, attrs, node_name)
        outs = [builder.fresh(node_name if i == 0 else f"{node_name}:{i}") for i in range(count)]
        add_plugin_node(builder, spec, inputs, outs, attrs, name=node_name, origin=(node_name,))
    except EmberError as e:
        del builder.nodes[mark:]
        shown = ", ".join(f"{i} {builder.types[i]}" for i in inputs if i in builder.types)
        raise type(e)(f"{builder.source}: plugin {op_type!r} on {shown or 'no inputs'}: {e}") from None
    return outs
