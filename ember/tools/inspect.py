"""``ember inspect``: what an engine (or the engine a model would become) is made of.

Layers with their kind, input/output shapes and dtypes, tactic, precision and the rule that
made them; the model's node count against the engine's layer count; the memory plan's peak
against the sum of all intermediate tensors; the weights' size. An ``.onnx`` model is built in
memory with the default configuration (or the build options given) and nothing is written.

>>> print(inspect_text("model.ember"))       # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ember.tools.args import add_build_options, config_from_args

if TYPE_CHECKING:
    from ember.runtime.engine import Engine

HELP = "show an engine's layers, shapes, tactics, memory plan and sizes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember inspect`` (the build options apply to a model file)."""
    p.add_argument("model", help="engine file (.ember) or model file (.onnx)")
    p.add_argument("--json", action="store_true", help="print the engine's manifest as JSON")
    p.add_argument("--no-layers", action="store_true", help="print the summary without the layer table")
    p.add_argument("--device-memory", action="store_true",
                   help="CUDA engines: load the engine on the GPU, run it once on random inputs (the "
                        "profiles' opt shapes) and report the device memory it holds")
    add_build_options(p)


def load_for_inspection(path: str, args: argparse.Namespace | None = None) -> Engine:
    """The engine of ``path``: loaded without compiling (``.ember``), or built in memory."""
    from ember.runtime.engine import Engine

    if Path(path).suffix.lower() == ".ember":
        return Engine.load(path, compile=False)
    from ember.builder.build import build
    from ember.plan.config import BuildConfig

    config = config_from_args(args) if args is not None else BuildConfig()
    return build(path, config, progress=None)


def inspect_text(path: str, args: argparse.Namespace | None = None, layers: bool = True) -> str:
    """The inspection report of ``path`` as text."""
    from ember.runtime.summary import format_engine

    return format_engine(load_for_inspection(path, args).plan, layers=layers)


def inspect_json(path: str, args: argparse.Namespace | None = None) -> dict:
    """The engine's manifest (what the ``.ember`` file stores, less the weights) as a dict."""
    return _manifest(load_for_inspection(path, args))


def _manifest(engine) -> dict:
    from ember.runtime.engine_file import encode_weights, manifest_of
    from ember.runtime.summary import concat_text

    data = manifest_of(engine.plan, encode_weights(engine.plan.graph.constants))
    data["concat_elimination"] = concat_text(engine.plan)
    return data


def measure_device_memory(engine: Engine) -> dict[str, int]:
    """Device bytes a CUDA engine holds once it has run (CUDA graph captured) at its inputs'
    opt shapes: ``weights`` (the layers' prepared weights, shared by all contexts), ``graph_pool``
    (one context's activations: the captured graph's private pool), ``static_buffers`` (that
    context's input and output buffers), ``total``. Read from the context's public ``executor``
    (``Executor.memory()``), so the tool needs no knowledge of the CUDA backend's classes."""
    from ember.errors import EmberError
    from ember.runtime.example_inputs import (
        engine_input_specs,
        graph_int_ranges,
        random_inputs,
        resolve_shapes,
    )

    if engine.plan.config.device != "cuda":
        raise EmberError(f"--device-memory is for engines built for cuda; this one is for "
                         f"{engine.plan.config.device}")
    specs = engine_input_specs(engine)
    shapes = resolve_shapes(specs, dynamic="opt")
    feeds = random_inputs(specs, shapes, int_ranges=graph_int_ranges(engine.plan.graph))
    with engine.create_context() as ctx:
        ctx.infer(feeds)
        report = dict(ctx.executor.memory())
    report["total"] = report["weights"] + report["arena"] + report["graph_pool"] + report["static_buffers"]
    return report


def device_memory_text(report: dict[str, int]) -> str:
    from ember.runtime.summary import human_bytes

    arena = (f" + activation arena {human_bytes(report['arena'])} (planned "
             f"{human_bytes(report.get('arena_planned', 0))}, "
             f"{human_bytes(report.get('arena_unshared', 0))} without reuse; "
             f"{report.get('arena_copies', 0)} layers copied into place)") if report.get("arena") else ""
    return (f"  device memory (measured): {human_bytes(report['total'])} = weights "
            f"{human_bytes(report['weights'])}{arena} + graph pool of one context (library scratch, "
            f"outputs{'' if report.get('arena') else ', activations'}) {human_bytes(report['graph_pool'])} "
            f"+ input/output buffers {human_bytes(report['static_buffers'])}")


def run(args: argparse.Namespace) -> int:
    from ember.runtime.summary import format_engine

    memory = None
    if getattr(args, "device_memory", False):
        from ember.runtime.engine import Engine

        # an engine file is loaded with its device check (it will run); a model is built once
        engine = Engine.load(args.model) if Path(args.model).suffix.lower() == ".ember" else \
            load_for_inspection(args.model, args)
        memory = measure_device_memory(engine)
    else:
        engine = load_for_inspection(args.model, args)
    if args.json:
        data = _manifest(engine)
        if memory is not None:
            data["device_memory"] = memory
        print(json.dumps(data, indent=1))
    else:
        text = format_engine(engine.plan, layers=not args.no_layers)
        if memory is not None:
            head, sep, rest = text.partition("\n\n")
            text = head + "\n" + device_memory_text(memory) + sep + rest
        print(text)
    return 0
