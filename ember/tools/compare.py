"""``ember compare``: Ember against ONNX Runtime on the same inputs (what Polygraphy is to TensorRT).

    ember compare model.onnx [--engine model.ember] [--input name=file.npy] [--per-layer]
                             [--seed N] [--rtol R] [--atol A]

For every output: the largest absolute error, the largest error relative to the output's
largest reference magnitude, and pass/fail against the tolerance of the engine's precision
(fp32 1e-4, tf32 1e-3, fp16/bf16 1e-2; integer and bool outputs must match exactly). An output
passes when ``max_abs <= atol + rtol * max|reference|``. ``--per-layer`` also compares every
layer output that the source model has under the same name (a fused layer writes the tensor of
the last node it absorbed), in execution order, and names the first layer out of tolerance.

>>> report = compare("model.onnx", per_layer=True)     # doctest: +SKIP
>>> report.passed, report.first_failure                # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ember.errors import InputError
from ember.tools.args import add_build_options, calibration_data_from_args, config_from_args, read_inputs

HELP = "compare an engine's outputs (and per-layer tensors) with ONNX Runtime"
RTOL = {"fp32": 1e-4, "tf32": 1e-3, "fp16": 1e-2, "bf16": 1e-2, "int8": 5e-2}
ATOL_FRACTION = 1e-2  # default atol = rtol * this (only matters for all-zero outputs)


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor of Ember differs from ONNX Runtime's."""

    name: str
    layer: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    ref_max: float
    passed: bool
    note: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        where = f" ({self.layer})" if self.layer and self.layer != self.name else ""
        text = (f"{status}  {self.name}{where} {self.dtype}{list(self.shape)}: max abs {self.max_abs:.3g}, "
                f"max rel {self.max_rel:.3g} (ref max {self.ref_max:.3g})")
        return text + (f"  {self.note}" if self.note else "")


@dataclass
class CompareReport:
    """Outputs (and with ``per_layer`` the layers) compared, with the tolerances used."""

    precision: str
    rtol: float
    atol: float
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: list[TensorDiff] = field(default_factory=list)
    layers: list[TensorDiff] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.outputs) and all(d.passed for d in self.layers)

    @property
    def first_failure(self) -> Optional[TensorDiff]:
        """The first layer (in execution order) out of tolerance, else the first bad output."""
        return next((d for d in self.layers if not d.passed), None) or \
            next((d for d in self.outputs if not d.passed), None)

    def format(self) -> str:
        """The report as text for a terminal."""
        ins = ", ".join(f"{k}: {dt}{list(s)}" for k, (s, dt) in self.inputs.items())
        lines = [f"compare: Ember vs ONNX Runtime, precision {self.precision} (rtol {self.rtol:g}, "
                 f"atol {self.atol:g}); inputs {ins}"]
        if self.layers:
            bad = sum(not d.passed for d in self.layers)
            lines.append(f"per-layer: {len(self.layers)} layer outputs compared, {bad} out of tolerance")
            lines += ["  " + d.line() for d in self.layers if not d.passed][:20]
        lines.append("outputs:")
        lines += ["  " + d.line() for d in self.outputs]
        first = self.first_failure
        if first is None:
            lines.append("PASSED")
        else:
            lines.append(f"FAILED: first out of tolerance: layer {first.layer or first.name!r} "
                         f"(tensor {first.name!r})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"precision": self.precision, "rtol": self.rtol, "atol": self.atol, "passed": self.passed,
                "inputs": {k: {"shape": list(s), "dtype": dt} for k, (s, dt) in self.inputs.items()},
                "outputs": [asdict(d) for d in self.outputs], "layers": [asdict(d) for d in self.layers]}


