"""``ember inspect``: what an engine (or the engine a model would become) is made of.

Layers with their kind, input/output shapes and dtypes, tactic, precision and the rule that
made them; the model's node count against the engine's layer count; the memory plan's peak
against the sum of all intermediate tensors; the weights' size. An ``.onnx`` model is built in
memory with the default configuration (or the build options given) and nothing is written.

An engine with quantization records (INT8 layers, a Q/DQ model) gets three more columns, filled
for the INT8 layers (``QConv``, ``QGemm``) and for layers that read an 8-bit tensor:
``input scale/zp`` (the first input's scale, zero point and 8-bit type, as the layer quantizes
it), ``weight scales`` (how many: one per output channel, or one per tensor) and ``output
scale/zp`` (where the layer writes an 8-bit tensor for the next INT8 layer; ``-``: it writes
float). They come from the plan's quantization records, or from the layer's own parameters
where no record names the tensor.

>>> print(inspect_text("model.ember"))       # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ember.tools.args import add_build_options, calibration_data_from_args, config_from_args, frontend_options

if TYPE_CHECKING:
    from ember.ir.graph import Node
    from ember.plan.plan import Layer, Plan
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

    if args is None:
        return build(path, BuildConfig(), progress=None)
    return build(path, config_from_args(args), progress=None, calibration_data=calibration_data_from_args(args),
                 **frontend_options(args))


def inspect_text(path: str, args: argparse.Namespace | None = None, layers: bool = True) -> str:
    """The inspection report of ``path`` as text."""
    return engine_text(load_for_inspection(path, args).plan, layers=layers)


#: The columns of engines with quantization records (after ``ember.runtime.summary.LAYER_HEADER``).
QUANT_HEADER = ["input scale/zp", "weight scales", "output scale/zp"]


def engine_text(plan: Plan, layers: bool = True) -> str:
    """``format_engine``'s text, with the INT8 columns (``QUANT_HEADER``) in the layer table of an
    engine with quantization records."""
    from ember.runtime.summary import LAYER_HEADER, format_engine, format_table, layer_row

    if not layers or not plan.records.quantization:
        return format_engine(plan, layers=layers)
    nodes = {n.name: n for n in plan.graph.nodes}
    rows = [[*layer_row(plan, i, layer), *quant_cells(plan, layer, nodes.get(layer.name))]
            for i, layer in enumerate(plan.layers)]
    return format_engine(plan, layers=False) + "\n\n" + format_table([*LAYER_HEADER, *QUANT_HEADER], rows)


def _is_8bit(plan: Plan, tensor: str) -> bool:
    t = plan.graph.types.get(tensor)
    return t is not None and t.dtype.value in ("int8", "uint8")


def _q_text(scale: float, zero_point: int, dtype: str) -> str:
    return f"{scale:.4g} / {zero_point} ({dtype})"


def quant_cells(plan: Plan, layer: Layer, node: Node | None) -> list[str]:
    """The ``QUANT_HEADER`` cells of one layer: ``["0.03097 / 128 (uint8)", "8 per-channel",
    "0.0084 / 0 (uint8)"]`` for an INT8 convolution writing 8 bits, ``-`` where nothing applies."""
    records = plan.records.quantization
    attrs = getattr(node, "attrs", None)
    quantized = layer.precision.is_quantized
    cells = ["-", "-", "-"]
    first = layer.inputs[0] if layer.inputs else ""
    if first and (quantized or _is_8bit(plan, first)):
        params = getattr(attrs, "x", None) if quantized else None
        rec = records.get(first)
        if params is not None:  # what the layer's kernel quantizes its input with
            cells[0] = _q_text(params.scale, params.zero_point, params.dtype.value)
        elif rec is not None and not rec.per_channel:
            cells[0] = _q_text(rec.scale[0], rec.zero_point[0], rec.dtype.value)
    if quantized and len(layer.inputs) > 1:
        rec = records.get(layer.inputs[1])
        w_scales = getattr(attrs, "w_scales", None)
        count = len(w_scales) if w_scales is not None else (len(rec.scale) if rec is not None else 0)
        if count:
            cells[1] = f"{count} per-channel" if count > 1 or (rec is not None and rec.per_channel) else "1 per-tensor"
    out = layer.outputs[0] if layer.outputs else ""
    if out and _is_8bit(plan, out):
        params = getattr(attrs, "out", None) if quantized else None
        rec = records.get(out)
        if params is not None:
            cells[2] = _q_text(params.scale, params.zero_point, params.dtype.value)
        elif rec is not None and not rec.per_channel:
            cells[2] = _q_text(rec.scale[0], rec.zero_point[0], rec.dtype.value)
    return cells


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
        text = engine_text(engine.plan, layers=not args.no_layers)
        if memory is not None:
            head, sep, rest = text.partition("\n\n")
            text = head + "\n" + device_memory_text(memory) + sep + rest
        print(text)
    return 0
