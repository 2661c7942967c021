"""``build(model, config) -> Engine``: import, shapes, optimize, lower, plan memory, compile.

>>> engine = build("model.onnx", BuildConfig(device="cpu"))            # doctest: +SKIP
>>> engine = build("bert.onnx", BuildConfig(profiles={                # doctest: +SKIP
...     "input_ids": ((1, 1), (1, 128), (8, 512))}))

The steps, in order:
1. import the model with its frontend (``ember.frontends.load``: ONNX, or a ``Graph``);
2. apply ``config.shapes`` and ``config.profiles`` to the input types (``ember/builder/shapes.py``)
   and re-infer every type;
3. run the pass pipeline (``ember.passes.pipeline.run_pipeline``): the optimized graph and the
   typed decision records (layout, concat, precision; ``ember.plan.records``);
4. lower to one layer per node with its precision and tactic (``ember/builder/lower.py``);
5. plan memory at the profiles' max shapes (``ember/plan/memory.py``);
6. compile the kernels, so that a build that cannot run fails here and not at first inference;
7. with ``config.accuracy_target`` (below fp32): build again with layers in fp32 until the
   outputs are that close to an fp32 build's (``ember/builder/accuracy.py``).

INT8 builds (``precision="int8"``, CPU) first build the fp32 engine and calibrate it on the
calibration data (or read the calibration cache), then build again with those scales: the
pipeline's ``quantize_layers`` makes the INT8 layers (``ember/builder/int8.py``).
"""
from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ember.backends.base import Backend
from ember.backends.devices import get_backend
from ember.builder import accuracy, int8
from ember.builder.calibration.data import CalibrationData
from ember.builder.lower import lower
from ember.builder.progress import BuildProgress
from ember.builder.shapes import apply_input_shapes, resolve_input_shapes, tensor_specs, types_at
from ember.errors import BuildError, EmberError
from ember.frontends import load as load_model
from ember.ir.graph import Graph
from ember.ir.types import TensorType
from ember.ops.verify import verify_graph as verify
from ember.passes.edit import static_dims
from ember.passes.manager import Instrument
from ember.passes.pipeline import Optimized, run_pipeline
from ember.plan.config import BuildConfig
from ember.plan.memory import plan_memory
from ember.plan.plan import Plan
from ember.plan.records import QuantizationPlan
from ember.runtime.device import device_key, fingerprint
from ember.runtime.engine import Engine


def import_model(model: Any, shapes: dict[str, tuple[int, ...]] | None = None,
                 **options: Any) -> Graph:
    """The IR graph of ``model`` through its frontend (``ember.frontends.load``); ``options`` go
    to the frontend (``example_inputs=``, ``dynamic_shapes=`` for a ``torch.nn.Module``)."""
    return load_model(model, shapes=shapes or None, **options)


def optimize(graph: Graph, config: BuildConfig,
             instruments: Sequence[Instrument] | None = None) -> Optimized:
    """Runs the pass pipeline: the optimized graph, its decision records and one record per pass
    (time, node counts, rules fired)."""
    return run_pipeline(graph, config, instruments=instruments)


def _source_node_count(graph: Graph) -> int:
    return graph.source_info.nodes or len(graph.nodes)


def _types_at_max(graph: Graph, hi: dict[str, int]) -> dict[str, TensorType]:
    try:
        return types_at(graph, hi)
    except EmberError as e:
        raise BuildError(f"the model cannot run at the profiles' max shapes ({e}); narrow the "
                         f"profiles to shapes the model supports") from None


def _types_at_min(graph: Graph, lo: dict[str, int]) -> dict[str, TensorType] | None:
    """Types at the profiles' min shapes, for the output ranges only (None if not inferable)."""
    if not lo:
        return None
    try:
        return types_at(graph, lo)
    except EmberError:
        return None


