"""``BuildConfig``: the one frozen, typed configuration of a build, and its enums.

The enums are string-valued (``enum.StrEnum``), so the spellings of the command line, config
files and engine files stay as they were (``"fp16"``, ``"cuda"``, ``"nhwc"``), a member compares
equal to its spelling, and ``BuildConfig(device="cuda")`` takes either.

>>> cfg = BuildConfig(device="cpu", precision="fp32", shapes={"input": (1, 3, 224, 224)})
>>> cfg.device is Device.CPU, cfg.precision == "fp32"
(True, True)
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from ember.errors import BuildError

Shape = tuple[int, ...]


class Device(enum.StrEnum):
    """Where an engine runs."""

    CPU = "cpu"
    CUDA = "cuda"


class Precision(enum.StrEnum):
    """A layer's compute precision. ``INT8`` and ``FP8`` are quantized precisions: their scales
    come from calibration or from a Q/DQ model (``ember.plan.records.QuantRecord``)."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    FP8 = "fp8"

    @property
    def is_quantized(self) -> bool:
        return self in (Precision.INT8, Precision.FP8)

    @property
    def is_half(self) -> bool:
        """fp16 or bf16: 16-bit floating point storage and compute."""
        return self in (Precision.FP16, Precision.BF16)


#: Precisions a build can ask for.
BUILDABLE_PRECISIONS = (Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16, Precision.INT8,
                        Precision.FP8)

#: What each device computes in: TF32 is a GPU tensor-core format that no CPU has. Whether this
#: CPU runs bf16 / fp16 *natively* is the build's question (``ember.passes.precision``), not the
#: configuration's: a config read back from an engine file must stay valid on another machine.
DEVICE_PRECISIONS: dict[Device, tuple[Precision, ...]] = {
    Device.CPU: (Precision.FP32, Precision.BF16, Precision.FP16, Precision.INT8),
    Device.CUDA: (Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16, Precision.INT8, Precision.FP8),
}

#: Calibrators of INT8 builds (``ember.builder.calibration``).
CALIBRATORS = ("entropy", "minmax", "percentile", "mse")


class Layout(enum.StrEnum):
    """Memory format of 4-D activations: ``AUTO`` (the device's preference), ``NCHW`` or ``NHWC``
    (channels-last). A layout plan (``ember.plan.records.LayoutPlan``) is NCHW or NHWC."""

    AUTO = "auto"
    NCHW = "nchw"
    NHWC = "nhwc"


E = TypeVar("E", bound=enum.Enum)


def _check_device_precision(device: Device, precision: Precision, what: str) -> None:
    """A ``BuildError`` naming ``what`` where ``device`` cannot compute in ``precision``."""
    allowed = DEVICE_PRECISIONS[device]
    if precision not in allowed:
        raise BuildError(f"{what} {precision.value} does not exist on {device.value} (a GPU tensor-core "
                         f"format); {device.value} builds take {', '.join(p.value for p in allowed)}")


def to_enum(kind: type[E], value: Any, what: str, allowed: tuple[E, ...] | None = None) -> E:
    """``value`` (a member or its spelling) as a member of ``kind``; a ``BuildError`` naming
    ``what`` and the allowed spellings otherwise."""
    choices = allowed if allowed is not None else tuple(kind)
    try:
        member = kind(value)
    except ValueError:
        member = None
    if member is None or member not in choices:
        names = ", ".join(str(c.value) for c in choices)
        raise BuildError(f"unknown {what} {value!r}; use one of {names}")
    return member


