"""``ember build``: a model file in, an engine file out.

    ember build model.onnx -o model.ember [--device cpu|cuda] [--shapes name:1x3x224x224,...]
    ember build model.onnx -o model.ember --precision int8 --calib-data calib.npz
                [--calibrator entropy|minmax|percentile|mse] [--calib-cache model.calib]
                [--calib-percentile 99.99]
    ember build model_qdq.onnx -o model.ember       # a Q/DQ model: its layers run in INT8 as written

Prints one line on what was built (layers from how many source nodes, memory plan, weights, build
time), for an engine with INT8 layers one line on them (how many, where the scales came from,
the cache), and, with ``--accuracy-target``, which layers were kept in higher precision. The
engine file is written only once the build has succeeded.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ember.tools.args import add_build_options, calibration_data_from_args, config_from_args, frontend_options

HELP = "build an engine file from a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember build``."""
    p.add_argument("model", help="model file (.onnx; a Caffe deploy .prototxt with --weights)")
    p.add_argument("-o", "--output", help="engine file to write (default: the model's name with .ember)")
    p.add_argument("--dump-passes", metavar="DIR", help="write the graph after each pass into DIR")
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember build``."""
    from ember.builder.build import build
    from ember.runtime.summary import human_bytes

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".ember")
    config = config_from_args(args)
    data = calibration_data_from_args(args)
    cache_before = _stamp(config.calibration_cache)
    engine = build(args.model, config, progress=None, instruments=dump_instruments(args.dump_passes),
                   calibration_data=data, **frontend_options(args))
    save_engine(engine, out)
    plan = engine.plan
    info = plan.build_info
    source = {"onnx": "ONNX nodes", "caffe": "Caffe layers"}.get(info.get("source_format", ""), "model nodes")
    print(f"built {out}: {len(plan.layers)} layers from {info.get('source_nodes')} {source}, "
          f"memory plan {human_bytes(plan.memory.arena_bytes)} (vs {human_bytes(plan.memory.sum_bytes)} "
          f"unplanned), weights {human_bytes(engine.weights_bytes)}, in {info.get('build_seconds', 0):.2f} s")
    if "accuracy" in info:
        from ember.builder.accuracy import describe

        print(describe(info["accuracy"]))
    line = quantized_text(engine, config.calibration_cache, cache_before)
    if line:
        print(line)
    return 0


def save_engine(engine: Any, out: Path) -> None:
    """Writes ``engine`` to ``out`` (atomically: ``save_plan`` writes a temporary file and renames
    it); a failed write is an ``EngineFileError``, not a traceback."""
    from ember.errors import EngineFileError

    try:
        engine.save(out)
    except OSError as e:
        raise EngineFileError(f"cannot write {out}: {e}") from None


def _stamp(path: str | None) -> tuple[int, int] | None:
    """(modification time, size) of a file, ``None`` when there is none."""
    try:
        st = Path(path).stat() if path else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size) if st else None


def quantized_text(engine: Any, cache: str | None = None, cache_before: tuple[int, int] | None = None) -> str:
    """``int8: 2 of 5 layers; scales of 6 tensors (calibration:entropy), 2 weights per-channel;
    calibration cache model.calib written`` for an engine with INT8 or FP8 layers (``read`` where
    the cache file is as it was before the build: ``cache_before``), and how many layers planned
    quantized run fp16 because their fp16 tactic was faster; ``""`` for other engines."""
    plan = engine.plan
    quantized = [layer for layer in plan.layers if layer.precision.is_quantized]
    fell_back = {k: n for k, n in plan.build_info.get("precision_fallbacks", {}).items()
                 if k.split("->")[0] in ("int8", "fp8")}
    asked = str(plan.config.precision)
    if not quantized:
        if asked == "int8" and not fell_back:
            return "int8: no layer runs in int8 (convolutions and GEMMs with constant weights can); the engine is fp32"
        if asked == "fp8" and not fell_back:
            return ("fp8: no layer runs in fp8 (GEMMs and MatMuls with a constant weight, K and N multiples of 16, "
                    "and a calibrated input can); the engine is fp16")
        if not fell_back:
            return ""
    records = list(plan.records.quantization.tensors.values())
    activations = sorted({r.source or "unknown" for r in records if not r.per_channel})
    per_channel = sum(r.per_channel for r in records)
    kinds = sorted({str(layer.precision) for layer in quantized}) or [asked]
    counts = ", ".join(f"{sum(str(la.precision) == k for la in quantized)}" for k in kinds)
    text = (f"{'/'.join(kinds)}: {counts} of {len(plan.layers)} layers; scales of {len(records)} tensors "
            f"({', '.join(activations) or 'none'}), {per_channel} weights per-channel")
    for change, n in fell_back.items():
        src, dst = change.split("->")
        text += f"; {n} layers planned {src} run {dst} (their {dst} tactic was faster)"
    if cache and Path(cache).is_file() and not any(r.source == "qdq" for r in records):
        text += f"; calibration cache {cache} {'read' if _stamp(cache) == cache_before else 'written'}"
    return text


def dump_instruments(directory: str | None) -> list[Any] | None:
    """Pass instruments for ``--dump-passes DIR`` (``None`` without it: the default pipeline)."""
    if not directory:
        return None
    from ember.passes.manager import DumpInstrument

    return [DumpInstrument(directory)]
