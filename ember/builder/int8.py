"""INT8 builds: calibration of the fp32 engine, and the error each INT8 layer adds.

``calibration``: an INT8 build (``BuildConfig(precision="int8")``, or ``int8`` entries in
``layer_precisions``) first builds the fp32 engine of the model, then calibrates the tensors its
INT8 layers would read and write (``int8_tensors``) on the calibration data with the config's
calibrator, or takes the scales from ``config.calibration_cache``. The second build gives these
scales to the pass pipeline, whose ``quantize_layers`` makes the INT8 layers
(``ember.passes.int8``). A Q/DQ model brings its own scales: it is not calibrated.

``layer_errors``: how much error each INT8 layer adds on its own. Every INT8 layer of the INT8
engine is run on the fp32 engine's inputs of that layer (so earlier layers' errors do not count)
and its output compared with the fp32 engine's: ``ember debug-precision`` prints them worst
first, and an INT8 build's ``accuracy_target`` returns the most damaging layers to fp32 first.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ember.backends.cpu.program import CPUProgram
from ember.backends.tensors import numpy_to_torch
from ember.builder.calibration import CalibrationWarning, calibrate
from ember.builder.calibration.data import CalibrationData, calibration_batches
from ember.errors import BuildError
from ember.ir.graph import Graph
from ember.ir.optype import OpType
from ember.ops.attrs import FusedConvAttrs, QConvAttrs, QGemmAttrs
from ember.passes.precision import INT8_OPS
from ember.passes.quantization import QDQ_OPS
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.records import QuantizationPlan
from ember.runtime.engine import Engine

#: ``build_fn(model, config, progress) -> Engine``: one build (``ember.builder.build``).
BuildFn = Callable[[Any, BuildConfig, "bool | None"], Engine]


def wanted(config: BuildConfig) -> bool:
    """Whether ``config`` asks for quantized (INT8 or FP8) layers, by its precision or a per-layer
    precision: such a build is calibrated first."""
    return config.precision.is_quantized or any(p.is_quantized for p in config.layer_precisions.values())


def check_device(config: BuildConfig) -> None:
    """Raises ``BuildError`` when the quantized layers asked for cannot run on ``config``'s device:
    INT8 on CUDA needs a GPU and Triton (and no TensorFlow in the process, whose LLVM clashes with
    Triton's); FP8 needs a GPU with FP8 tensor cores (compute capability 8.9: Ada, Hopper and
    newer), where cuBLASLt runs its GEMMs (``torch._scaled_mm``)."""
    asked = {config.precision, *config.layer_precisions.values()}
    if Precision.FP8 in asked:
        check_fp8_device()
    if config.device is Device.CUDA and Precision.INT8 in asked:
        from ember.backends.cuda.device import require_cuda, triton_available

        require_cuda("an INT8 engine for cuda")
        from ember.backends.cuda.libs import llvm_clash

        if llvm_clash():
            raise BuildError(f"INT8 layers on CUDA run on Ember's Triton kernels, and {llvm_clash()}")
        if not triton_available():
            raise BuildError("INT8 layers on CUDA run on Ember's Triton kernels, and Triton is not installed "
                             "here: pip install 'ember[cuda]' (or triton), or build with precision fp16")


def check_fp8_device() -> None:
    """``BuildError`` unless this process's GPU runs FP8 GEMMs."""
    from ember.backends.cuda.device import require_cuda

    require_cuda("an FP8 engine for cuda")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9) or not hasattr(torch, "_scaled_mm"):
        raise BuildError(f"FP8 layers need a GPU with FP8 tensor cores (compute capability 8.9 or newer: "
                         f"Ada, Hopper, Blackwell); {torch.cuda.get_device_name()} is {major}.{minor}. Build "
                         f"with precision int8 or fp16")


def fp32_config(config: BuildConfig) -> BuildConfig:
    """The fp32 build of an INT8 ``config`` (what calibration runs and errors compare with), built
    without tactic timing (nor the CPU's chain layouts) and, on CUDA, without CUDA graphs:
    calibration runs it eagerly, where only its tensors matter, not its speed."""
    table = {k: p for k, p in config.layer_precisions.items() if not p.is_quantized}
    fp32 = replace(config, precision=Precision.FP32, layer_precisions=table, accuracy_target=None,
                   tactic_tuning=False)
    if config.device is Device.CUDA:
        fp32 = replace(fp32, cuda_graphs=False)
    return fp32


def int8_tensors(graph: Graph) -> list[str]:
    """The float tensors INT8 layers of ``graph`` (an fp32 engine's) would read or write: each
    convolution's and GEMM's input, output and residual, in execution order."""
    names: list[str] = []
    for node in graph.nodes:
        if node.op not in INT8_OPS or node.input(1) not in graph.constants:
            continue
        names += [node.inputs[0], node.outputs[0]]
        if isinstance(node.attrs, FusedConvAttrs) and node.attrs.has_residual:
            names.append(node.inputs[3])
    floats = [n for n in dict.fromkeys(names) if n in graph.types and graph.types[n].dtype.is_float]
    return floats


def gemm_inputs(graph: Graph) -> list[str]:
    """The float inputs of GEMMs with constant weights: calibration measures their per-channel
    maxima, for smoothing (``ember.passes.int8.smoothing``)."""
    return list(dict.fromkeys(n.inputs[0] for n in graph.nodes
                              if n.op in (OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM)
                              and n.input(1) in graph.constants and graph.types[n.inputs[0]].dtype.is_float))


