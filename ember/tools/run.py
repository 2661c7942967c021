"""``ember run``: an engine (or a model, built on the fly) on input files or random inputs.

    ember run model.ember --input name=file.npy [--output out.npz]
    ember run model.ember --random [--seed N] [--shapes name:1x3x224x224]

Without ``--output`` each output is printed as its dtype, shape, first values and statistics.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ember.errors import InputError
from ember.tools.args import add_build_options, load_or_build, parse_shapes, read_inputs

if TYPE_CHECKING:
    import numpy as np

HELP = "run an engine (or a model, built on the fly) on input files or random inputs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember run``."""
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


def random_feeds(engine: Any, given: dict[str, np.ndarray],
                 args: argparse.Namespace) -> dict[str, np.ndarray]:
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


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember run``."""
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
