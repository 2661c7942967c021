"""``ember debug-precision``: which INT8 layers lose the accuracy, worst first.

    ember debug-precision model.onnx --calib-data calib.npz [--calibrator entropy|minmax|percentile|mse]
                          [--batches N] [--top K] [--json errors.json] [--shapes ...]

Builds the fp32 and the INT8 CPU engine of the model (the same configuration otherwise; the INT8
one calibrated on ``--calib-data``, or from ``--calib-cache``), then, on the first ``N`` batches
of the calibration data:

- each INT8 layer's own error (``ember.builder.int8.layer_errors``: the layer run in INT8 on the
  fp32 engine's inputs of that layer, against the fp32 engine's output): relative RMS error,
  max relative error, cosine, printed worst first;
- the whole INT8 engine against the fp32 engine: max relative error (``max|e| / max|ref|``) and
  cosine of each output.

This is what Polygraphy's ``debug precision`` does by hand. The layers at the top of the table
are the ones to keep in fp32 (``BuildConfig.layer_precisions``), or what ``--accuracy-target``
returns to fp32 first. ``--json`` writes every layer and output.

>>> report = debug_precision("model.onnx", "calib.npz", BuildConfig(device="cpu"))  # doctest: +SKIP
>>> report.layers[0].layer                                                          # doctest: +SKIP
'conv1'
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.errors import InputError
from ember.tools.args import add_build_options, add_calibration_options, config_from_args

if TYPE_CHECKING:
    from ember.builder.int8 import LayerError
    from ember.plan.config import BuildConfig

HELP = "rank a model's INT8 layers by the error each adds against fp32 (per-layer precision debugging)"

#: Calibration batches the errors are measured on, by default.
DEFAULT_BATCHES = 8
#: Rows of the printed table, by default.
DEFAULT_TOP = 20


@dataclass
class OutputError:
    """The INT8 engine's error on one output against the fp32 engine's."""

    name: str
    max_rel: float
    cosine: float


@dataclass
class PrecisionReport:
    """What ``debug_precision`` measured."""

    model: str
    calibrator: str
    batches: int
    cpu: str
    layers_total: int
    int8_layers: int
    layers: list[LayerError] = field(default_factory=list)
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def max_rel(self) -> float:
        """The largest max relative error over the outputs."""
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return _finite({
            "model": self.model, "calibrator": self.calibrator, "batches": self.batches, "cpu": self.cpu,
            "layers_total": self.layers_total, "int8_layers": self.int8_layers, "max_rel": self.max_rel,
            "outputs": {o.name: {"max_rel": o.max_rel, "cosine": o.cosine} for o in self.outputs},
            "layers": [e.to_json() for e in self.layers]})


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember debug-precision``."""
    p.add_argument("model", help="model file (.onnx), not quantized (the tool calibrates it)")
    p.add_argument("--batches", type=int, default=DEFAULT_BATCHES, metavar="N",
                   help=f"calibration batches to measure the errors on (the first N; default "
                        f"{DEFAULT_BATCHES}); calibration uses all of them")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                   help=f"layers to print, worst first (default {DEFAULT_TOP}; 0: all)")
    p.add_argument("--json", metavar="FILE", help="write the whole report (every layer) as JSON")
    add_calibration_options(p, data_required=True)
    add_build_options(p, precision=False, calibration=False)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember debug-precision``."""
    if args.batches < 1:
        raise InputError(f"--batches {args.batches}: give 1 or more")
    if args.top < 0:
        raise InputError(f"--top {args.top}: give 0 (all) or more")
    from ember.plan.config import Precision

    config = replace(config_from_args(args), precision=Precision.INT8)
    report = debug_precision(args.model, args.calib_data, config, batches=args.batches)
    print_report(report, top=args.top)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        except OSError as e:
            raise InputError(f"--json {args.json}: cannot write it ({e})") from None
        print(f"wrote {args.json}")
    return 0


def debug_precision(model: Any, data: Any, config: BuildConfig, batches: int = DEFAULT_BATCHES,
                    progress: bool | None = None) -> PrecisionReport:
    """Builds the INT8 engine of ``model`` (``config``, calibrated on ``data``) and its fp32
    twin, and measures the error of each INT8 layer and of each output on the first ``batches``
    batches of ``data``."""
    import ember
    from ember.builder.calibration.data import calibration_batches
    from ember.builder.int8 import fp32_config, is_qdq, layer_errors
    from ember.plan.config import Device

    if config.device is not Device.CPU:
        raise InputError(f"ember debug-precision measures each INT8 layer with the CPU engine, not on "
                         f"{config.device}; drop --device (the CPU build calibrates the same tensors)")
    fp32 = ember.build(model, fp32_config(config), progress=progress)
    if is_qdq(fp32):
        raise InputError(f"{model} is explicitly quantized (QuantizeLinear/DequantizeLinear): its layers run "
                         f"in INT8 in every build, so there is no fp32 engine to compare with; give the float "
                         f"model it was made from")
    int8 = ember.build(model, config, progress=progress, calibration_data=data)
    feeds = [{k: np.asarray(v) for k, v in b.items()}
             for b in itertools.islice(calibration_batches(data, fp32.inputs), batches)]
    quantized = [layer for layer in int8.plan.layers if layer.precision.is_quantized]
    errors = layer_errors(int8, fp32, feeds) if quantized else []
    fp = int8.plan.device
    return PrecisionReport(str(model), config.calibrator, len(feeds), f"{fp.get('cpu')}, {fp.get('isa')}",
                           len(int8.plan.layers), len(quantized), errors, output_errors(int8, fp32, feeds))


def output_errors(engine: Any, reference: Any, feeds: list[dict[str, np.ndarray]]) -> list[OutputError]:
    """Each output of ``engine`` against ``reference`` over all ``feeds``: max relative error
    (``max|e| / max|ref|``) and cosine of the flattened outputs."""
    from ember.backends.tensors import max_relative_error

    ours: dict[str, list[np.ndarray]] = {}
    ref: dict[str, list[np.ndarray]] = {}
    with engine.create_context() as a, reference.create_context() as b:
        for batch in feeds:
            for store, ctx in ((ours, a), (ref, b)):
                for name, value in ctx.infer(batch).items():
                    store.setdefault(name, []).append(np.asarray(value, dtype=np.float64).reshape(-1))
    results = []
    for name in ref:
        x, y = np.concatenate(ours[name]), np.concatenate(ref[name])
        denom = float(np.linalg.norm(x) * np.linalg.norm(y))
        cosine = float(x @ y) / denom if denom > 0 else (1.0 if np.array_equal(x, y) else 0.0)
        results.append(OutputError(name, float(max_relative_error(x, y)), cosine))
    return results


def print_report(report: PrecisionReport, top: int = DEFAULT_TOP, console: Any = None) -> None:
    """The report as a rich table, worst layer first, and the whole model's error."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 120))
    console.print(f"{report.model}: {report.int8_layers} of {report.layers_total} layers in INT8 "
                  f"({report.calibrator} calibration), errors against fp32 on {report.batches} calibration "
                  f"batch{'es' if report.batches != 1 else ''}; CPU: {report.cpu}", soft_wrap=True)
    if report.layers:
        shown = report.layers[:top] if top else report.layers
        table = Table(title="Error each INT8 layer adds on its own, worst first",
                      caption="rel RMS: ||int8 - fp32|| / ||fp32||; max rel: max|int8 - fp32| / max|fp32|; "
                              "each layer run in INT8 on the fp32 engine's inputs")
        for col in ("#", "layer", "op", "display name", "rel RMS", "max rel", "cosine"):
            table.add_column(col, justify="right" if col in ("#", "rel RMS", "max rel", "cosine") else "left",
                             overflow="fold")
        for i, e in enumerate(shown, 1):
            table.add_row(str(i), e.layer, e.op, e.display, f"{e.rel_rms:.2e}", f"{e.max_rel:.2e}",
                          f"{e.cosine:.6f}")
        console.print(table)
        if len(shown) < len(report.layers):
            more = len(report.layers) - len(shown)
            console.print(f"({more} more layer{'s' if more != 1 else ''}; --top 0 shows all, --json writes all)")
    else:
        console.print("no layer runs in INT8 (convolutions and GEMMs with constant weights can): nothing to rank",
                      soft_wrap=True)
    console.print(f"whole model, INT8 vs fp32: max relative error {report.max_rel:.2e}", soft_wrap=True)
    for o in report.outputs:
        console.print(f"  output {o.name}: max relative error {o.max_rel:.2e}, cosine {o.cosine:.6f}",
                      soft_wrap=True)
