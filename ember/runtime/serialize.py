"""JSON forms of the IR for the engine file: generic over frozen dataclasses and enums.

Attributes are encoded from their dataclass fields, so a new attrs class (or a new field) needs
no code here. Classes are named by module and qualified name, and only classes inside the
``ember`` package are ever instantiated on load. Constants are not part of this JSON: they go to
the engine's safetensors member.

>>> from ember.ops.attrs import ConvAttrs
>>> a = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
>>> decode_value(encode_value(a)) == a
True
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any, Mapping

import numpy as np

from ember.errors import EngineFileError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import TensorType

_DC, _ENUM, _ND = "__dataclass__", "__enum__", "__ndarray__"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode_value(v: Any) -> Any:
    """A JSON-able form of ``v`` (scalars, tuples, dicts, enums, dataclasses, numpy values)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, enum.Enum):
        return {_ENUM: _qualname(type(v)), "value": encode_value(v.value)}
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return {_ND: v.tolist(), "dtype": v.dtype.str, "shape": list(v.shape)}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {_DC: _qualname(type(v)),
                "fields": {f.name: encode_value(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, (list, tuple)):
        return [encode_value(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): encode_value(x) for k, x in v.items()}
    raise TypeError(f"cannot store a value of type {type(v).__name__} in an engine file")


def _resolve(ref: str, kind: type) -> type:
    module, _, qual = ref.partition(":")
    if not (module == "ember" or module.startswith("ember.")):
        raise EngineFileError(f"the engine file refers to class {ref!r} outside Ember; it was not "
                              f"written by Ember or was altered; rebuild it with `ember build`")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise EngineFileError(f"the engine file refers to {ref!r}, which this Ember does not have; "
                              f"rebuild the engine with this version of Ember") from None
    if not (isinstance(obj, type) and (issubclass(obj, kind) if kind is enum.Enum
                                       else dataclasses.is_dataclass(obj))):
        raise EngineFileError(f"the engine file refers to {ref!r}, which is not an attribute class; "
                              f"rebuild the engine with `ember build`")
    return obj


def decode_value(v: Any, in_dataclass: bool = False) -> Any:
    """Inverse of ``encode_value``; lists inside dataclasses become tuples (they are frozen)."""
    if isinstance(v, list):
        items = [decode_value(x, in_dataclass) for x in v]
        return tuple(items) if in_dataclass else items
    if not isinstance(v, dict):
        return v
    if _ENUM in v:
        return _resolve(v[_ENUM], enum.Enum)(decode_value(v["value"]))
    if _DC in v:
        cls = _resolve(v[_DC], object)
        kwargs = {k: decode_value(x, True) for k, x in v["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: x for k, x in kwargs.items() if k in init})
    if _ND in v:
        return np.array(v[_ND], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
    return {k: decode_value(x, in_dataclass) for k, x in v.items()}


def type_to_json(t: TensorType) -> dict[str, Any]:
    return {"dtype": t.dtype.value, "shape": list(t.shape)}


def type_from_json(d: Mapping[str, Any]) -> TensorType:
    return TensorType(DType(d["dtype"]), tuple(d["shape"]))


def node_to_json(n: Node) -> dict[str, Any]:
    return {"name": n.name, "op": n.op.value, "inputs": list(n.inputs), "outputs": list(n.outputs),
            "attrs": encode_value(n.attrs), "origin": list(n.origin), "rule": n.rule}


def node_from_json(d: Mapping[str, Any]) -> Node:
    try:
        op = OpType(d["op"])
    except ValueError:
        raise EngineFileError(f"the engine file has a layer of kind {d['op']!r}, which this Ember "
                              f"does not know; rebuild the engine with this version of Ember") from None
    return Node(d["name"], op, tuple(d["inputs"]), tuple(d["outputs"]), decode_value(d["attrs"]),
                tuple(d["origin"]), d.get("rule", ""))


def graph_to_json(g: Graph) -> dict[str, Any]:
    """The graph without its constants' data (``constants`` lists their names only)."""
    info = g.source_info
    return {"name": g.name, "opset": g.opset, "source": g.source, "inputs": list(g.inputs),
            "outputs": list(g.outputs), "constants": list(g.constants),
            "types": {k: type_to_json(t) for k, t in g.types.items()},
            "nodes": [node_to_json(n) for n in g.nodes],
            "source_info": {"format": info.format, "producer": info.producer, "nodes": info.nodes,
                            "opsets": dict(info.opsets), "ir_version": info.ir_version}}


def graph_from_json(d: Mapping[str, Any], constants: Mapping[str, np.ndarray]) -> Graph:
    missing = [c for c in d["constants"] if c not in constants]
    if missing:
        raise EngineFileError(f"the engine's weights lack {len(missing)} constants (first: "
                              f"{missing[0]!r}); the file is damaged; rebuild it with `ember build`")
    return Graph(
        name=d["name"], nodes=[node_from_json(n) for n in d["nodes"]], inputs=list(d["inputs"]),
        outputs=list(d["outputs"]), types={k: type_from_json(t) for k, t in d["types"].items()},
        constants={c: constants[c] for c in d["constants"]}, opset=int(d["opset"]),
        source=d.get("source", ""), source_info=SourceInfo(**d["source_info"]),
    )