# ---- tolerance ---------------------------------------------------------------------------------
def diff(name: str, ours: np.ndarray, ref: np.ndarray, rtol: float, atol: float, layer: str = "") -> TensorDiff:
    """Compares ``ours`` with the reference ``ref``."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    dtype = str(ref.dtype)
    if ours.shape != ref.shape:
        return TensorDiff(name, layer, tuple(ref.shape), dtype, float("inf"), float("inf"), 0.0, False,
                          f"shape {list(ours.shape)} != reference {list(ref.shape)}")
    if ref.size == 0:
        return TensorDiff(name, layer, ref.shape, dtype, 0.0, 0.0, 0.0, True)
    if ref.dtype.kind in "biu":
        wrong = int(np.count_nonzero(ours != ref))
        err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
        ref_max = float(np.abs(ref.astype(np.float64)).max())
        return TensorDiff(name, layer, ref.shape, dtype, err, err / max(ref_max, 1.0), ref_max, wrong == 0,
                          f"{wrong} elements differ" if wrong else "")
    a, b = ours.astype(np.float64), ref.astype(np.float64)
    nan_mismatch = int(np.count_nonzero(np.isnan(a) != np.isnan(b)))
    finite = np.isfinite(a) & np.isfinite(b)
    err = float(np.abs(a - b)[finite].max()) if finite.any() else 0.0
    ref_max = float(np.abs(b[finite]).max()) if finite.any() else 0.0
    passed = nan_mismatch == 0 and err <= atol + rtol * ref_max
    note = f"{nan_mismatch} NaN mismatches" if nan_mismatch else ""
    return TensorDiff(name, layer, ref.shape, dtype, err, err / ref_max if ref_max else err, ref_max, passed, note)


# ---- inputs ------------------------------------------------------------------------------------
def random_inputs(model, specs: Sequence[Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for ``specs`` (engine ``TensorSpec``s): N(0, 1) floats; integers in the range of the
    embedding table they index (else 0..1); masks all ones; symbolic dims at their minimum
    (``ember.runtime.example_inputs`` draws them)."""
    from ember.runtime.example_inputs import InputSpec, onnx_int_ranges, resolve_shapes
    from ember.runtime.example_inputs import random_inputs as draw

    wanted = [InputSpec(s.name, s.dtype, tuple(s.shape), tuple(s.min)) for s in specs]
    return draw(wanted, resolve_shapes(wanted, dynamic="min"), seed, onnx_int_ranges(model))


# ---- running both sides ------------------------------------------------------------------------
def _load_model(model: Any) -> Any:
    """The ONNX model through the ONNX frontend's reader (paths, bytes, external data)."""
    from ember.frontends.onnx.loader import load_model

    return load_model(model)[0]


