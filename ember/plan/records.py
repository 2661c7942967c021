"""Typed records of the decisions passes hand to later stages, and their file schema.

The optimizer's layout, concat and precision passes (and, for quantized engines, calibration or
a Q/DQ model) decide things the builder, the backends and the runtime must honour. Each decision
is a frozen record here; ``Records`` holds one of each. Passes produce them into
``PassContext.records``, the builder puts them on the ``Plan``, backends read them from
``CompileContext.records``, and the engine file stores them under a versioned schema
(``Records.to_json`` / ``Records.from_json``, ``RECORDS_SCHEMA``).

>>> r = Records(precision=PrecisionPlan({"conv1": Precision.FP16}))
>>> Records.from_json(r.to_json()) == r
True
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ember.errors import EngineFileError
from ember.plan.config import Layout, Precision

#: Version of the JSON form of ``Records``; bump on any change a reader must know about.
RECORDS_SCHEMA = 1

#: The ``reader`` of a layout conversion that happens before a graph output is returned.
OUTPUT_READER = "<output>"


@dataclass(frozen=True)
class LayoutConversion:
    """Where a 4-D tensor changes memory format: ``tensor`` converted ``to`` for ``reader`` (a
    node name, or ``OUTPUT_READER``)."""

    tensor: str
    to: Layout
    reader: str


@dataclass(frozen=True)
class LayoutPlan:
    """Memory format of every 4-D float activation (``assign_layout``).

    ``preferred``: the build's format (``NCHW`` or ``NHWC``); ``nhwc``: activations stored
    channels-last (every other 4-D activation is NCHW); ``weights``: conv weight constants kept
    channels-last (converted once, at compile time); ``conversions``: where formats change.
    Logical shapes stay NCHW: this is the memory format only, so ignoring it is always correct.
    """

    preferred: Layout = Layout.NCHW
    nhwc: frozenset[str] = frozenset()
    weights: frozenset[str] = frozenset()
    conversions: tuple[LayoutConversion, ...] = ()

    def __post_init__(self) -> None:
        if self.preferred not in (Layout.NCHW, Layout.NHWC):
            raise ValueError(f"a layout plan is nchw or nhwc, not {self.preferred!r}")
        object.__setattr__(self, "nhwc", frozenset(self.nhwc))
        object.__setattr__(self, "weights", frozenset(self.weights))
        object.__setattr__(self, "conversions", tuple(self.conversions))

    def is_channels_last(self, tensor: str) -> bool:
        return tensor in self.nhwc


@dataclass(frozen=True)
class ConcatSlice:
    """One Concat input's place in the output: ``[start, stop)`` along the axis; ``in_place``:
    its producer writes straight there."""

    tensor: str
    start: int
    stop: int
    in_place: bool

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ConcatEntry:
    """A Concat whose inputs live inside its output (``plan_concat_slices``).

    ``contiguous``: every slice is one contiguous block (all dims before ``axis`` are 1)."""

    output: str
    axis: int
    slices: tuple[ConcatSlice, ...]
    contiguous: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices))


@dataclass(frozen=True)
class ConcatPlan:
    """Concat node name -> its ``ConcatEntry``; empty: no Concat is eliminated."""

    concats: Mapping[str, ConcatEntry] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.concats)

    def __len__(self) -> int:
        return len(self.concats)


@dataclass(frozen=True)
class PrecisionPlan:
    """Layer name -> compute precision, for every layer with a floating-point output
    (``assign_precisions``); other layers compute as their types say."""

    layers: Mapping[str, Precision] = field(default_factory=dict)

    def of(self, layer: str, default: Precision) -> Precision:
        return self.layers.get(layer, default)


class QuantDType(enum.StrEnum):
    """Storage type of a quantized tensor."""

    INT8 = "int8"
    UINT8 = "uint8"
    FP8_E4M3 = "fp8_e4m3"


@dataclass(frozen=True)
class QuantRecord:
    """How one tensor is quantized: ``real = (q - zero_point) * scale``.

    ``axis`` ``None``: per tensor (one scale and zero point); else per channel along ``axis``
    (one per channel). ``source``: where the scales came from (``"calibration:entropy"``,
    ``"qdq"``, ...)."""

    tensor: str
    dtype: QuantDType
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in self.zero_point))
        if not self.scale or len(self.scale) != len(self.zero_point):
            raise ValueError(f"tensor {self.tensor!r}: {len(self.scale)} scales for "
                             f"{len(self.zero_point)} zero points")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError(f"tensor {self.tensor!r}: a per-tensor record has one scale, "
                             f"not {len(self.scale)}; give the channel axis")
        if any(not s > 0 for s in self.scale):
            raise ValueError(f"tensor {self.tensor!r}: scales must be positive")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None


@dataclass(frozen=True)
class QuantizationPlan:
    """Tensor name -> its ``QuantRecord``; empty: nothing is quantized. ``channel_max``: for the
    float inputs of GEMMs, calibration's largest ``|x|`` per input channel (the last dim), from
    which ``quantize_layers`` smooths them (``ember.passes.int8``)."""

    tensors: Mapping[str, QuantRecord] = field(default_factory=dict)
    channel_max: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def get(self, tensor: str) -> QuantRecord | None:
        return self.tensors.get(tensor)


@dataclass(frozen=True)
class Records:
    """One of each decision record. ``layout`` is ``None`` where no layout was planned
    (``optimize=False``, a graph built by hand): kernels then keep their own formats."""

    layout: LayoutPlan | None = None
    concat: ConcatPlan = ConcatPlan()
    precision: PrecisionPlan = PrecisionPlan()
    quantization: QuantizationPlan = QuantizationPlan()

    def with_(self, **changes: Any) -> Records:
        return replace(self, **changes)

    # ---- the file schema ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "schema": RECORDS_SCHEMA,
            "layout": None if lay is None else {
                "preferred": lay.preferred.value, "nhwc": sorted(lay.nhwc), "weights": sorted(lay.weights),
                "conversions": [{"tensor": c.tensor, "to": c.to.value, "reader": c.reader}
                                for c in lay.conversions]},
            "concat": {name: {"output": e.output, "axis": e.axis, "contiguous": e.contiguous,
                              "slices": [{"tensor": s.tensor, "start": s.start, "stop": s.stop,
                                          "in_place": s.in_place} for s in e.slices]}
                       for name, e in self.concat.concats.items()},
            "precision": {name: p.value for name, p in self.precision.layers.items()},
            "quantization": {name: {"dtype": q.dtype.value, "scale": list(q.scale),
                                    "zero_point": list(q.zero_point), "axis": q.axis, "source": q.source}
                             for name, q in self.quantization.tensors.items()},
            "channel_max": {name: list(v) for name, v in self.quantization.channel_max.items()},
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Records:
        """The records of an engine file's manifest; ``EngineFileError`` when malformed."""
        if not isinstance(data, Mapping) or data.get("schema") != RECORDS_SCHEMA:
            found = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise EngineFileError(f"the engine's plan records have schema {found!r}, this Ember "
                                  f"reads {RECORDS_SCHEMA}; rebuild the engine with `ember build`")
        try:
            lay = data["layout"]
            layout = None if lay is None else LayoutPlan(
                Layout(lay["preferred"]), frozenset(lay["nhwc"]), frozenset(lay["weights"]),
                tuple(LayoutConversion(c["tensor"], Layout(c["to"]), c["reader"])
                      for c in lay["conversions"]))
            concat = ConcatPlan({
                name: ConcatEntry(e["output"], int(e["axis"]),
                                  tuple(ConcatSlice(s["tensor"], int(s["start"]), int(s["stop"]),
                                                    bool(s["in_place"])) for s in e["slices"]),
                                  bool(e["contiguous"]))
                for name, e in data["concat"].items()})
            precision = PrecisionPlan({name: Precision(p) for name, p in data["precision"].items()})
            quant = QuantizationPlan({
                name: QuantRecord(name, QuantDType(q["dtype"]), tuple(q["scale"]), tuple(q["zero_point"]),
                                  None if q["axis"] is None else int(q["axis"]), str(q.get("source", "")))
                for name, q in data["quantization"].items()},
                {name: tuple(float(x) for x in v) for name, v in data.get("channel_max", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EngineFileError(f"the engine's plan records are malformed ({type(e).__name__}: {e}); "
                                  f"rebuild the engine with `ember build`") from None
        return Records(layout, concat, precision, quant)
