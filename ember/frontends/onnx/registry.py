"""ONNX op handlers, keyed by (domain, op_type) with ``since_version`` ranges.

A handler converts one ONNX node into IR nodes through an ``ImportContext``. Each handler
declares the opset version its form starts at; for a model at opset ``v`` the handler with the
highest ``since <= v`` wins (as in ``onnx.reference``'s ``load_op``). Handler modules are
imported from the explicit list in ``ember.frontends.onnx.handlers``; nothing is discovered
by scanning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ember.frontends.onnx.context import ImportContext, OnnxNode

HandlerFn = Callable[["ImportContext", "OnnxNode"], None]

#: Opsets of the default domain this frontend accepts (see ``ember.frontends.onnx`` docs): every
#: opset of the installed ``onnx`` up to its newest; an op version Ember does not implement has no
#: handler and is refused by name.
MIN_OPSET = 1
MAX_OPSET = 28
#: Spellings of the default ONNX domain.
DEFAULT_DOMAINS = ("", "ai.onnx")


def canonical_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


@dataclass(frozen=True)
class Handler:
    domain: str
    op_type: str
    since: int
    fn: HandlerFn


_HANDLERS: dict[tuple[str, str], list[Handler]] = {}


def onnx_op(op_type: str, since: int = 1, domain: str = "") -> Callable[[HandlerFn], HandlerFn]:
    """Registers a handler for ``op_type`` from opset ``since`` on (until the next handler)."""
    key = (canonical_domain(domain), op_type)

    def deco(fn: HandlerFn) -> HandlerFn:
        versions = _HANDLERS.setdefault(key, [])
        if any(h.since == since for h in versions):
            raise RuntimeError(f"ONNX handler {op_type} since {since} registered twice")
        versions.append(Handler(key[0], op_type, since, fn))
        versions.sort(key=lambda h: h.since)
        return fn

    return deco


def find_handler(domain: str, op_type: str, opset: int) -> Optional[Handler]:
    """The handler for a node of ``op_type`` in a model at ``opset``, or None."""
    _load_handlers()
    best = None
    for h in _HANDLERS.get((canonical_domain(domain), op_type), []):
        if h.since <= opset:
            best = h
    return best


def supported_ops() -> list[tuple[str, str, int, int]]:
    """``(domain, op_type, min_opset, max_opset)`` for each handler, within the accepted range.

    >>> ("", "Conv", 1, 28) in supported_ops()
    True
    """
    _load_handlers()
    rows = []
    for (domain, op_type), versions in sorted(_HANDLERS.items()):
        for i, h in enumerate(versions):
            hi = min(versions[i + 1].since - 1, MAX_OPSET) if i + 1 < len(versions) else MAX_OPSET
            lo = max(h.since, MIN_OPSET)
            if lo <= hi:
                rows.append((domain, op_type, lo, hi))
    return rows


def supported_op_names() -> list[str]:
    _load_handlers()
    return sorted({op for (_, op) in _HANDLERS})


_loaded = False


def _load_handlers() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import ember.frontends.onnx.handlers  # noqa: F401  (explicit module list)
