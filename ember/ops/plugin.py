"""The op side of plugins: custom ops' attributes, shape/type inference and lowerings, by
(domain, op type, version).

A *plugin* supplies an op Ember does not have. Users declare one with ``@ember.plugin`` (see
``ember.backends.plugins``, which adds its kernels, and ``docs/PLUGINS.md``); this module keeps
the part every layer above ``ops`` may ask about: a ``PluginSpec`` per (domain, op type,
version) with

- ``infer(inputs, attrs) -> list[TensorType]``: output types from input types (``None`` for an
  omitted optional input) and the node's ``PluginAttrs``; or
- ``lower(lowering, attrs)``: the op rewritten into built-in IR ops through a ``Lowering`` (the
  frontends' graph builder), so Ember's own fusions and kernels apply and no kernel is needed.

A plugin without a lowering becomes one IR node of kind ``OpType.PLUGIN`` whose attrs
(``PluginAttrs``) name the plugin and carry the source's attributes; its shape inference is the
plugin's ``infer`` (registered below as the op family of ``OpType.PLUGIN``) and its kernels are
the plugin's (``ember.backends.plugins``). Errors a plugin's shape function makes (an exception,
a wrong result) are ``ShapeError``s naming the plugin, its module, the node and the input types.

Versions work like ONNX opsets: a node of a domain at version ``v`` (an ONNX model's
``opset_import`` for that domain) is served by the plugin of the highest version ``<= v``.

Frontends' entry points (``ember.frontends.plugins`` implements the graph side):

- ONNX: a node with no built-in handler at its opset is looked up with
  ``ember.frontends.plugins.find_plugin(domain, op_type, version)``; ``com.microsoft`` contrib
  ops (and ONNX Runtime's default-domain ``LayerNormalization``/``SimplifiedLayerNormalization``
  of opsets before 17) are served by Ember's own pack, loaded on first lookup
  (``ember.frontends.plugins.BUILTIN_PACKS``);
- the network API: ``ember.Network.plugin(op_type, inputs, attrs, domain=...)``;
- **Caffe** (``ember.frontends.caffe``): for a layer type the frontend does not know, call
  ``caffe_plugin(layer_type)`` (here); a ``PluginSpec`` back means a plugin serves it (``None``: list
  the layer as unsupported and say how to supply one: ``@ember.plugin("<type>",
  domain="caffe")``). Then add the node with
  ``ember.frontends.plugins.add_plugin_node(builder, spec, inputs, outputs, attributes,
  name=layer_name)`` (``attributes``: a flat dict of the layer's parameters, e.g. the fields of
  its ``*_param`` message; numbers, strings, tuples and numpy arrays such as its blobs), which
  lowers the layer or adds a ``Plugin`` node and infers its output types.

>>> find_plugin("com.example", "NoSuchOp") is None
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np

from ember.errors import EmberError, GraphError, ShapeError, UnsupportedOpError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.common import Consts, Types
from ember.ops.registry import register_op

#: The domain Caffe layer plugins are registered under.
CAFFE_DOMAIN = "caffe"

#: Attribute values a plugin node may carry (what an engine file can store).
_SCALARS = (bool, int, float, str)


def _canonical_value(name: str, value: Any) -> Any:
    """An attribute value in the form ``PluginAttrs`` stores: scalars, tuples of them, arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, _SCALARS) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return np.array(value, order="C")
    if isinstance(value, (list, tuple)):
        return tuple(_canonical_value(name, v) for v in value)
    raise TypeError(f"attribute {name!r} has a value of type {type(value).__name__}; plugin "
                    f"attributes are numbers, strings, booleans, tuples of them or numpy arrays")


def _key_of(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tuple):
        return tuple(_key_of(v) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class PluginAttrs:
    """A plugin node's attributes: which plugin serves it and the source's attribute values.

    Read like a mapping (``attrs["alpha"]``, ``attrs.get("alpha", 1.0)``, ``"alpha" in attrs``);
    values are numbers, strings, booleans, tuples or numpy arrays.

    >>> a = PluginAttrs.make("Relu6", "com.example", 1, {"limit": 6.0})
    >>> a.get("limit"), a.key
    (6.0, 'com.example::Relu6@1')
    """

    op_type: str
    domain: str = ""
    version: int = 1
    attributes: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(op_type: str, domain: str, version: int,
             attributes: Optional[Mapping[str, Any]] = None) -> PluginAttrs:
        items = tuple(sorted((str(k), _canonical_value(str(k), v)) for k, v in (attributes or {}).items()))
        return PluginAttrs(op_type, domain, int(version), items)

    @property
    def key(self) -> str:
        return plugin_key(self.domain, self.op_type, self.version)

    def __getitem__(self, name: str) -> Any:
        for k, v in self.attributes:
            if k == name:
                return v
        raise KeyError(f"plugin node ({self.key}) has no attribute {name!r}; it has "
                       f"{', '.join(k for k, _ in self.attributes) or 'none'}")

    def get(self, name: str, default: Any = None) -> Any:
        for k, v in self.attributes:
            if k == name:
                return v
        return default

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.attributes)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.attributes)

    def items(self) -> tuple[tuple[str, Any], ...]:
        return self.attributes

    def as_dict(self) -> dict[str, Any]:
        return dict(self.attributes)

    def _key(self) -> tuple[Any, ...]:
        return (self.op_type, self.domain, self.version, _key_of(self.attributes))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PluginAttrs) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def plugin_key(domain: str, op_type: str, version: int) -> str:
    """The printable identity of a plugin: ``"com.example::Relu6@1"`` (``"Relu6@1"`` when the
    domain is the default one)."""
    return f"{domain}::{op_type}@{version}" if domain else f"{op_type}@{version}"


