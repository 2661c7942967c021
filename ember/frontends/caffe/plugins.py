"""Caffe layers served by plugins (``@ember.plugin("<type>", domain="caffe")``): the layer's
parameters and blobs become the plugin node's attributes."""
from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from ember.frontends.caffe.context import CaffeContext, CaffeLayer

#: LayerParameter fields that are the layer's own parameters (every other ``*_param``).
_GENERIC = frozenset({"transform_param", "loss_param"})


def layer_attributes(layer: CaffeLayer) -> dict[str, Any]:
    """The fields of the layer's ``*_param`` messages, flattened (``"min_size"``, nested as
    ``"nms_param.top_k"``; repeated fields as tuples), and its blobs as ``blob_0``, ``blob_1``..."""
    attrs: dict[str, Any] = {}
    for descriptor, value in layer.param.ListFields():
        if descriptor.name.endswith("_param") and descriptor.name not in _GENERIC:
            fields = MessageToDict(value, preserving_proto_field_name=True)
            _flatten(fields, "", attrs)
    for i, blob in enumerate(layer.blobs or []):
        attrs[f"blob_{i}"] = blob.array
    return attrs


def _flatten(fields: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in fields.items():
        name = prefix + key
        if isinstance(value, dict):
            _flatten(value, name + ".", out)
        elif isinstance(value, list):
            out[name] = tuple(v if not isinstance(v, dict) else str(v) for v in value)
        else:
            out[name] = value


def add_plugin_layer(ctx: CaffeContext, layer: CaffeLayer, spec: Any) -> None:
    """Adds the layer through its plugin (lowered into built-in ops, or one Plugin node)."""
    from ember.frontends.plugins import add_plugin_node

    add_plugin_node(ctx, spec, layer.bottoms, layer.tops, layer_attributes(layer),
                            name=layer.name, origin=(layer.name,))
