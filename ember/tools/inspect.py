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

HELP = "show an engine's layers, shapes, tactics, memory plan and sizes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ember.cli import add_build_options

    p.add_argument("model", help="engine file (.ember) or model file (.onnx)")
    p.add_argument("--json", action="store_true", help="print the engine's manifest as JSON")
    p.add_argument("--no-layers", action="store_true", help="print the summary without the layer table")
    add_build_options(p)


def load_for_inspection(path: str, args: argparse.Namespace | None = None):
    """The engine of ``path``: loaded without compiling (``.ember``), or built in memory."""
    from ember.runtime.engine import Engine

    if Path(path).suffix.lower() == ".ember":
        return Engine.load(path, compile=False)
    from ember.builder.build import build
    from ember.builder.config import BuildConfig
    from ember.cli import config_from_args

    config = config_from_args(args) if args is not None else BuildConfig()
    return build(path, config, progress=None)


def inspect_text(path: str, args: argparse.Namespace | None = None, layers: bool = True) -> str:
    """The inspection report of ``path`` as text."""
    from ember.runtime.summary import format_engine

    engine = load_for_inspection(path, args)
    return format_engine(engine.plan, layers=layers)


def inspect_json(path: str, args: argparse.Namespace | None = None) -> dict:
    """The engine's manifest (what the ``.ember`` file stores, less the weights) as a dict."""
    from ember.runtime.engine_file import encode_weights, manifest_of

    from ember.runtime.summary import concat_text

    engine = load_for_inspection(path, args)
    data = manifest_of(engine.plan, encode_weights(engine.plan.graph.constants))
    data["concat_elimination"] = concat_text(engine.plan)
    return data


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(inspect_json(args.model, args), indent=1))
    else:
        print(inspect_text(args.model, args, layers=not args.no_layers))
    return 0
