"""Command-line arguments the tools share: the build options, input files, shape lists.

Every tool that builds an engine (``ember build``, ``ember run`` on a model, ``inspect``,
``compare``) takes the same build options, so they live here once rather than in ``ember.cli``:
``ember.cli`` only assembles the subcommand table and imports the tools, and a tool must never
import ``ember.cli`` back.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_build_options(p)
>>> config_from_args(p.parse_args(["--shapes", "x:1x3x8x8"])).shapes
{'x': (1, 3, 8, 8)}
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from ember.plan.config import BuildConfig, Profile
    from ember.runtime.engine import Engine

Shapes = dict[str, tuple[int, ...]]


def parse_shapes(items: Sequence[str] | None, flag: str = "--shapes") -> Shapes:
    """``["a:1x3x224x224,b:1x128"]`` -> ``{"a": (1, 3, 224, 224), "b": (1, 128)}``; ``flag``
    names the option in errors, so a person knows which one to fix."""
    from ember.ir.types import parse_shape

    shapes: Shapes = {}
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


def profiles_from_args(args: argparse.Namespace) -> dict[str, Profile]:
    """``--min/--opt/--max-shapes`` as ``{input: Profile(min, opt, max)}``; opt defaults to max."""
    from ember.plan.config import Profile

    lo = parse_shapes(args.min_shapes, "--min-shapes")
    mid = parse_shapes(args.opt_shapes, "--opt-shapes")
    hi = parse_shapes(args.max_shapes, "--max-shapes")
    profiles: dict[str, Profile] = {}
    for name in {**lo, **mid, **hi}:
        if name not in lo or name not in hi:
            raise InputError(f"input {name!r} needs both --min-shapes and --max-shapes for a profile "
                             f"(--opt-shapes defaults to the max)")
        profiles[name] = Profile(lo[name], mid.get(name, hi[name]), hi[name])
    return profiles


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The ``BuildConfig`` the build options of ``args`` ask for."""
    from ember.plan.config import BUILDABLE_PRECISIONS, BuildConfig, Device, Layout, Precision, to_enum

    return BuildConfig(device=to_enum(Device, args.device, "device"),
                       precision=to_enum(Precision, args.precision, "precision", BUILDABLE_PRECISIONS),
                       shapes=parse_shapes(args.shapes), profiles=profiles_from_args(args),
                       timing_cache=args.timing_cache, tactic_tuning=not args.no_tuning,
                       tune_cpu=args.tune_cpu, optimize=not args.no_optimize,
                       layout=to_enum(Layout, getattr(args, "layout", "auto"), "layout"),
                       accuracy_target=getattr(args, "accuracy_target", None))


def load_or_build(path: str, args: argparse.Namespace) -> Engine:
    """An engine from an ``.ember`` file, or built now (with the build options of ``args``) from
    any other model file: tools accept either, so a person need not build first."""
    import ember

    if Path(path).suffix.lower() == ".ember":
        return ember.load(path)
    from ember.builder.build import build

    return build(path, config_from_args(args), progress=None)


def read_inputs(items: Sequence[str]) -> dict[str, np.ndarray]:
    """``["ids=ids.npy", "more.npz"]`` -> ``{name: array}`` (the ``--input`` option)."""
    import numpy as np

    inputs: dict[str, Any] = {}
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