def run_ort(model, feeds: Mapping[str, np.ndarray], extra_outputs: Sequence[tuple[str, Any]] = ()) -> dict:
    """Runs ``model`` on ONNX Runtime (CPU, graph optimizations off so every tensor exists),
    with ``extra_outputs`` ``(name, DType)`` added as graph outputs."""
    import onnxruntime as ort
    from onnx import helper

    if extra_outputs:
        model = copy.deepcopy(model)
        have = {o.name for o in model.graph.output}
        for name, dtype in extra_outputs:
            if name not in have:
                elem = helper.np_dtype_to_tensor_dtype(dtype.to_numpy())
                model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _run_engine(engine, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with engine.create_context() as ctx:
        out = ctx.infer(dict(feeds))
    return {k: np.asarray(v) for k, v in out.items()}


def _layer_tensors(engine, model) -> list[tuple[str, str, Any]]:
    """``(tensor, layer display name, dtype)`` for each layer output that the source model also
    has, in execution order (graph outputs excluded: they are compared anyway)."""
    names = {o for n in model.graph.node for o in n.output}
    graph = engine.plan.graph
    outputs = set(graph.outputs)
    found = []
    for node in graph.nodes:
        for o in node.outputs:
            if o and o in names and o not in outputs and o in graph.types:
                found.append((o, node.display_name, graph.types[o].dtype))
    return found


def _per_layer_engine(model, engine, tensors: Sequence[str], calibration_data: Any = None):
    """The engine rebuilt with ``tensors`` kept as extra outputs (same build configuration)."""
    from onnx import helper

    from ember.builder.build import build

    extra = copy.deepcopy(model)
    dtypes = {t: engine.plan.graph.types[t].dtype for t in tensors}
    for t in tensors:
        extra.graph.output.append(helper.make_tensor_value_info(
            t, helper.np_dtype_to_tensor_dtype(dtypes[t].to_numpy()), None))
    return build(extra, engine.plan.config, progress=False, calibration_data=calibration_data)


def compare(model: Any, engine: Any = None, inputs: Optional[Mapping[str, np.ndarray]] = None,
            per_layer: bool = False, seed: int = 0, rtol: Optional[float] = None,
            atol: Optional[float] = None, config: Any = None, calibration_data: Any = None) -> CompareReport:
    """Runs Ember and ONNX Runtime on the same inputs and compares every output.

    ``model``: the ONNX model (path or ``onnx.ModelProto``). ``engine``: an ``Engine``, an
    ``.ember`` path, or ``None`` to build one from ``model`` with ``config`` (default: CPU fp32).
    ``inputs``: arrays by input name (missing ones are drawn at random from ``seed``).
    ``per_layer``: also compare each layer output the model has under the same name; for that the
    engine is rebuilt from ``model`` with those tensors kept as outputs. ``calibration_data``: for
    an INT8 ``config`` (``ember.build``'s).
    """
    import ember
    from ember.builder.build import build
    from ember.plan.config import BuildConfig

    proto = _load_model(model)
    if engine is None:
        engine = build(proto, config or BuildConfig(), progress=False, calibration_data=calibration_data)
    elif isinstance(engine, (str, Path)):
        engine = ember.load(engine)
    cfg = engine.plan.config
    precision = cfg.precision if cfg.device != "cpu" or cfg.precision == "int8" else "fp32"
    rtol = RTOL[precision] if rtol is None else rtol
    atol = rtol * ATOL_FRACTION if atol is None else atol
    feeds = dict(inputs or {})
    unknown = sorted(set(feeds) - {s.name for s in engine.inputs})
    if unknown:
        raise InputError(f"inputs {unknown} are not inputs of the engine; it has "
                         f"{[s.name for s in engine.inputs]}")
    missing = [s for s in engine.inputs if s.name not in feeds]
    feeds.update(random_inputs(proto, missing, seed))
    report = CompareReport(precision, rtol, atol, {k: (tuple(v.shape), str(v.dtype)) for k, v in feeds.items()})
    layer_tensors = _layer_tensors(engine, proto) if per_layer else []
    if layer_tensors:
        engine = _per_layer_engine(proto, engine, [t for t, _, _ in layer_tensors], calibration_data)
    ref = run_ort(proto, feeds, [(t, dt) for t, _, dt in layer_tensors])
    ours = _run_engine(engine, feeds)
    for t, layer, _ in layer_tensors:
        report.layers.append(diff(t, ours[t], ref[t], rtol, atol, layer))
    producers = engine.plan.graph.producers()
    for o in (x.name for x in proto.graph.output):
        layer = producers[o].display_name if o in producers else ""
        report.outputs.append(diff(o, ours[o], ref[o], rtol, atol, layer))
    return report


# ---- command line ------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``ember compare`` options (the build options apply when no --engine is given)."""
    p.add_argument("model", help="the ONNX model (the reference, run by ONNX Runtime)")
    p.add_argument("--engine", metavar="FILE", help="engine file to check (default: build one from the model)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input from a .npy file (or FILE.npz with every input); others are random")
    p.add_argument("--per-layer", action="store_true",
                   help="compare every layer output and name the first one out of tolerance")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default by precision: fp32 1e-4, "
                                              "tf32 1e-3, fp16/bf16 1e-2)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default rtol/100)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    add_build_options(p)


def run(args: argparse.Namespace) -> int:
    """Prints the report; exit status 0 when everything is within tolerance, else 1."""
    import json

    report = compare(args.model, engine=args.engine, inputs=read_inputs(args.input),
                     per_layer=args.per_layer, seed=args.seed, rtol=args.rtol, atol=args.atol,
                     config=None if args.engine else config_from_args(args),
                     calibration_data=None if args.engine else calibration_data_from_args(args))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.passed else 1
