"""Lowering: one layer per graph node, each with its precision and its tactic.

Precision: as the pass pipeline's ``assign_precisions`` recorded in ``graph.meta["precisions"]``
(``config.layer_precisions`` by layer name, absorbed name or op type, else ``config.precision``); CPU builds compute in fp32 whatever is asked (no fast half precision
on this CPU path), and the layer records ``fp32`` so the plan says what really runs.

Tactic: the backend's candidates (``Backend.tactics``), chosen by a ``TacticSelector``; when
``config.tactic_tuning`` is on (and, for CPU builds, ``config.tune_cpu``), candidates are timed
on this machine (with the timing cache of ``config.timing_cache``), else the backend's first
(default) candidate is kept.
"""
from __future__ import annotations

from typing import Optional

from ember.backends.base import Backend
from ember.plan.config import BuildConfig
from ember.builder.progress import BuildProgress
from ember.builder.tactics import TacticSelector, TimingCache, make_kernel_timer
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.plan.plan import Layer
from ember.runtime.tensors import numpy_to_torch


def layer_precision(node: Node, graph: Graph, config: BuildConfig) -> str:
    """The precision the pipeline's ``assign_precisions`` pass chose for this layer (it applies
    ``layer_precisions`` by layer name, absorbed names and op type); non-float layers and CPU
    builds compute as ``config.precision`` / fp32."""
    if config.device == "cpu":
        return "fp32"
    return graph.meta.get("precisions", {}).get(node.name, config.precision)


def _candidates(backend: Backend, node: Node, graph: Graph) -> list[str]:
    if not backend.supports(node):
        raise BuildError(f"node {node.name!r} ({node.op}, from {node.display_name}) has no "
                         f"{backend.name} kernel; build for another device or report it")
    return list(backend.tactics(node, graph))


def make_selector(graph: Graph, config: BuildConfig, backend: Backend,
                  device_key: str) -> tuple[TacticSelector, Optional[TimingCache]]:
    """The tactic selector this build uses, and its timing cache (if any)."""
    if not config.tactic_tuning or (config.device == "cpu" and not config.tune_cpu):
        return TacticSelector(), None
    import torch

    device = torch.device(config.device)
    constants = {k: numpy_to_torch(v, device) for k, v in graph.constants.items()}
    cache = TimingCache.open(config.timing_cache, device_key) if config.timing_cache else None
    # a backend may bring its own timer (CUDA: event timing inside a graph + accuracy check)
    make_timer = getattr(backend, "make_timer", None)
    timer = make_timer(constants, device) if make_timer else make_kernel_timer(backend, constants, device)
    return TacticSelector(timer, cache), cache


def lower(graph: Graph, config: BuildConfig, backend: Backend, device_key: str,
          progress: Optional[BuildProgress] = None) -> tuple[list[Layer], dict]:
    """The plan's layers, in execution order (``layers[i]`` runs ``graph.nodes[i]``), and
    tuning facts (layers timed, timing-cache hits) for the build info."""
    selector, cache = make_selector(graph, config, backend, device_key)
    nodes = graph.nodes if progress is None else progress.track(graph.nodes, "tactics")
    layers = []
    timed = from_cache = 0
    for node in nodes:
        precision = layer_precision(node, graph, config)
        choice = selector.select(node, graph, _candidates(backend, node, graph), precision)
        timed += bool(choice.timings) and not choice.cached
        from_cache += choice.cached
        layers.append(Layer(node.name, node.op.value, node.inputs, node.outputs, choice.tactic,
                            precision, node.origin, node.rule, choice.timings))
    if cache is not None:
        cache.save()
    return layers, {"tuning": config.tactic_tuning, "layers_timed": timed, "timing_cache_hits": from_cache}
