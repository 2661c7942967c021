"""Readable text of an engine plan: inputs, outputs, layers, memory plan, weights.

Used by ``Engine.summary()`` and ``ember inspect``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ember.ir.types import format_shape
from ember.plan.config import Precision
from ember.plan.plan import Layer, Plan


def human_bytes(n: Optional[int]) -> str:
    """``human_bytes(1536)`` -> ``'1.5 KiB'``."""
    if n is None:
        return "dynamic"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _tensor_text(plan: Plan, name: str) -> str:
    if not name:
        return "-"
    t = plan.graph.types.get(name)
    prefix = "$" if name in plan.graph.constants else ""
    return f"{prefix}{name}:{t}" if t is not None else name


def layer_row(plan: Plan, index: int, layer: Layer) -> list[str]:
    """The columns of one layer: #, name, kind, inputs, outputs, tactic, precision, rule."""
    return [str(index), " + ".join(layer.origin) or layer.name, layer.kind,
            ", ".join(_tensor_text(plan, n) for n in layer.inputs),
            ", ".join(_tensor_text(plan, n) for n in layer.outputs),
            layer.tactic or "default", layer.precision.value, layer.rule or "-"]


LAYER_HEADER = ["#", "layer", "kind", "inputs", "outputs", "tactic", "precision", "rule"]
#: The extra column of engines with quantization records: the scale of each layer's first input.
INPUT_SCALE_HEADER = "input scale"


def input_scale_text(plan: Plan, layer: Layer) -> str:
    """The quantization scale recorded for ``layer``'s first input: ``0.0235`` per tensor,
    ``per-channel(8)`` per channel, ``-`` when none is recorded."""
    rec = plan.records.quantization.get(layer.inputs[0]) if layer.inputs else None
    if rec is None:
        return "-"
    return f"per-channel({len(rec.scale)})" if rec.per_channel else f"{rec.scale[0]:.4g}"


def format_table(header: list[str], rows: list[list[str]], max_width: int = 60) -> str:
    """A plain-text table; cells longer than ``max_width`` are cut with an ellipsis."""
    cut = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cut)) if cut else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cut]
    return "\n".join(lines)


def format_engine(plan: Plan, layers: bool = True) -> str:
    """The whole engine as text."""
    g, mem = plan.graph, plan.memory
    weights = sum(int(v.nbytes) for v in g.constants.values())
    source = plan.build_info.get("source_nodes")
    source_kind = {"onnx": "ONNX nodes", "ir": "IR nodes"}.get(plan.build_info.get("source_format", ""),
                                                               "model nodes")
    lines = [f"engine {g.name!r} for {plan.config.device} ({_device_text(plan.device)}), "
             f"precision {plan.config.precision}"]
    for spec in plan.inputs:
        lines.append(f"  input  {spec.name}: {spec.dtype.value}{format_shape(spec.shape)}"
                     + ("" if spec.is_static else f"  allowed {spec.range_text()}"))
    for spec in plan.outputs:
        lines.append(f"  output {spec.name}: {spec.dtype.value}{format_shape(spec.shape)}")
    lines.append(f"  layers: {len(plan.layers)}" + (f" (from {source} {source_kind})" if source is not None else ""))
    saved = f", {mem.sum_bytes / mem.arena_bytes:.2f}x less" if mem.arena_bytes else ""
    lines.append(f"  memory plan: peak {human_bytes(mem.arena_bytes)} vs {human_bytes(mem.sum_bytes)} "
                 f"sum of intermediates{saved}; {len(mem.tensors)} tensors"
                 + ("" if all(s.is_static for s in plan.inputs) else ", sized at the profiles' max shapes")
                 + (f", {len(mem.dynamic)} dynamic (allocated at run time)" if mem.dynamic else ""))
    lines.append(f"  weights: {human_bytes(weights)} in {len(g.constants)} constants")
    if plan.config.device == "cuda":
        lines.append(f"  device memory (planned): weights {human_bytes(device_weight_bytes(plan))} at their "
                     f"layers' precisions + activations {human_bytes(_scaled_arena(plan))} per context"
                     f" (`ember inspect --device-memory` measures it)")
    lines.append(f"  {concat_text(plan)}")
    lines.append(f"  {layout_text(plan)}")
    chains = plan.build_info.get("chain_layouts")
    if chains:
        lines.append(f"  {chain_layouts_text(chains)}")
    if plan.records.quantization:
        lines.append(f"  {quantization_text(plan)}")
    if layers:
        rows = [layer_row(plan, i, layer) for i, layer in enumerate(plan.layers)]
        header = LAYER_HEADER
        if plan.records.quantization:  # engines without records print the table as before
            header = [*LAYER_HEADER, INPUT_SCALE_HEADER]
            rows = [[*row, input_scale_text(plan, layer)] for row, layer in zip(rows, plan.layers)]
        lines += ["", format_table(header, rows)]
    return "\n".join(lines)


