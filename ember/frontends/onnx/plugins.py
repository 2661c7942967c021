"""ONNX nodes served by plugins: ops with no built-in handler at the model's opset whose
(domain, op type) a registered plugin serves at the domain's opset (``ember.ops.plugin``).

The node's attributes become the plugin's (``PluginAttrs``); graph-valued attributes cannot be
and are refused. The plugin lowers the node into built-in IR ops, or it becomes a ``Plugin``
node (``ember.frontends.plugins.add_plugin_node``).
"""
from __future__ import annotations

from typing import Optional

import onnx

from ember.errors import GraphError, UnsupportedOpError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.registry import HandlerFn
from ember.frontends.plugins import add_plugin_node, find_plugin, missing_plugin_reason
from ember.ops.plugin import PluginSpec


def plugin_handler(n: OnnxNode) -> Optional[HandlerFn]:
    """The handler of a plugin serving ``n`` at its domain's opset, or None."""
    spec = find_plugin(n.domain, n.op_type, n.opset)
    if spec is None:
        return None

    def handler(ctx: ImportContext, node: OnnxNode) -> None:
        import_plugin_node(ctx, node, spec)

    return handler


def missing_reason(domain: str, op_type: str, opset: int) -> str:
    """What to say about an op of a custom domain nothing serves ("" for the default domain,
    whose ops are listed against Ember's supported-op table)."""
    return missing_plugin_reason(domain, op_type, opset) if domain else ""


def import_plugin_node(ctx: ImportContext, n: OnnxNode, spec: PluginSpec) -> None:
    for name, value in n.attrs.items():
        if isinstance(value, onnx.AttributeProto):
            raise UnsupportedOpError(f"{spec.label}: attribute {name!r} is a graph or type, which a "
                                     f"plugin cannot take")
    outputs = list(n.outputs)
    while outputs and not outputs[-1]:
        outputs.pop()
    try:
        add_plugin_node(ctx, spec, n.inputs, outputs, n.attrs, name=n.name,
                        used=[ctx.is_used(o) for o in outputs], origin=(n.name,))
    except UnsupportedOpError:
        raise
    except GraphError as e:
        if type(e) is GraphError:  # ShapeErrors are labelled by the importer
            raise GraphError(f"{ctx.source}: {n.label}: {e}") from None
        raise