class Lowering(Protocol):
    """What a plugin's ``lower`` writes the op with: built-in IR nodes, added to the graph under
    construction (the frontends' ``GraphBuilder``; ``ember.frontends.plugins`` implements it).

    ``inputs``: the node's input tensor names ("" for an omitted one); ``outputs``: the names the
    lowering must define ("" for an output nobody reads); ``name``: the node's name.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def input(self, i: int) -> str:
        """Input ``i``'s name, "" when omitted or past the end."""

    def type(self, name: str) -> TensorType:
        """The type of a tensor defined so far."""

    def value(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant (or a build-time shape value), else None."""

    def is_used(self, i: int) -> bool:
        """Whether output ``i`` is read by anything (else it need not be computed)."""

    def op(self, op: OpType, inputs: Sequence[str], attrs: Any = None, *,
           outputs: int | Sequence[str] = 1, suffix: str = "") -> list[str]:
        """Adds a node of ``op`` (types inferred at once); returns its output names: fresh ones,
        or ``outputs`` when names are given (write the plugin's results into ``self.outputs``)."""

    def constant(self, value: np.ndarray, what: str = "const") -> str:
        """A new constant tensor; returns its name."""

    def scalar(self, value: float | int | bool, dtype: DType, what: str = "scalar") -> str:
        """A new rank-0 constant of ``dtype``."""

    def reject(self, reason: str) -> UnsupportedOpError:
        """The error to raise for a form of the op Ember cannot lower (names the node)."""


InferFn = Callable[[Sequence[Optional[TensorType]], PluginAttrs], Sequence[TensorType]]
LowerFn = Callable[[Lowering, PluginAttrs], None]


@dataclass(frozen=True)
class PluginSpec:
    """One registered plugin: (domain, op type, version), the module that declared it, and its
    shape function and/or lowering. ``tactics`` lists its kernels' tactic names by device (filled
    by ``ember.backends.plugins``; a lowering needs none)."""

    op_type: str
    domain: str
    version: int
    module: str
    infer: Optional[InferFn] = None
    lower: Optional[LowerFn] = None
    doc: str = ""
    tactics: dict[str, list[str]] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return plugin_key(self.domain, self.op_type, self.version)

    @property
    def label(self) -> str:
        return f"plugin {self.key} (module {self.module})"

    def attrs(self, attributes: Optional[Mapping[str, Any]] = None) -> PluginAttrs:
        return PluginAttrs.make(self.op_type, self.domain, self.version, attributes)

    def output_types(self, node: Node, in_types: Sequence[Optional[TensorType]]) -> list[TensorType]:
        """The plugin's shape function on ``in_types``, checked; a ``ShapeError`` naming the
        plugin, its module, the node and the input types when it fails or returns nonsense."""
        if self.infer is None:
            raise ShapeError(f"{self.label} has no shape function (it only lowers); node "
                             f"{node.name!r} cannot be a Plugin node")
        shown = ", ".join(str(t) if t is not None else "-" for t in in_types)
        where = f"{self.label}: the shape function, for node {node.name!r} on inputs ({shown})"
        try:
            out = self.infer(list(in_types), node.attrs)
        except EmberError as e:
            raise ShapeError(f"{where}, raised: {e}") from None
        except Exception as e:  # noqa: BLE001 - a user's function may raise anything
            raise ShapeError(f"{where}, raised {type(e).__name__}: {e}. Fix the plugin's infer "
                             f"or the model") from None
        return _checked_types(out, len(node.outputs), where)


def _checked_types(out: Any, n_outputs: int, where: str) -> list[TensorType]:
    if isinstance(out, TensorType):
        out = [out]
    if not isinstance(out, (list, tuple)):
        raise ShapeError(f"{where}, returned {type(out).__name__}; it must return a list of "
                         f"ember.ir.TensorType, one per output")
    if len(out) < n_outputs:
        raise ShapeError(f"{where}, returned {len(out)} type(s) for {n_outputs} output(s)")
    for i, t in enumerate(out):
        if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
            raise ShapeError(f"{where}, returned {t!r} for output {i}; expected an "
                             f"ember.ir.TensorType(DType, shape)")
        for d in t.shape:
            bad = isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0)
            if bad or d == "":
                raise ShapeError(f"{where}, returned the shape {list(t.shape)} for output {i}; "
                                 f"dims are ints >= 0 or symbolic names (str)")
    return list(out)


_PLUGINS: dict[tuple[str, str], list[PluginSpec]] = {}


def register_plugin(spec: PluginSpec) -> PluginSpec:
    """Adds ``spec``; a second plugin of the same (domain, op type, version) from another module
    is refused (the same module registering it again, a reload, replaces it)."""
    if spec.infer is None and spec.lower is None:
        raise GraphError(f"{spec.label} has neither a shape function (infer) nor a lowering "
                         f"(lower); give it one")
    versions = _PLUGINS.setdefault((spec.domain, spec.op_type), [])
    for i, old in enumerate(versions):
        if old.version == spec.version:
            if old.module != spec.module:
                raise GraphError(f"{spec.label} is already registered by module {old.module}; "
                                 f"give the new one another version or domain")
            versions[i] = spec
            return spec
    versions.append(spec)
    versions.sort(key=lambda s: s.version)
    return spec


def unregister_plugin(domain: str, op_type: str, version: Optional[int] = None) -> None:
    """Removes a plugin (every version when ``version`` is None); tests use it."""
    versions = _PLUGINS.get((domain, op_type), [])
    _PLUGINS[(domain, op_type)] = [s for s in versions if version is not None and s.version != version]


def find_plugin(domain: str, op_type: str, version: Optional[int] = None) -> Optional[PluginSpec]:
    """The plugin serving ``op_type`` of ``domain`` at ``version`` (the highest version <= it;
    the newest when None), or None. (Frontends call ``ember.frontends.plugins.find_plugin``,
    which first loads Ember's own pack for the domain.)"""
    best = None
    for spec in _PLUGINS.get((domain, op_type), []):
        if version is None or spec.version <= version:
            best = spec
    return best


def plugin_versions(domain: str, op_type: str) -> list[int]:
    """The registered versions of a plugin (for error messages)."""
    return [s.version for s in _PLUGINS.get((domain, op_type), [])]


def get_plugin(domain: str, op_type: str, version: int) -> Optional[PluginSpec]:
    """The plugin of exactly this version, or None."""
    return next((s for s in _PLUGINS.get((domain, op_type), []) if s.version == version), None)


def require_plugin(attrs: PluginAttrs, node_name: str = "") -> PluginSpec:
    """The plugin a Plugin node names; ``GraphError`` saying what to import when it is missing."""
    spec = get_plugin(attrs.domain, attrs.op_type, attrs.version)
    if spec is None:
        where = f"node {node_name!r} needs " if node_name else "needs "
        raise GraphError(f"{where}plugin {attrs.key}, which is not registered in this process; "
                         f"import the module that declares it (its @ember.plugin) first")
    return spec


def caffe_plugin(layer_type: str) -> Optional[PluginSpec]:
    """The plugin serving Caffe layers of ``layer_type`` (``@ember.plugin(layer_type,
    domain="caffe")``), or None. For ``ember.frontends.caffe``: see the module docstring."""
    return find_plugin(CAFFE_DOMAIN, layer_type)


def registered_plugins() -> list[PluginSpec]:
    """Every registered plugin, by domain, op type and version."""
    return [s for key in sorted(_PLUGINS) for s in _PLUGINS[key]]


@dataclass(frozen=True)
class PluginRecord:
    """What an engine needs of one plugin: its identity and the module that declares it."""

    op_type: str
    domain: str
    version: int
    module: str

    @property
    def key(self) -> str:
        return plugin_key(self.domain, self.op_type, self.version)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.op_type, "domain": self.domain, "version": self.version, "module": self.module}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> PluginRecord:
        return PluginRecord(str(d["name"]), str(d["domain"]), int(d["version"]), str(d["module"]))


def plugins_of(graph: Graph) -> list[PluginRecord]:
    """The plugins the Plugin nodes of ``graph`` need, once each, in first-use order."""
    seen: dict[str, PluginRecord] = {}
    for node in graph.nodes:
        if node.op is OpType.PLUGIN and isinstance(node.attrs, PluginAttrs):
            a = node.attrs
            if a.key not in seen:
                spec = require_plugin(a, node.name)
                seen[a.key] = PluginRecord(a.op_type, a.domain, a.version, spec.module)
    return list(seen.values())


@register_op(OpType.PLUGIN, attrs=PluginAttrs)
def infer_plugin(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """A Plugin node's output types: its plugin's shape function, checked."""
    a: PluginAttrs = node.attrs
    spec = require_plugin(a, node.name)
    return spec.output_types(node, in_types)