@dataclass(frozen=True)
class Profile:
    """Allowed range of one dynamic input: every dim of a run-time shape lies in [min, max]."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise BuildError(f"profile min/opt/max have different ranks: {self.min}, {self.opt}, {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (0 <= lo <= mid <= hi):
                raise BuildError(f"profile needs min <= opt <= max in every dim, got "
                                 f"min={self.min} opt={self.opt} max={self.max}")

    def contains(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for d, lo, hi in zip(shape, self.min, self.max))


@dataclass(frozen=True)
class BuildConfig:
    """How to build an engine.

    >>> cfg = BuildConfig(device="cpu", shapes={"input": (1, 3, 224, 224)})

    - ``device``: ``Device.CPU`` / ``"cpu"`` or ``Device.CUDA`` / ``"cuda"``.
    - ``shapes``: fixed shapes for inputs whose shapes are dynamic (or to override) in the model.
    - ``profiles``: min/opt/max per input for dynamic shapes (``Profile`` or a 3-tuple of shapes).
    - ``precision``: ``fp32`` | ``tf32`` (GPU only) | ``fp16`` | ``bf16`` | ``int8``. On the CPU,
      ``bf16`` runs convolutions, GEMMs and attention in bf16 through oneDNN where the CPU has
      native bf16 (AVX512-BF16 or AMX; else the build warns and keeps fp32), ``fp16`` likewise
      where it has AMX-FP16 (else the build is refused; ``ember.passes.precision``) |
      ``int8`` (convolutions and GEMMs in INT8, scales from calibration data given to
      ``ember.build`` or from the cache; a Q/DQ model runs its quantized layers in INT8 anyway;
      the other layers run fp32 on the CPU, fp16 on CUDA).
    - ``layer_precisions``: force a precision by layer name or op type (``{"Softmax": "fp32"}``).
    - ``timing_cache``: path of the persistent tactic timing cache.
    - ``optimize``: run the optimizer's fusion passes (cleanup and folding always run).
    - ``cuda_graphs``: CUDA engines replay each input shape as one captured CUDA graph.
    - ``cuda_arena``: captured CUDA graphs write every intermediate into the context's planned
      device arena (``docs/ARENA.md``); off: the graph's private pool holds them.
    - ``tactic_tuning``: time each layer's candidate tactics on the device and keep the fastest
      (GPU builds); off: every layer keeps the backend's default tactic.
    - ``tune_cpu``: CPU builds time every layer's tactics (needs ``tactic_tuning``). Off by
      default: timing convolutions one by one ignores the layout conversions between them, and on
      the 2-core test machine the per-layer winners made MobileNetV2 8x slower than the backend's
      defaults. Off, a CPU build still times the layers whose tactics share their formats
      (GEMMs, MatMuls, attention: ``CPUBackend.always_timed``) and keeps the others' defaults.
    - ``cpu_gemm_into_max_macs``: the largest 1x1 convolution (multiply-adds) the CPU computes as
      a GEMM straight into its Concat slice; 0 (the default) computes none so: measured slower
      than oneDNN + copy inside GoogLeNet (``ember.backends.cpu.kernels.conv_mkldnn``).
    - ``layout``: memory format of 4-D activations, ``auto`` | ``nchw`` | ``nhwc`` (channels-last);
      ``auto`` is the device's preference (``ember.passes.layout.DEVICE_LAYOUT``).
    - ``accuracy_target``: builds below fp32 (half precision, int8): the largest max
      relative error allowed against an fp32 build on calibration inputs; layers fall back to
      fp32 until it is met (``ember.builder.accuracy``). ``None``: precisions as the rules give them.
    - ``calibrator``: how INT8 builds pick activation scales from the calibration data:
      ``entropy`` (KL divergence, the default for CNNs) | ``minmax`` (transformers) |
      ``percentile`` (``calibration_percentile``, 99.99 by default) | ``mse``.
    - ``calibration_cache``: path of the calibration cache (TensorRT's text format): a rebuild
      with a cache that fits the model and calibrator needs no calibration data.
    """

    device: Device = Device.CPU
    shapes: Mapping[str, Shape] = field(default_factory=dict)
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    precision: Precision = Precision.FP32
    layer_precisions: Mapping[str, Precision] = field(default_factory=dict)
    timing_cache: str | None = None
    optimize: bool = True
    cuda_graphs: bool = True
    cuda_arena: bool = True
    tactic_tuning: bool = True
    tune_cpu: bool = False
    cpu_gemm_into_max_macs: int = 0
    layout: Layout = Layout.AUTO
    accuracy_target: float | None = None
    calibrator: str = "entropy"
    calibration_cache: str | None = None
    calibration_percentile: float = 99.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", to_enum(Device, self.device, "device"))
        object.__setattr__(self, "precision", to_enum(Precision, self.precision, "precision",
                                                      BUILDABLE_PRECISIONS))
        object.__setattr__(self, "layout", to_enum(Layout, self.layout, "layout"))
        _check_device_precision(self.device, self.precision, "precision")
        if self.calibrator not in CALIBRATORS:
            raise BuildError(f"unknown calibrator {self.calibrator!r}; use one of {', '.join(CALIBRATORS)}")
        pct = float(self.calibration_percentile)
        if not 0 < pct <= 100:
            raise BuildError(f"calibration_percentile {self.calibration_percentile!r} must be in (0, 100], "
                             f"e.g. 99.99")
        object.__setattr__(self, "calibration_percentile", pct)
        if self.calibration_cache is not None:
            object.__setattr__(self, "calibration_cache", str(self.calibration_cache))
        object.__setattr__(self, "shapes", {k: tuple(int(d) for d in v) for k, v in self.shapes.items()})
        profiles = {}
        for k, v in self.profiles.items():
            profiles[k] = v if isinstance(v, Profile) else Profile(*(tuple(int(d) for d in s) for s in v))
        object.__setattr__(self, "profiles", profiles)
        both = set(self.shapes) & set(self.profiles)
        if both:
            raise BuildError(f"inputs {sorted(both)} have both a fixed shape and a profile; give one")
        object.__setattr__(self, "layer_precisions", {
            name: to_enum(Precision, p, f"precision in layer_precisions[{name!r}]", BUILDABLE_PRECISIONS)
            for name, p in self.layer_precisions.items()})
        for name, p in self.layer_precisions.items():
            _check_device_precision(self.device, p, f"layer_precisions[{name!r}]")
        if int(self.cpu_gemm_into_max_macs) < 0:
            raise BuildError(f"cpu_gemm_into_max_macs {self.cpu_gemm_into_max_macs!r} is a count of "
                             f"multiply-adds; give 0 or more")
        object.__setattr__(self, "cpu_gemm_into_max_macs", int(self.cpu_gemm_into_max_macs))
        if self.accuracy_target is not None:
            target = float(self.accuracy_target)
            if not 0 < target < 1:
                raise BuildError(f"accuracy_target {self.accuracy_target!r} is a max relative error; give "
                                 f"a number between 0 and 1 such as 1e-2, or None for no target")
            object.__setattr__(self, "accuracy_target", target)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "profiles":
                v = {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for k, p in v.items()}
            elif f.name == "shapes":
                v = {k: list(s) for k, s in v.items()}
            elif f.name == "layer_precisions":
                v = {k: str(p) for k, p in v.items()}
            elif isinstance(v, enum.Enum):
                v = v.value
            out[f.name] = v
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> BuildConfig:
        data = dict(data)
        if data.get("device", Device.CPU.value) == Device.CPU.value:  # CPU tf32 ran fp32 before it was refused
            tf32, fp32 = Precision.TF32.value, Precision.FP32.value
            data["precision"] = fp32 if data.get("precision") == tf32 else data.get("precision", fp32)
            data["layer_precisions"] = {k: fp32 if v == tf32 else v
                                        for k, v in dict(data.get("layer_precisions", {})).items()}
        data["profiles"] = {k: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                            for k, p in data.get("profiles", {}).items()}
        known = {f.name for f in fields(BuildConfig)}
        return BuildConfig(**{k: v for k, v in data.items() if k in known})