def is_qdq(engine: Engine) -> bool:
    """Whether the engine's model is explicitly quantized (Q/DQ nodes or records)."""
    return (any(n.op in QDQ_OPS for n in engine.plan.graph.nodes)
            or any(r.source == "qdq" for r in engine.plan.records.quantization.tensors.values()))


def _reusable(data: CalibrationData | None) -> CalibrationData | None:
    """``data`` in a form that can be read twice (an iterator of dicts becomes a list)."""
    if data is None or isinstance(data, (str, os.PathLike, Mapping)):
        return data
    return list(data)


def calibration(model: Any, config: BuildConfig, data: CalibrationData | None, progress: bool | None,
                build_fn: BuildFn) -> tuple[QuantizationPlan | None, dict[str, np.ndarray] | None]:
    """The calibrated scales of an INT8 build, and the first calibration batch (for the accuracy
    target); ``(None, None)`` for a Q/DQ model, whose own scales are used."""
    data = _reusable(data)
    engine = build_fn(model, fp32_config(config), progress)
    if is_qdq(engine):
        if data is not None:
            warnings.warn("the model is explicitly quantized (QuantizeLinear/DequantizeLinear): its own scales "
                          "are used and the calibration data is not", CalibrationWarning, stacklevel=3)
        return None, None
    names = int8_tensors(engine.plan.graph)
    if not names:
        warnings.warn("no layer of this model can run in int8 or fp8 (convolutions and GEMMs with constant "
                      "weights can); the engine is fp32", CalibrationWarning, stacklevel=3)
        return None, None
    plan = calibrate(engine, data, config.calibrator, config.calibration_percentile,
                     config.calibration_cache, tensors=names, progress=progress,
                     channels=gemm_inputs(engine.plan.graph))
    first = None
    if data is not None:
        first = {k: np.asarray(v) for k, v in next(iter(calibration_batches(data, engine.inputs))).items()}
    return plan, first


@dataclass(frozen=True)
class LayerError:
    """The error one INT8 layer adds on its own: its output computed in INT8 from the fp32
    engine's inputs, against the fp32 engine's output. ``rel_rms``: ``||e|| / ||ref||``;
    ``max_rel``: ``max|e| / max|ref|``; ``cosine``: of the flattened outputs."""

    layer: str
    op: str
    display: str
    rel_rms: float
    max_rel: float
    cosine: float

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "op": self.op, "display": self.display, "rel_rms": self.rel_rms,
                "max_rel": self.max_rel, "cosine": self.cosine}


def _metrics(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    a, b = ours.double().reshape(-1), ref.double().reshape(-1)
    e = a - b
    ref_norm, ref_max = float(b.norm()), float(b.abs().max()) if b.numel() else 0.0
    rel_rms = float(e.norm()) / ref_norm if ref_norm > 0 else (0.0 if float(e.norm()) == 0 else math.inf)
    max_rel = float(e.abs().max()) / ref_max if ref_max > 0 else (0.0 if not e.numel() or float(e.abs().max()) == 0
                                                                   else math.inf)
    denom = float(a.norm()) * ref_norm
    cosine = float(a @ b) / denom if denom > 0 else (1.0 if float(e.norm()) == 0 else 0.0)
    return rel_rms, max_rel, cosine


def layer_errors(int8_engine: Engine, fp32_engine: Engine,
                 feeds: Sequence[Mapping[str, Any]]) -> list[LayerError]:
    """The error each INT8 layer of ``int8_engine`` adds on its own over ``feeds`` (batches),
    worst (largest relative RMS error) first. Both engines are CPU engines of the same model
    (the INT8 one built with the fp32 one's pipeline: their tensors share names)."""
    from ember.backends.cpu.kernels.qlayers import dequantize

    q_program, f_program = int8_engine.compile(), fp32_engine.compile()
    if not isinstance(q_program, CPUProgram) or not isinstance(f_program, CPUProgram):
        raise BuildError("per-layer INT8 errors need CPU engines built by the CPU backend")
    steps = {s.name: s for s in q_program.steps}
    layers = [n for n in int8_engine.plan.graph.nodes if n.op in (OpType.QCONV, OpType.QGEMM)]
    wanted_inputs = {i for n in layers for i in n.inputs if i} | {n.outputs[0] for n in layers}
    sums: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n.name: [] for n in layers}
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, t: torch.Tensor) -> None:
        if name in wanted_inputs:
            seen[name] = t.clone()

    for batch in feeds:
        seen.clear()
        f_program.run({k: numpy_to_torch(np.asarray(v), f_program.device) for k, v in batch.items()},
                      observe=keep)
        env = {**q_program.constants, **seen}
        for node in layers:
            ref = seen.get(node.outputs[0])
            if ref is None or any(i and i not in env for i in node.inputs):
                continue
            out = steps[node.name].kernel([env[i] if i else None for i in node.inputs])[0]
            assert out is not None
            attrs: QConvAttrs | QGemmAttrs = node.attrs
            if attrs.out is not None:
                out = dequantize(out, attrs.out)
            sums[node.name].append((out, ref.to(torch.float32)))
    results = []
    for node in layers:
        pairs = sums[node.name]
        if not pairs:
            continue
        ours = torch.cat([o.reshape(-1) for o, _ in pairs])
        ref = torch.cat([r.reshape(-1) for _, r in pairs])
        rel_rms, max_rel, cosine = _metrics(ours, ref)
        results.append(LayerError(node.name, node.op.value, node.display_name, rel_rms, max_rel, cosine))
    results.sort(key=lambda e: -e.rel_rms if not math.isnan(e.rel_rms) else -math.inf)
    return results
