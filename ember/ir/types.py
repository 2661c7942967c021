"""Tensor types: an element type and a shape whose dims are ints or symbolic names."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ember.ir.dtype import DType

#: A dimension: a known size, or a symbol (``"batch"``) fixed only at run time.
Dim: TypeAlias = int | str


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int:
        if not self.is_static:
            raise ValueError(f"tensor of shape {format_shape(self.shape)} has symbolic dims")
        return math.prod(self.shape)  # type: ignore[arg-type]

    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.value}{format_shape(self.shape)}"


def format_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def parse_shape(text: str) -> tuple[int, ...]:
    """``parse_shape("1x3x224x224")`` -> (1, 3, 224, 224)."""
    try:
        return tuple(int(p) for p in text.lower().split("x")) if text else ()
    except ValueError:
        raise ValueError(f"bad shape {text!r}: write dims separated by 'x', e.g. 1x3x224x224") from None
