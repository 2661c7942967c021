"""The ``ember`` command line: a thin layer of arguments over the Python API.

    ember build model.onnx -o model.ember [--device cpu|cuda] [--shapes name:1x3x224x224,...]
    ember run model.ember --input name=file.npy [--output out.npz]
    ember run model.ember --random [--seed N] [--shapes name:1x3x224x224]
    ember inspect model.onnx|model.ember
    ember build model.onnx -o model.ember --precision int8 --calib-data calib.npz [--calib-cache model.calib]
    ember debug-precision model.onnx --calib-data calib.npz [--top 20] [--json errors.json]

This module only assembles the subcommand table and reports errors; every subcommand is a module
of ``ember.tools`` (or ``ember.serve.cli``) with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, so adding one is one entry in ``commands()``. The tools never import this
module (the layering rule: ``cli`` sits above ``tools`` and ``serve``). Every ``EmberError`` is
printed as ``error: <message>`` (exit status 1), never as a traceback, and every warning Ember
raises (a calibration cache not used, data not needed) as ``warning: <message>``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from ember.errors import EmberError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def commands() -> dict[str, tuple[str, AddArguments, Run]]:
    """Subcommand name -> (help, add_arguments, run). Register new tools here."""
    from ember.serve import cli as serve_cli
    from ember.tools import bench as bench_tool
    from ember.tools import build as build_tool
    from ember.tools import compare as compare_tool
    from ember.tools import debug_precision as debug_precision_tool
    from ember.tools import inspect as inspect_tool
    from ember.tools import profile as profile_tool
    from ember.tools import quantize as quantize_tool
    from ember.tools import run as run_tool

    table: dict[str, tuple[str, AddArguments, Run]] = {}
    for module in (build_tool, run_tool, inspect_tool, compare_tool, bench_tool, profile_tool,
                   quantize_tool, debug_precision_tool):
        table[_name(module).replace("_", "-")] = (module.HELP, module.add_arguments, module.run)
    # `ember serve --ray` (ember.integrations.ray.cli): the same command on Ray Serve
    from ember.integrations.ray import cli as ray_cli

    table["serve"] = (serve_cli.HELP, ray_cli.with_ray_arguments(serve_cli.add_arguments),
                      ray_cli.with_ray_run(serve_cli.run))
    return table


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]


def make_parser() -> argparse.ArgumentParser:
    """The ``ember`` parser with one subparser per entry of ``commands()``."""
    parser = argparse.ArgumentParser(prog="ember", description="Ember: build and run optimized "
                                     "inference engines from ONNX models.")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of this process's Ember engines and PyTorch peers (PyTorch's "
                             "intra-op pool, which oneDNN shares). Default: PyTorch's, one per core. On a "
                             "machine whose cores other processes keep busy, fewer threads than cores avoid "
                             "OpenMP threads waiting on a descheduled one (a 2-thread MobileNetV2 ran 6.7x "
                             "slower beside one busy process)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (help_text, add_arguments, run) in commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``ember`` command; returns the exit status."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: give 1 or more threads")
        import torch

        torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
                print(f"warning: {message}", file=sys.stderr) if _from_ember(category, filename)
                else shown(message, category, filename, lineno, file, line))
            return int(args._run(args) or 0)
    except EmberError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


_EMBER_DIR = Path(__file__).resolve().parent


def _from_ember(category: type[Warning], filename: str) -> bool:
    """Whether a warning is Ember's own (its class or the code that raised it is in ``ember``):
    those are printed as one line for a person, others as Python prints them."""
    if category.__module__.split(".")[0] == "ember":
        return True
    try:
        return Path(filename).resolve().is_relative_to(_EMBER_DIR)
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
