"""What this CPU computes natively: the instruction-set features that decide whether a reduced
precision pays on the CPU (issue 19).

oneDNN runs bf16 convolutions and GEMMs on AMX tiles (``amx_bf16``) or AVX-512 BF16 dot products
(``avx512_bf16``); without either it emulates bf16 with fp32 arithmetic plus conversions, slower
than plain fp32. fp16 is fast only on AMX-FP16 (``amx_fp16``, Granite Rapids and later): with
AVX-512 FP16 alone oneDNN's fp16 kernels measured 2-7x slower than its fp32 ones on the
Sapphire Rapids-class Xeon of ``bench/probes/cpu_bf16.py``. The build asks this module (through
``ember.passes.precision``) and keeps fp32 where the CPU lacks the feature.

>>> f = CPUFeatures("Example CPU", frozenset({"avx512_bf16", "amx_bf16"}))
>>> f.native(Precision.BF16), f.native(Precision.FP16)
(True, False)

Tests fake another CPU with ``set_cpu_features(CPUFeatures(...))`` (``None`` restores the probe).
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ember.plan.config import Precision

#: Flags (as ``/proc/cpuinfo`` spells them) that make a precision native, any one of them enough.
NATIVE_FLAGS: dict[Precision, tuple[str, ...]] = {
    Precision.BF16: ("amx_bf16", "avx512_bf16"),
    Precision.FP16: ("amx_fp16",),
}

#: The flags that bench results and warnings report (matrix and vector extensions).
REPORTED_PREFIXES = ("amx", "avx512")


class CPUPrecisionWarning(UserWarning):
    """A reduced precision was asked of a CPU that has no native support for it: the build keeps fp32."""


@dataclass(frozen=True)
class CPUFeatures:
    """The CPU's model name and its instruction-set flags (``/proc/cpuinfo`` spelling)."""

    name: str
    flags: frozenset[str]

    def native(self, precision: Precision) -> bool:
        """Whether ``precision`` (bf16 / fp16) runs natively here; fp32 and int8 always do."""
        wanted = NATIVE_FLAGS.get(precision)
        return wanted is None or any(f in self.flags for f in wanted)

    def missing(self, precision: Precision) -> str:
        """The flags ``precision`` would need, for a message: ``"amx_bf16 or avx512_bf16"``."""
        return " or ".join(NATIVE_FLAGS.get(precision, ()))

    def reported(self) -> list[str]:
        """The AMX and AVX-512 flags, sorted (what every benchmark result names)."""
        return sorted(f for f in self.flags if f.startswith(REPORTED_PREFIXES))


_override: Optional[CPUFeatures] = None


def set_cpu_features(features: Optional[CPUFeatures]) -> None:
    """Makes ``cpu_features()`` answer ``features`` (tests fake a CPU); ``None`` restores the probe."""
    global _override
    _override = features


def cpu_features() -> CPUFeatures:
    """This CPU's features (cached probe; see ``set_cpu_features``)."""
    return _override if _override is not None else _probe()


@functools.cache
def _probe() -> CPUFeatures:
    name, flags = _from_cpuinfo(Path("/proc/cpuinfo"))
    if not flags:  # not Linux: what PyTorch's oneDNN says it can do
        flags = _from_torch()
    return CPUFeatures(name or platform.processor() or platform.machine() or "unknown CPU", frozenset(flags))


#: x86 flags with which oneDNN's 8-bit kernels sum u8 x s8 products in 32 bits (VNNI dot products,
#: AMX tiles). Without any of them (AVX2 CPUs, AVX-512 before Cascade Lake) oneDNN, like ONNX
#: Runtime's MLAS, multiplies with ``vpmaddubsw``, which adds each pair of products in 16 bits and
#: saturates: 255 x 127 x 2 = 64770 > 32767. Measured on an AVX2 EPYC (twenty-fourth session): a
#: QConv whose input has zero point 128 was off by up to 68 quantization steps, and ONNX Runtime
#: 1.32's MatMulInteger by up to 17525 of its int32 results.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86_FLAGS = ("sse4_1", "avx", "avx2")


#: The largest int8 weight magnitude with which no pair can saturate there: two u8 x s8 products add
#: to at most 255 x (64 + 64) = 32640 <= 32767. Calibrated builds on such a CPU quantize weights to
#: this range (``ember.passes.int8``), as ONNX Runtime's quantizer does with ``reduce_range``, and
#: a layer whose weights fit it runs on oneDNN's 8-bit kernels exactly (``qlayers.saturates``).
INT8_SAFE_WEIGHT = 64


def int8_saturates() -> bool:
    """Whether oneDNN's 8-bit convolutions and matmuls can saturate on this (real, not faked) CPU:
    an x86 CPU without VNNI or AMX (``INT8_DOT_FLAGS``), for weights beyond ``INT8_SAFE_WEIGHT``.
    Ember's INT8 layers with such weights then compute in float32 on the same 8-bit operands
    (``kernels.qlayers.saturates``): no saturation, float32 rounding only."""
    flags = _probe().flags
    return any(f in flags for f in _X86_FLAGS) and not any(f in flags for f in INT8_DOT_FLAGS)


def _from_cpuinfo(path: Path) -> tuple[str, set[str]]:
    try:
        text = path.read_text()
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            name = value.strip()
        elif key in ("flags", "Features"):
            flags = set(value.split())
    return name, flags


def _from_torch() -> set[str]:
    """Flags where ``/proc/cpuinfo`` is not available (not Linux): only what PyTorch states
    exactly. ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not used: it is true wherever
    oneDNN can *emulate* bf16 (any AVX-512 CPU), and emulated bf16 is slower than fp32. So such a
    machine builds fp32 with a warning rather than a slow bf16 engine."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).lower()
    return {"amx_bf16"} if "amx" in capability else set()


__all__ = ["CPUFeatures", "CPUPrecisionWarning", "INT8_DOT_FLAGS", "INT8_SAFE_WEIGHT", "NATIVE_FLAGS", "cpu_features",
           "int8_saturates",
           "set_cpu_features"]
