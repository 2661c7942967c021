"""Command-line arguments the tools share: the build options, input files, shape lists.

Every tool that builds an engine (``ember build``, ``ember run`` on a model, ``inspect``,
``compare``, ``debug-precision``) takes the same build options (with the INT8 calibration
options), so they live here once rather than in ``ember.cli``: ``ember.cli`` only assembles the
subcommand table and imports the tools, and a tool must never import ``ember.cli`` back.

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


def add_build_options(p: argparse.ArgumentParser, precision: bool = True, calibration: bool = True) -> None:
    """The options of a build (shared by ``build``, ``run`` on a model, and other tools), with
    the INT8 calibration options; ``precision=False`` leaves ``--precision`` out and
    ``calibration=False`` the calibration options (a tool that picks the precisions itself, such
    as ``debug-precision``, adds its own)."""
    g = p.add_argument_group("build options")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="target device (default cpu)")
    if precision:
        g.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16", "int8", "fp8"), default="fp32",
                       help="compute precision (default fp32). tf32: CUDA only. fp16/bf16: CUDA, and "
                            "on CPUs with native support (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16), else "
                            "the build says so and keeps fp32. int8: convolutions and GEMMs in INT8 on "
                            "either device (CUDA needs Triton), with scales from --calib-data or "
                            "--calib-cache (a Q/DQ model brings its own). fp8: CUDA GPUs with FP8 tensor "
                            "cores (Ada, Hopper); GEMMs in e4m3 with calibrated input ranges, the rest fp16")
    g.add_argument("--shapes", action="append", metavar="NAME:DIMS,...",
                   help="fixed input shapes, e.g. input:1x3x224x224")
    for which in ("min", "opt", "max"):
        g.add_argument(f"--{which}-shapes", action="append", metavar="NAME:DIMS,...",
                       help=f"{which} shapes of a dynamic-shape profile")
    g.add_argument("--weights", metavar="FILE",
                   help="the trained weights of a model whose file holds none (Caffe: the .caffemodel "
                        "of a deploy .prototxt)")
    g.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache to read and update")
    g.add_argument("--no-tuning", action="store_true", help="keep each layer's default tactic")
    g.add_argument("--tune-cpu", action="store_true",
                   help="time every layer's tactics on the CPU (off: GEMMs and attention are timed, "
                        "convolutions keep the CPU backend's defaults)")
    g.add_argument("--no-optimize", action="store_true", help="skip the optimizer's fusion passes")
    g.add_argument("--accuracy-target", type=float, metavar="MAX_REL_ERR",
                   help="builds below fp32 (GPU half precision, CPU int8): return layers to fp32 until "
                        "the outputs' max relative error against an fp32 build is at most this (e.g. 1e-2)")
    g.add_argument("--layout", choices=("auto", "nhwc", "nchw"), default="auto",
                   help="memory format of 4-D activations (auto: channels-last, the faster on both "
                        "backends)")
    if calibration:
        add_calibration_options(p)


def add_calibration_options(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    """The INT8 calibration options: ``--calib-data``, ``--calibrator``, ``--calib-cache``,
    ``--calib-percentile`` (``BuildConfig.calibrator`` and its neighbours)."""
    from ember.plan.config import CALIBRATORS

    g = p.add_argument_group("int8 calibration")
    g.add_argument("--calib-data", metavar="PATH", required=data_required,
                   help="calibration data: an .npz file of arrays named after the model's inputs, samples "
                        "stacked along axis 0, or a folder of such files"
                        + ("" if data_required else " (not needed with a usable --calib-cache)"))
    g.add_argument("--calibrator", choices=CALIBRATORS, default="entropy",
                   help="how activation scales are chosen: entropy (KL divergence, CNNs; the default), "
                        "minmax (transformers), percentile, mse")
    g.add_argument("--calib-cache", metavar="FILE",
                   help="calibration cache (TensorRT's text format): read when it fits the model and "
                        "calibrator, written after a calibration")
    g.add_argument("--calib-percentile", type=float, default=99.99, metavar="P",
                   help="the percentile calibrator's percentile (default 99.99)")


def calibration_data_from_args(args: argparse.Namespace) -> str | None:
    """``--calib-data`` (``None`` without it); an ``InputError`` when the build is not INT8, so
    data given by mistake is not silently ignored."""
    data = getattr(args, "calib_data", None)
    if data is None:
        return None
    if getattr(args, "precision", "int8") != "int8":
        raise InputError(f"--calib-data is for INT8 builds; add --precision int8 (the build asks for "
                         f"{args.precision})")
    return str(data)


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
                       precision=to_enum(Precision, getattr(args, "precision", "fp32"), "precision",
                                         BUILDABLE_PRECISIONS),
                       shapes=parse_shapes(args.shapes), profiles=profiles_from_args(args),
                       timing_cache=args.timing_cache, tactic_tuning=not args.no_tuning,
                       tune_cpu=args.tune_cpu, optimize=not args.no_optimize,
                       layout=to_enum(Layout, getattr(args, "layout", "auto"), "layout"),
                       accuracy_target=getattr(args, "accuracy_target", None),
                       calibrator=getattr(args, "calibrator", None) or "entropy",
                       calibration_cache=getattr(args, "calib_cache", None),
                       calibration_percentile=_given(getattr(args, "calib_percentile", None), 99.99))


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def frontend_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the model's frontend from the build options: ``weights=`` for ``--weights``."""
    weights = getattr(args, "weights", None)
    return {"weights": weights} if weights else {}


def load_or_build(path: str, args: argparse.Namespace) -> Engine:
    """An engine from an ``.ember`` file, or built now (with the build options of ``args``) from
    any other model file: tools accept either, so a person need not build first."""
    import ember

    if Path(path).suffix.lower() == ".ember":
        return ember.load(path)
    from ember.builder.build import build

    return build(path, config_from_args(args), progress=None,
                 calibration_data=calibration_data_from_args(args), **frontend_options(args))


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
