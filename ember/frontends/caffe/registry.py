"""Caffe layer handlers, keyed by the layer's type string (``"Convolution"``, ``"ReLU"``).

A handler converts one layer into IR nodes through a ``CaffeContext``; handler modules are
imported from the explicit list in ``ember.frontends.caffe.layers`` (nothing is discovered by
scanning). A layer type with no handler may be served by a plugin registered with
``@ember.plugin("<type>", domain="caffe")``: ``plugin_for`` is the one place that asks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from ember.errors import UnsupportedOpError

if TYPE_CHECKING:
    from ember.frontends.caffe.context import CaffeContext, CaffeLayer

HandlerFn = Callable[["CaffeContext", "CaffeLayer"], None]

_HANDLERS: dict[str, HandlerFn] = {}

#: Layer types the importer handles itself (inputs, pass-through layers, Silence).
IMPORTER_TYPES = frozenset({"Input", "Dropout", "Split", "Silence"})

#: The plugin domain of Caffe layers (``@ember.plugin(type, domain="caffe")``).
PLUGIN_DOMAIN = "caffe"


def caffe_layer(*types: str) -> Callable[[HandlerFn], HandlerFn]:
    """Registers a handler for layers of the given type strings."""

    def deco(fn: HandlerFn) -> HandlerFn:
        for t in types:
            if t in _HANDLERS:
                raise RuntimeError(f"Caffe handler for {t!r} registered twice")
            _HANDLERS[t] = fn
        return fn

    return deco


def find_handler(layer_type: str) -> Optional[HandlerFn]:
    _load_handlers()
    return _HANDLERS.get(layer_type)


def supported_layers() -> list[str]:
    """The layer types Ember converts itself, sorted.

    >>> "Convolution" in supported_layers()
    True
    """
    _load_handlers()
    return sorted({*_HANDLERS, *IMPORTER_TYPES})


def plugin_for(layer_type: str) -> Optional[Any]:
    """The plugin (``ember.ops.plugin.PluginSpec``) serving Caffe layers of ``layer_type``, or
    None: the one place the frontend asks the plugin registry."""
    from ember.frontends.plugins import caffe_plugin

    return caffe_plugin(layer_type)


def unknown_layers_error(layers: Iterable[Any], label: str) -> Optional[UnsupportedOpError]:
    """One error listing every layer whose type neither Ember nor a plugin converts (by type,
    then name), saying how to supply one; None when every layer is covered."""
    missing: dict[str, list[str]] = {}
    for layer in layers:
        if layer.type not in IMPORTER_TYPES and find_handler(layer.type) is None and plugin_for(layer.type) is None:
            missing.setdefault(layer.type, []).append(layer.name)
    if not missing:
        return None
    lines = []
    for t, names in sorted(missing.items()):
        shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"  - {t or '(no type)'}: layer{'s' if len(names) > 1 else ''} {shown}")
    first = sorted(missing)[0] or "MyLayer"
    return UnsupportedOpError(
        f"{label} uses {len(missing)} Caffe layer type(s) Ember does not convert:\n" + "\n".join(lines)
        + f"\nSupply each as a plugin, e.g. @ember.plugin({first!r}, domain={PLUGIN_DOMAIN!r}) on its "
        f"shape function or lowering (see docs/PLUGINS.md), imported before the build; training-only "
        f"layers (data, loss, accuracy) belong in the train_val prototxt, not the deploy one. "
        f"Ember converts: {', '.join(supported_layers())}")


_loaded = False


def _load_handlers() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import ember.frontends.caffe.layers  # noqa: F401  (explicit module list)
