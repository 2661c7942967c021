"""Lowering: one layer per graph node, each with its precision and its tactic.

Precision: as the pass pipeline's ``assign_precisions`` recorded (``Records.precision``:
``config.layer_precisions`` by layer name, absorbed name or op type, else ``config.precision``);
CPU builds compute in fp32 except the INT8 layers (QConv / QGemm) and, on CPUs with native bf16
(fp16), the half-precision layers ``assign_precisions`` chose; each layer records what really runs.

Tactic: the backend's candidates (``Backend.tactics``), chosen by a ``TacticSelector``; when
``config.tactic_tuning`` is on, candidates are timed on this machine (with the timing cache of
``config.timing_cache``), else the backend's first (default) candidate is kept. CPU builds time
only the backend's ``always_timed`` ops (GEMMs, attention) unless ``config.tune_cpu`` is on.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from ember.backends.base import Backend
from ember.backends.tensors import numpy_to_torch
from ember.builder.progress import BuildProgress
from ember.builder.tactics import TacticSelector, TimingCache
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.passes.precision import CPU_PRECISIONS
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.plan import Layer
from ember.plan.records import Records


def layer_precision(node: Node, records: Records, config: BuildConfig) -> Precision:
    """The precision the pipeline's ``assign_precisions`` pass chose for this layer (it applies
    ``layer_precisions`` by layer name, absorbed names and op type); non-float layers and CPU
    builds compute as ``config.precision`` / fp32."""
    if config.device is Device.CPU:  # fp32; int8 / bf16 / fp16 where the precision passes made them
        chosen = records.precision.of(node.name, Precision.FP32)
        return chosen if chosen in CPU_PRECISIONS else Precision.FP32
    return records.precision.of(node.name, config.precision)


def _candidates(backend: Backend, node: Node, graph: Graph, records: Records) -> list[str]:
    if not backend.supports(node):
        raise BuildError(f"node {node.name!r} ({node.op}, from {node.display_name}) has no "
                         f"{backend.name} kernel; build for another device or report it")
    return list(backend.tactics(node, graph, records))


def make_selector(graph: Graph, records: Records, config: BuildConfig, backend: Backend,
                  device_key: str) -> tuple[TacticSelector, TimingCache | None]:
    """The tactic selector this build uses, and its timing cache (if any)."""
    only = None
    if config.device is Device.CPU and not config.tune_cpu:
        only = backend.always_timed
    if not config.tactic_tuning or (only is not None and not any(n.op in only for n in graph.nodes)):
        return TacticSelector(records=records), None
    device = torch.device(config.device.value)
    constants = {k: numpy_to_torch(v, device) for k, v in graph.constants.items()}
    cache = TimingCache.open(config.timing_cache, device_key) if config.timing_cache else None
    timer = backend.make_timer(constants, device, records, config)
    # identical layers (a transformer's twelve) are timed once even without a cache file
    memo = cache if cache is not None else TimingCache(device_key)
    return TacticSelector(timer, memo, records, only=only, margin=backend.switch_margin), cache


def lower(graph: Graph, records: Records, config: BuildConfig, backend: Backend, device_key: str,
          progress: BuildProgress | None = None) -> tuple[list[Layer], dict[str, Any]]:
    """The plan's layers, in execution order (``layers[i]`` runs ``graph.nodes[i]``), and
    tuning facts (layers timed, timing-cache hits) for the build info."""
    selector, cache = make_selector(graph, records, config, backend, device_key)
    todo = [(node, _candidates(backend, node, graph, records), layer_precision(node, records, config),
             backend.fallback_tactics) for node in graph.nodes]
    # what timing will compile, compiled together first (CUDA: Triton's kernels, in parallel)
    ahead = selector.preparer is not None
    with progress.phase("compile kernels") if progress is not None and ahead else contextlib.nullcontext():
        selector.precompile(graph, todo)
    steps = todo if progress is None else progress.track(todo, "tactics")
    layers = []
    timed = from_cache = 0
    fell_back: dict[str, int] = {}
    for node, candidates, precision, fallbacks in steps:
        choice = selector.select(node, graph, candidates, precision, fallbacks)
        # a cached choice without a cache file is a twin layer timed earlier in this build
        from_file = choice.cached and cache is not None
        timed += bool(choice.timings) and not from_file
        from_cache += from_file
        runs = backend.effective_precision(node, choice.tactic, precision)
        if runs is not precision:
            change = f"{precision.value}->{runs.value}"
            fell_back[change] = fell_back.get(change, 0) + 1
            precision = runs
        layers.append(Layer(node.name, node.op.value, node.inputs, node.outputs, choice.tactic,
                            precision, node.origin, node.rule, choice.timings))
    if cache is not None:
        cache.save()
    info: dict[str, Any] = {"tuning": config.tactic_tuning, "layers_timed": timed, "timing_cache_hits": from_cache}
    if fell_back:  # layers whose fastest tactic computes another precision than the plan asked
        info["precision_fallbacks"] = fell_back
    return layers, info
