"""What layer handlers work with: ``CaffeLayer`` (one layer, its IR inputs and outputs, its
trained blobs) and ``CaffeContext`` (the graph under construction, on the frontend-neutral
``GraphBuilder``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ember.errors import ModelLoadError, UnsupportedOpError
from ember.frontends.caffe.reader import Blob, format_dims, legacy_matches
from ember.frontends.graph_builder import GraphBuilder
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType


@dataclass
class CaffeLayer:
    """One Caffe layer as handlers see it: ``bottoms`` are IR tensor names (the current version
    of each bottom blob), ``tops`` the IR names the handler must define, ``blobs`` the trained
    parameters (None when the caffemodel has no layer of this name)."""

    param: Any  # caffe_pb2.LayerParameter
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    blobs: Optional[list[Blob]]
    weights_label: str = "the weights"
    #: (blobs needed, blobs found) when the weights lack some: the import goes on with zeros so
    #: that every such layer is reported at once
    missing: Optional[tuple[int, int]] = None

    @property
    def name(self) -> str:
        return str(self.param.name)

    @property
    def type(self) -> str:
        return str(self.param.type)

    @property
    def label(self) -> str:
        return f"layer {self.name!r} ({self.type})"

    def bottom(self, i: int = 0) -> str:
        if i >= len(self.bottoms):
            raise reject(f"it needs at least {i + 1} bottom(s), the network gives {len(self.bottoms)}")
        return self.bottoms[i]

    def top(self, i: int = 0) -> str:
        if i >= len(self.tops):
            raise reject(f"it needs at least {i + 1} top(s), the network gives {len(self.tops)}")
        return self.tops[i]

    def count(self, bottoms: Optional[int] = None, tops: Optional[int] = None,
              min_bottoms: int = 1) -> None:
        """Checks the number of bottoms and tops (exact counts when given)."""
        if bottoms is not None and len(self.bottoms) != bottoms:
            raise reject(f"it takes {bottoms} bottom(s), the network gives {len(self.bottoms)}")
        if bottoms is None and len(self.bottoms) < min_bottoms:
            raise reject(f"it takes at least {min_bottoms} bottom(s), the network gives {len(self.bottoms)}")
        if tops is not None and len(self.tops) != tops:
            raise reject(f"it makes {tops} top(s), the network names {len(self.tops)}")

    def blob(self, i: int, expected: Sequence[int], what: str, needed: int) -> np.ndarray:
        """Trained blob ``i`` (``what``: its role, for messages), checked against ``expected``
        as Caffe checks it (the same shape, or an old 4-D shape that pads it with leading 1s).
        ``needed``: how many blobs the layer takes, for the missing-weights report."""
        have = self.blobs or []
        want = tuple(int(d) for d in expected)
        if i >= len(have):
            self.missing = (needed, len(have))
            return np.zeros(want, np.float32)
        blob = have[i]
        found = tuple(int(d) for d in blob.array.shape)
        if found != want and not (blob.legacy and legacy_matches(found, want)):
            if not (math_prod(want) == 1 and math_prod(found) == 1 and len(want) <= 1):
                raise ModelLoadError(
                    f"{self.weights_label}: {self.label}: blob {i} ({what}) has shape "
                    f"{format_dims(found)} but the network needs {format_dims(want)}; the weights are "
                    f"not for this network (or the prototxt was changed after training)")
        return blob.array.reshape(want)

    def extra_blobs(self, allowed: int) -> None:
        """Refuses blobs beyond what the layer takes (Caffe: 'Incorrect number of weight blobs')."""
        have = len(self.blobs or [])
        if have > allowed:
            raise ModelLoadError(f"{self.weights_label}: {self.label} has {have} blobs but the layer "
                                 f"takes {allowed}; the weights are not for this network (check "
                                 f"bias_term and the layer's type)")


def math_prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def reject(reason: str) -> UnsupportedOpError:
    """The error a handler raises for a form of its layer Ember cannot import (the importer
    adds the layer's name and type)."""
    return UnsupportedOpError(reason)


class CaffeContext(GraphBuilder):
    """One Caffe import: the frontend-neutral ``GraphBuilder`` plus helpers that name IR nodes,
    intermediate tensors and constants after the Caffe layer they come from."""

    def emit(self, layer: CaffeLayer, op: OpType, inputs: Sequence[str], outputs: Sequence[str],
             attrs: Any = None, suffix: str = "") -> Node:
        """Adds an IR node made from ``layer`` (named after it; ``/suffix`` for the second and
        later nodes of one layer) and infers its output types at once."""
        name = layer.name + (f"/{suffix}" if suffix else "")
        return self.add_node(op, inputs, outputs, attrs, name=name, origin=(layer.name,))

    def temp(self, layer: CaffeLayer, what: str) -> str:
        """A fresh name for an intermediate tensor of ``layer``."""
        return self.fresh(f"{layer.name}/{what}")

    def weight(self, layer: CaffeLayer, what: str, value: np.ndarray) -> str:
        """A constant of ``layer`` (float32), named ``<layer>/<what>``."""
        return self.add_constant(self.fresh(f"{layer.name}/{what}"),
                                 np.ascontiguousarray(value, dtype=np.float32))

    def ints(self, layer: CaffeLayer, what: str, values: Sequence[int]) -> str:
        """An int64 vector constant of ``layer`` (shapes for Reshape)."""
        return self.add_constant(self.fresh(f"{layer.name}/{what}"), np.asarray(list(values), np.int64))

    def scalar(self, layer: CaffeLayer, what: str, value: float) -> str:
        return self.add_scalar(f"{layer.name}/{what}", value, DType.FLOAT32)

    def rank(self, name: str) -> int:
        return self.type(name).rank

    def tensor(self, name: str) -> TensorType:
        return self.type(name)
