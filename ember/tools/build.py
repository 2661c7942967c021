"""``ember build``: a model file in, an engine file out.

    ember build model.onnx -o model.ember [--device cpu|cuda] [--shapes name:1x3x224x224,...]

Prints one line on what was built (layers from how many source nodes, memory plan, weights, build
time) and, with ``--accuracy-target``, which layers were kept in higher precision.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ember.tools.args import add_build_options, config_from_args

HELP = "build an engine file from a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember build``."""
    p.add_argument("model", help="model file (.onnx)")
    p.add_argument("-o", "--output", help="engine file to write (default: the model's name with .ember)")
    p.add_argument("--dump-passes", metavar="DIR", help="write the graph after each pass into DIR")
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember build``."""
    from ember.builder.build import build
    from ember.runtime.summary import human_bytes

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".ember")
    engine = build(args.model, config_from_args(args), progress=None,
                   instruments=dump_instruments(args.dump_passes))
    engine.save(out)
    plan = engine.plan
    info = plan.build_info
    source = {"onnx": "ONNX nodes"}.get(info.get("source_format", ""), "model nodes")
    print(f"built {out}: {len(plan.layers)} layers from {info.get('source_nodes')} {source}, "
          f"memory plan {human_bytes(plan.memory.arena_bytes)} (vs {human_bytes(plan.memory.sum_bytes)} "
          f"unplanned), weights {human_bytes(engine.weights_bytes)}, in {info.get('build_seconds', 0):.2f} s")
    if "accuracy" in info:
        from ember.builder.accuracy import describe

        print(describe(info["accuracy"]))
    return 0


def dump_instruments(directory: str | None) -> list[Any] | None:
    """Pass instruments for ``--dump-passes DIR`` (``None`` without it: the default pipeline)."""
    if not directory:
        return None
    from ember.passes.manager import DumpInstrument

    return [DumpInstrument(directory)]
