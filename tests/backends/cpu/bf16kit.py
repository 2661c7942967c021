"""Helpers of the CPU half-precision tests: one-op ONNX models, a bf16 engine next to its fp32
twin, and a faked CPU (``ember.backends.cpu.features``) so the bf16 path is tested on CPUs without
native bf16 too, where oneDNN (PyTorch's and Ember's extension) emulates bf16, only slower. It does
so only where it has bf16 kernels at all (AVX-512 BW/VL/DQ, AMX or AVX-NE-CONVERT): on a CPU with
AVX2 at most, such as an AVX2 EPYC, a faked native-bf16 build cannot run, and the tests that need
one skip (``ONEDNN_BF16``)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.features import CPUFeatures, cpu_features, set_cpu_features
from ember.backends.cpu.half import storage_dtype
from ember.ir.optype import OpType
from ember.passes.cpu_half import is_conversion
from ember.runtime.engine import Engine

#: A CPU with native bf16 (and, with ``fp16=True``, AMX-FP16).
NATIVE = CPUFeatures("Faked Xeon with AMX", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
NATIVE_FP16 = CPUFeatures("Faked Xeon with AMX-FP16", NATIVE.flags | {"amx_fp16", "avx512_fp16"})
#: Whether PyTorch's oneDNN runs fp16 convolutions on this (real) CPU at all: it packs fp16 weights
#: only with AVX512-FP16 or AVX-NE-CONVERT (a Zen 4 EPYC refuses: "fp16 path needs the cpu support
#: avx_ne_convert or avx512_fp16"), so a faked ``NATIVE_FP16`` build can run only there.
TORCH_FP16_CONV = bool({"avx512_fp16", "avx_ne_convert"} & cpu_features().flags)
NO_TORCH_FP16_CONV = "PyTorch's oneDNN has no fp16 convolutions on this CPU (no AVX512-FP16 / AVX-NE-CONVERT)"
#: Whether oneDNN has bf16 kernels on this (real) CPU at all, emulated or native: it needs AVX-512
#: with BW, VL and DQ, AMX or AVX-NE-CONVERT. With AVX2 at most it refuses a bf16 convolution ("could
#: not create a primitive descriptor for a convolution forward propagation primitive"), a bf16
#: pooling, and PyTorch packs no bf16 linear weight ("bf16 path needs the cpu support avx_ne_convert
#: or avx512bw, avx512vl and avx512dq"), so a bf16 primitive of Ember's extension, and a faked
#: ``NATIVE`` build, can run only where this holds.
#: Users are not affected: on such a CPU a bf16 build keeps fp32 with a warning.
ONEDNN_BF16 = ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_features().flags
               or bool({"amx_bf16", "avx_ne_convert"} & cpu_features().flags))
NO_ONEDNN_BF16 = ("oneDNN has no bf16 kernels on this CPU (they need AVX-512 BW/VL/DQ, AMX or AVX-NE-CONVERT), "
                  "so neither a bf16 primitive nor a faked native-bf16 build can run here")
#: The mark of a test that makes bf16 primitives or builds bf16 layers on a faked native-bf16 CPU.
needs_onednn_bf16 = pytest.mark.skipif(not ONEDNN_BF16, reason=NO_ONEDNN_BF16)
#: A CPU without native bf16 (AVX-512 but neither AVX512-BF16 nor AMX).
PLAIN = CPUFeatures("Faked EPYC without BF16", frozenset({"avx2", "avx512f", "avx512bw"}))

#: Max relative error one bf16 layer may add against fp32 (8-bit mantissa: 2^-9 per rounding,
#: inputs and weights rounded, float32 accumulation).
ONE_LAYER = 1.5e-2


@contextlib.contextmanager
def faked_cpu(features: CPUFeatures) -> Iterator[None]:
    set_cpu_features(features)
    try:
        yield
    finally:
        set_cpu_features(None)


def real_cpu_is_native() -> bool:
    return cpu_features().native(ember.Precision.BF16)


def model(nodes: list, inputs: dict[str, tuple[int, ...]], outputs: dict[str, Optional[tuple[int, ...]]],
          inits: dict[str, np.ndarray], opset: int = 17, name: str = "m") -> onnx.ModelProto:
    """An ONNX model of ``nodes``; float32 inputs and outputs (an output shape ``None``: inferred)."""
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None if v is None else list(v))
         for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def engines(m: Any, precision: str = "bf16", features: CPUFeatures = NATIVE,
            half_layers: Optional[dict[str, str]] = None, **config: Any) -> tuple[Engine, Engine]:
    """(fp32 engine, ``precision`` engine) of ``m`` on a CPU with ``features``; ``half_layers``:
    the ``layer_precisions`` of the second build only (``{"LayerNormalization": "bf16"}``)."""
    fp32 = ember.build(m, ember.BuildConfig(device="cpu", **config), progress=False)
    with faked_cpu(features):
        half = ember.build(m, ember.BuildConfig(device="cpu", precision=precision,
                                                layer_precisions=dict(half_layers or {}), **config),
                           progress=False)
    return fp32, half


def run(engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


def precisions(engine: Engine) -> dict[str, str]:
    """Layer kind -> its precision(s), e.g. ``{"FusedConv": "bf16", "Cast": "fp32"}``."""
    out: dict[str, set[str]] = {}
    for layer in engine.plan.layers:
        out.setdefault(layer.kind, set()).add(str(layer.precision))
    return {k: ",".join(sorted(v)) for k, v in out.items()}


def casts(engine: Engine) -> list[tuple[str, str]]:
    """(tensor, precision it is converted to) of every planned conversion of an engine."""
    plan = engine.plan
    return [(n.inputs[0], str(layer.precision)) for n, layer in zip(plan.graph.nodes, plan.layers)
            if n.op is OpType.CAST and is_conversion(n.rule)]


def stored(engine: Engine, tensor: str) -> str:
    """The dtype ``tensor`` is stored in (``ember.backends.cpu.half.storage_dtype``)."""
    plan = engine.plan
    producer = next((n.name for n in plan.graph.nodes if tensor in n.outputs), "")
    precisions = {layer.name: layer.precision for layer in plan.layers}
    return storage_dtype(plan.graph, precisions, producer, tensor).value
