"""Element types of tensors in the IR. Strings from files become a ``DType`` once, in frontends."""
from __future__ import annotations

import enum
from typing import Any

import numpy as np


class DType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT64 = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    # 8-bit floats (ONNX 19+, FP8 quantization): storage types with their own rounding and range,
    # converted to and from by Cast / QuantizeLinear / DequantizeLinear only (``is_float`` is False:
    # no arithmetic runs in them). Named as torch and ml_dtypes name them.
    FLOAT8E4M3FN = "float8_e4m3fn"
    FLOAT8E4M3FNUZ = "float8_e4m3fnuz"
    FLOAT8E5M2 = "float8_e5m2"
    FLOAT8E5M2FNUZ = "float8_e5m2fnuz"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64)

    @property
    def is_float8(self) -> bool:
        return self in _FLOAT8

    @property
    def is_int(self) -> bool:
        return self in (DType.INT8, DType.UINT8, DType.INT16, DType.UINT16, DType.INT32, DType.INT64,
                        DType.UINT32, DType.UINT64)

    def to_numpy(self) -> np.dtype[Any]:
        """The numpy dtype of this type; the 8-bit floats are ml_dtypes' (as onnx's numpy_helper
        gives them)."""
        if self is DType.BFLOAT16:
            raise TypeError("numpy has no bfloat16; keep bfloat16 tensors in torch")
        if self in _FLOAT8:
            import ml_dtypes

            f8: np.dtype[Any] = np.dtype(getattr(ml_dtypes, self.value))
            return f8
        dtype: np.dtype[Any] = np.dtype(self.value)  # numpy types np.dtype(str) as Any
        return dtype

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> DType:
        name = np.dtype(dtype).name
        try:
            return DType(name)
        except ValueError:
            raise TypeError(f"numpy dtype {name} has no Ember equivalent") from None

    @staticmethod
    def parse(name: str) -> DType:
        """``DType.parse("fp16")`` -> FLOAT16; accepts numpy and short names."""
        key = _ALIASES.get(name.lower(), name.lower())
        try:
            return DType(key)
        except ValueError:
            valid = ", ".join(d.value for d in DType)
            raise ValueError(f"unknown dtype {name!r}; expected one of {valid}") from None


_FLOAT8 = frozenset({DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ})
_ITEMSIZE = {
    DType.FLOAT32: 4, DType.FLOAT16: 2, DType.BFLOAT16: 2, DType.FLOAT64: 8, DType.INT8: 1,
    DType.UINT8: 1, DType.INT16: 2, DType.UINT16: 2, DType.INT32: 4, DType.INT64: 8, DType.BOOL: 1,
    DType.UINT32: 4, DType.UINT64: 8, **{d: 1 for d in _FLOAT8},
}
#: The largest finite value of each 8-bit float (what a saturating conversion clamps to).
FLOAT8_MAX = {DType.FLOAT8E4M3FN: 448.0, DType.FLOAT8E4M3FNUZ: 240.0, DType.FLOAT8E5M2: 57344.0,
              DType.FLOAT8E5M2FNUZ: 57344.0}
_ALIASES = {
    "fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
    "bf16": "bfloat16", "fp64": "float64", "double": "float64", "long": "int64", "int": "int32",
}
