"""The ``ember`` command line: a thin layer of arguments over the Python API.

    ember build model.onnx -o model.ember [--device cpu|cuda] [--shapes name:1x3x224x224,...]
    ember run model.ember --input name=file.npy [--output out.npz]
    ember run model.ember --random [--seed N] [--shapes name:1x3x224x224]
    ember inspect model.onnx|model.ember

Adding a subcommand is one entry in ``commands()``: a module with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Every ``EmberError`` is printed as ``error: <message>`` (exit status 1),
never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

from ember.errors import EmberError, InputError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def commands() -> dict[str, tuple[str, AddArguments, Run]]:
    """Subcommand name -> (help, add_arguments, run). Register new tools here."""
    from ember.tools import bench as bench_tool
    from ember.tools import compare as compare_tool
    from ember.tools import inspect as inspect_tool
    from ember.tools import profile as profile_tool

    table: dict[str, tuple[str, AddArguments, Run]] = {
        "build": ("build an engine file from a model", add_build_command, run_build),
        "run": ("run an engine (or a model, built on the fly) on input files or random inputs",
                add_run_command, run_run),
    }
    for module in (inspect_tool, compare_tool, bench_tool, profile_tool):
        table[_name(module)] = (module.HELP, module.add_arguments, module.run)
    from ember.serve import cli as serve_cli
    table["serve"] = (serve_cli.HELP, serve_cli.add_arguments, serve_cli.run)
    return table


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]


# ---- shared build options -------------------------------------------------------------------
def parse_shapes(items: Optional[Sequence[str]], flag: str = "--shapes") -> dict[str, tuple[int, ...]]:
    """``["a:1x3x224x224,b:1x128"]`` -> ``{"a": (1, 3, 224, 224), "b": (1, 128)}``."""
    from ember.ir.types import parse_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or ():
        for part in filter(None, item.split(",")):
            name, sep, dims = part.rpartition(":")
            if not sep or not name:
                raise InputError(f"{flag} {part!r}: write name:dims, e.g. input:1x3x224x224")
            try:
                shapes[name] = parse_shape(dims)
            except ValueError as e:
                raise InputError(f"{flag} {part!r}: {e}") from None
    return shapes


def add_build_options(p: argparse.ArgumentParser) -> None:
    """The options of a build (shared by ``build``, ``run`` on a model, and other tools)."""
    g = p.add_argument_group("build options")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="target device (default cpu)")
    g.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16"), default="fp32")
    g.add_argument("--shapes", action="append", metavar="NAME:DIMS,...",
                   help="fixed input shapes, e.g. input:1x3x224x224")
    for which in ("min", "opt", "max"):
        g.add_argument(f"--{which}-shapes", action="append", metavar="NAME:DIMS,...",
                       help=f"{which} shapes of a dynamic-shape profile")
    g.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache to read and update")
    g.add_argument("--no-tuning", action="store_true", help="keep each layer's default tactic")
    g.add_argument("--tune-cpu", action="store_true",
                   help="time tactics on the CPU too (off: the CPU backend's defaults)")
    g.add_argument("--no-optimize", action="store_true", help="skip the optimizer's fusion passes")
    g.add_argument("--accuracy-target", type=float, metavar="MAX_REL_ERR",
                   help="GPU builds below fp32: keep the earliest layers in fp32 until the outputs' max "
                        "relative error against an fp32 build is at most this (e.g. 1e-2)")
    g.add_argument("--layout", choices=("auto", "nhwc", "nchw"), default="auto",
                   help="memory format of 4-D activations (auto: channels-last, the faster on both "
                        "backends)")


def _profiles(args: argparse.Namespace) -> dict[str, tuple]:
    lo = parse_shapes(args.min_shapes, "--min-shapes")
    mid = parse_shapes(args.opt_shapes, "--opt-shapes")
    hi = parse_shapes(args.max_shapes, "--max-shapes")
    profiles = {}
    for name in {**lo, **mid, **hi}:
        if name not in lo or name not in hi:
            raise InputError(f"input {name!r} needs both --min-shapes and --max-shapes for a profile "
                             f"(--opt-shapes defaults to the max)")
        profiles[name] = (lo[name], mid.get(name, hi[name]), hi[name])
    return profiles


def config_from_args(args: argparse.Namespace):
    """The ``BuildConfig`` the build options of ``args`` ask for."""
    from ember.plan.config import BuildConfig

    return BuildConfig(device=args.device, precision=args.precision, shapes=parse_shapes(args.shapes),
                       profiles=_profiles(args), timing_cache=args.timing_cache,
                       tactic_tuning=not args.no_tuning, tune_cpu=args.tune_cpu,
                       optimize=not args.no_optimize, layout=getattr(args, "layout", "auto"),
                       accuracy_target=getattr(args, "accuracy_target", None))


def load_or_build(path: str, args: argparse.Namespace):
    """An engine from an ``.ember`` file, or built now from any other model file."""
    import ember

    if Path(path).suffix.lower() == ".ember":
        return ember.load(path)
    from ember.builder.build import build

    return build(path, config_from_args(args), progress=None)


# ---- build ----------------------------------------------------------------------------------
def add_build_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx)")
    p.add_argument("-o", "--output", help="engine file to write (default: the model's name with .ember)")
    p.add_argument("--dump-passes", metavar="DIR", help="write the graph after each pass into DIR")
    add_build_options(p)


def run_build(args: argparse.Namespace) -> int:
    from ember.builder.build import build
    from ember.runtime.summary import human_bytes

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".ember")
    engine = build(args.model, config_from_args(args), progress=None,
                   instruments=_dump_instruments(args.dump_passes))
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


def _dump_instruments(directory: Optional[str]) -> Optional[list]:
    if not directory:
        return None
    from ember.passes.manager import DumpInstrument

    return [DumpInstrument(directory)]


# ---- run ------------------------------------------------------------------------------------
def add_run_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine", help="engine file (.ember), or a model file to build first")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file; or FILE.npz holding every input by name")
    p.add_argument("--output", metavar="FILE.npz", help="write the outputs here instead of printing them")
    p.add_argument("--random", action="store_true",
                   help="draw every input not given with --input at random: N(0, 1) floats, token ids "
                        "within their embedding table, masks all ones; dynamic dims from --shapes "
                        "NAME:DIMS (engine files too), else the engine profile's opt size")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the --random inputs (default 0)")
    add_build_options(p)


def read_inputs(items: Sequence[str]) -> dict:
    """``["ids=ids.npy", "more.npz"]`` -> ``{name: array}``."""
    import numpy as np

    inputs: dict = {}
    for item in items:
        name, sep, file = item.partition("=")
        try:
            if not sep:
                with np.load(item) as npz:
                    inputs.update({k: npz[k] for k in npz.files})
            else:
                inputs[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f"--input {item!r}: cannot read {file or item} ({e}); give NAME=FILE.npy "
                             f"or a FILE.npz of arrays named after the inputs") from None
    return inputs


def random_feeds(engine, given: dict, args: argparse.Namespace) -> dict:
    """Random arrays for the inputs of ``engine`` missing from ``given`` (``ember run --random``):
    shapes from ``--shapes``, from the dims they share with ``given`` arrays, else the profile's opt."""
    from ember.runtime import example_inputs as tool_inputs

    specs = tool_inputs.engine_input_specs(engine)
    shapes = parse_shapes(args.shapes)
    for name, value in given.items():
        if name in shapes and tuple(value.shape) != shapes[name]:
            raise InputError(f"input {name!r} comes from --input with shape {list(value.shape)} but --shapes "
                             f"gives {list(shapes[name])}; drop one of them")
    resolved = tool_inputs.resolve_shapes(specs, shapes, dynamic="opt",
                                          known={k: v.shape for k, v in given.items()})
    missing = [s for s in specs if s.name not in given]
    return tool_inputs.random_inputs(missing, resolved, seed=args.seed or 0,
                                     int_ranges=tool_inputs.graph_int_ranges(engine.plan.graph))


def run_run(args: argparse.Namespace) -> int:
    import numpy as np

    from ember.runtime.example_inputs import array_stats

    if args.seed is not None and not args.random:
        raise InputError("--seed only applies to random inputs; add --random")
    engine = load_or_build(args.engine, args)
    inputs = read_inputs(args.input)
    if args.random:
        drawn = random_feeds(engine, inputs, args)
        for name, value in drawn.items():
            print(f"input {name}: {value.dtype}{list(value.shape)} random (seed {args.seed or 0})")
        inputs.update(drawn)
    with engine.create_context() as ctx:
        outputs = ctx.infer(inputs)
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {len(outputs)} outputs to {args.output}")
        return 0
    for name, value in outputs.items():
        flat = value.reshape(-1)
        head = np.array2string(flat[:8], precision=5, separator=", ", max_line_width=200)
        more = " ..." if flat.size > 8 else ""
        print(f"{name}: {value.dtype}{list(value.shape)} {head}{more}")
        stats = array_stats(value)
        if stats:
            print(f"  {stats}")
    return 0


# ---- entry point ----------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Ember: build and run optimized "
                                     "inference engines from ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (help_text, add_arguments, run) in commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the ``ember`` command; returns the exit status."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EmberError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