def concat_text(plan: Plan) -> str:
    """``concat elimination: 9 of 9 Concats written in place (27 of 36 inputs)`` for this plan on
    its device (the producers of planned slices are compiled to ask their kernels)."""
    from ember.backends.concat_exec import plan_summary, report_line

    try:
        return report_line(plan_summary(plan))
    except Exception as e:  # noqa: BLE001 - the summary must print; say why the count is missing
        planned = len(plan.records.concat)
        return f"concat elimination: {planned} Concats planned; not checked here ({e})"


def layout_text(plan: Plan) -> str:
    """``layout: 91 tensors channels-last, 3 conversions (nhwc preferred)`` from the plan's
    layout record; engines without one say so."""
    layout = plan.records.layout
    if layout is None:
        return "layout: no plan (each kernel keeps its own memory format)"
    return (f"layout: {len(layout.nhwc)} tensors channels-last, "
            f"{len(layout.conversions)} conversions ({layout.preferred.value} preferred)")


def chain_layouts_text(chains: Mapping[str, Any]) -> str:
    """``chain layouts (timed at build): features/0/0.. blocked+dw (nhwc 4.30 ms, blocked 4.01 ms,
    blocked+dw 3.90 ms)``: the CPU chains' activation layouts the build chose, "+dw" where its 1x1 ->
    depthwise pairs run fused (``CPUProgram.tune``), named by first layer."""
    parts = []
    for first, entry in chains.items():
        times = ", ".join(f"{k} {float(v):.2f} ms" for k, v in dict(entry.get("ms", {})).items())
        chosen = f"{entry.get('layout')}{'+dw' if entry.get('dw') else ''}"
        parts.append(f"{first}.. {chosen}" + (f" ({times})" if times else ""))
    return "chain layouts (timed at build): " + "; ".join(parts)


def quantization_text(plan: Plan) -> str:
    """``quantization: 12 tensors (qdq), 4 per-channel`` from the plan's quantization records
    (their sources, sorted)."""
    records = plan.records.quantization.tensors.values()
    sources = ", ".join(sorted({r.source or "unknown" for r in records}))
    per_channel = sum(r.per_channel for r in records)
    return f"quantization: {len(records)} tensors ({sources}), {per_channel} per-channel"


def _device_text(fp: Mapping[str, Any]) -> str:
    if fp.get("type") == "cuda":
        return f"{fp.get('gpu')}, sm {fp.get('capability')}, CUDA {fp.get('cuda')}"
    return f"{fp.get('cpu')}, {fp.get('isa')}"


_HALF = (Precision.FP16, Precision.BF16)


def device_weight_bytes(plan: Plan) -> int:
    """Bytes of the constants on the device: float constants read only by half-precision
    layers are stored in 16 bits there."""
    precision = {layer.name: layer.precision for layer in plan.layers}
    half_only: dict[str, bool] = {}
    for node in plan.graph.nodes:
        for name in node.inputs:
            if name in plan.graph.constants:
                half = precision.get(node.name) in _HALF
                half_only[name] = half_only.get(name, True) and half
    total = 0
    for name, value in plan.graph.constants.items():
        n = int(value.nbytes)
        if half_only.get(name) and value.dtype.kind == "f" and value.dtype.itemsize == 4:
            n //= 2
        total += n
    return total


def _scaled_arena(plan: Plan) -> int:
    """The memory plan's peak at the engine's default compute precision (the plan is laid out
    with the graph's fp32 types)."""
    arena = plan.memory.arena_bytes or 0
    return arena // 2 if plan.config.precision in _HALF else arena