def build(model: Any, config: BuildConfig | None = None, *, progress: bool | None = None,
          backend: Backend | None = None, instruments: Sequence[Instrument] | None = None,
          accuracy_inputs: Mapping[str, np.ndarray] | None = None,
          calibration_data: CalibrationData | None = None, **frontend_options: Any) -> Engine:
    """Builds an ``Engine`` for ``config.device`` from a model file/bytes/proto or a ``Graph``.

    ``progress``: show a progress display (default: when stderr is a terminal).
    ``backend``: use this backend instead of the device's (for tests and experiments).
    ``instruments``: pass instruments for the pass pipeline (timing, dumps).
    ``accuracy_inputs``: inputs for ``config.accuracy_target`` (default: the first calibration
    batch of an INT8 build, else random ones).
    ``calibration_data``: INT8 builds: representative inputs (an iterable of ``{input name:
    array}`` batches, an ``.npz`` file of arrays named after the inputs and stacked along the
    batch axis, or a folder of such files; ``ember.builder.calibration.calibration_batches``).
    Not needed with a usable ``config.calibration_cache`` or for a Q/DQ model.
    ``frontend_options``: for the model's frontend (``ember.frontends.load``), e.g.
    ``example_inputs=(x,)`` and ``dynamic_shapes=`` for a ``torch.nn.Module``; the model is then
    imported once, here, and built from its graph.
    """
    config = config or BuildConfig()
    t0 = time.perf_counter()
    if frontend_options:
        model = import_model(model, **frontend_options)
    pristine = copy.deepcopy(model) if isinstance(model, Graph) else None  # the passes rewrite a Graph

    def fresh() -> Any:
        return copy.deepcopy(pristine) if pristine is not None else model

    quantization = None
    if int8.wanted(config):
        int8.check_device(config)
        quantization, calib_feeds = int8.calibration(fresh(), config, calibration_data, progress,
                                                     lambda m, c, p: _build_once(m, c, p, backend, instruments))
        if accuracy_inputs is None and calib_feeds is not None:
            accuracy_inputs = calib_feeds
    if not accuracy.applies(config):
        engine = _build_once(fresh(), config, progress, backend, instruments, quantization)
        if int8.wanted(config):  # the fp32 build and the calibration count too
            engine.plan.build_info["build_seconds"] = round(time.perf_counter() - t0, 4)
        return engine

    def again(cfg: BuildConfig) -> Engine:
        return _build_once(fresh(), cfg, False, backend, instruments, quantization)

    with tempfile.TemporaryDirectory(prefix="ember-accuracy-") as tmp:
        # the trials share tactic timings: only layers whose precision changed are timed again
        cfg = (config if config.timing_cache
               else replace(config, timing_cache=str(Path(tmp) / "timings.json")))
        engine = _build_once(fresh(), cfg, progress, backend, instruments, quantization)
        engine = accuracy.meet_target(engine, cfg, again, accuracy_inputs)
    engine.plan.config = replace(engine.plan.config, timing_cache=config.timing_cache)
    engine.plan.build_info["build_seconds"] = round(time.perf_counter() - t0, 4)
    return engine


def _build_once(model: Any, config: BuildConfig, progress: bool | None, backend: Backend | None,
                instruments: Sequence[Instrument] | None,
                quantization: QuantizationPlan | None = None) -> Engine:
    t0 = time.perf_counter()
    fp = fingerprint(config.device)  # fails early, with a clear sentence, without the device
    backend = backend or get_backend(config.device)
    with BuildProgress(progress) as prog:
        with prog.phase("import"):
            graph = import_model(model)
            source_nodes = _source_node_count(graph)
            resolved = resolve_input_shapes(graph, config)
            if resolved.overrides_static and not isinstance(model, Graph):
                graph = import_model(model, {k: static for k, v in resolved.shapes.items()
                                             if (static := static_dims(v)) is not None})
            graph = apply_input_shapes(graph, resolved)
        with prog.phase("optimize"):
            optimized = run_pipeline(graph, config, instruments=instruments, calibrated=quantization)
            graph, records = optimized.graph, optimized.records
            verify(graph)
        layers, tuning = lower(graph, records, config, backend, device_key(fp), prog)
        with prog.phase("memory plan"):
            lo = {s: r[0] for s, r in resolved.ranges.items()}
            hi = {s: r[1] for s, r in resolved.ranges.items() if r[1] is not None}
            hi_types = _types_at_max(graph, hi)
            lo_types = _types_at_min(graph, lo)
            memory = plan_memory(graph, hi_types)
        plan = Plan(
            graph=graph, layers=layers,
            inputs=tensor_specs(graph, graph.inputs, resolved.ranges, lo_types, hi_types),
            outputs=tensor_specs(graph, graph.outputs, resolved.ranges, lo_types, hi_types),
            memory=memory, config=config, records=records, device=fp,
            build_info={"source_format": graph.source_info.format,
                        "source_nodes": source_nodes, "source": graph.source,
                        "opset": graph.opset, "layers": len(layers), **tuning,
                        "passes": optimized.stats_json()},
        )
        engine = Engine(plan, backend)
        with prog.phase("compile"):
            program = engine.compile()
            if config.tactic_tuning:  # choices above the layers' (the CPU's chain layouts), recorded
                plan.build_info.update(program.tune(lambda: accuracy.calibration_inputs(engine)))
    plan.build_info["phases"] = {name: round(sec, 4) for name, sec in prog.times}
    plan.build_info["build_seconds"] = round(time.perf_counter() - t0, 4)
    return engine
