"""``BuildConfig``: the one frozen, typed configuration of a build."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping, Optional

from ember.errors import BuildError

Shape = tuple[int, ...]

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
LAYOUTS = ("auto", "nchw", "nhwc")


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

    - ``device``: ``"cpu"`` or ``"cuda"``.
    - ``shapes``: fixed shapes for inputs whose shapes are dynamic (or to override) in the model.
    - ``profiles``: min/opt/max per input for dynamic shapes (``Profile`` or a 3-tuple of shapes).
    - ``precision``: ``fp32`` | ``tf32`` | ``fp16`` | ``bf16`` (GPU; CPU builds run fp32).
    - ``layer_precisions``: force a precision by layer name or op type (``{"Softmax": "fp32"}``).
    - ``timing_cache``: path of the persistent tactic timing cache.
    - ``optimize``: run the optimizer's fusion passes (cleanup and folding always run).
    - ``tactic_tuning``: time each layer's candidate tactics on the device and keep the fastest
      (GPU builds); off: every layer keeps the backend's default tactic.
    - ``tune_cpu``: CPU builds tune too (needs ``tactic_tuning``). Off by default: timing CPU
      layers one by one ignores the layout conversions between them, and on the 2-core test
      machine the per-layer winners made MobileNetV2 8x slower than the backend's defaults.
    - ``layout``: memory format of 4-D activations, ``auto`` | ``nchw`` | ``nhwc`` (channels-last);
      ``auto`` is the device's preference (``ember.passes.layout.DEVICE_LAYOUT``).
    - ``accuracy_target``: GPU builds below fp32 only: the largest max relative error allowed
      against an fp32 build on calibration inputs; the earliest layers fall back to fp32 until it
      is met (``ember.builder.accuracy``). ``None``: precisions as the rules give them.
    """

    device: str = "cpu"
    shapes: Mapping[str, Shape] = field(default_factory=dict)
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    precision: str = "fp32"
    layer_precisions: Mapping[str, str] = field(default_factory=dict)
    timing_cache: Optional[str] = None
    optimize: bool = True
    cuda_graphs: bool = True
    tactic_tuning: bool = True
    tune_cpu: bool = False
    layout: str = "auto"
    accuracy_target: Optional[float] = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise BuildError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise BuildError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.layout not in LAYOUTS:
            raise BuildError(f"unknown layout {self.layout!r}; use one of {', '.join(LAYOUTS)}")
        object.__setattr__(self, "shapes", {k: tuple(int(d) for d in v) for k, v in self.shapes.items()})
        profiles = {}
        for k, v in self.profiles.items():
            profiles[k] = v if isinstance(v, Profile) else Profile(*(tuple(int(d) for d in s) for s in v))
        object.__setattr__(self, "profiles", profiles)
        both = set(self.shapes) & set(self.profiles)
        if both:
            raise BuildError(f"inputs {sorted(both)} have both a fixed shape and a profile; give one")
        for name, p in self.layer_precisions.items():
            if p not in PRECISIONS:
                raise BuildError(f"layer_precisions[{name!r}] = {p!r}; use one of {', '.join(PRECISIONS)}")
        object.__setattr__(self, "layer_precisions", dict(self.layer_precisions))
        if self.accuracy_target is not None:
            target = float(self.accuracy_target)
            if not 0 < target < 1:
                raise BuildError(f"accuracy_target {self.accuracy_target!r} is a max relative error; give "
                                 f"a number between 0 and 1 such as 1e-2, or None for no target")
            object.__setattr__(self, "accuracy_target", target)

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "profiles":
                v = {k: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for k, p in v.items()}
            elif f.name == "shapes":
                v = {k: list(s) for k, s in v.items()}
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out

    @staticmethod
    def from_json(data: dict) -> "BuildConfig":
        data = dict(data)
        data["profiles"] = {k: Profile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
                            for k, p in data.get("profiles", {}).items()}
        known = {f.name for f in fields(BuildConfig)}
        return BuildConfig(**{k: v for k, v in data.items() if k in known})
