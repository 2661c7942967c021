"""Tensor data types of the KServe v2 protocol, Triton's model config, and numpy.

KServe names (``"FP32"``) are what requests and metadata carry; Triton's ``TYPE_FP32`` names are
what ``config.pbtxt``-style configs and the ``/config`` endpoint use.
"""
from __future__ import annotations

import numpy as np

from ember.serve.errors import ModelConfigError

#: KServe v2 datatype -> numpy dtype, for every type a tensor of Ember can hold.
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_KSERVE: dict[np.dtype, str] = {v: k for k, v in KSERVE_TO_NUMPY.items()}

#: KServe datatypes that exist in the protocol but that no Ember engine takes or returns.
UNSUPPORTED = ("BYTES", "BF16")

_ALIASES = {
    "FLOAT32": "FP32", "FLOAT": "FP32", "FLOAT16": "FP16", "HALF": "FP16", "FLOAT64": "FP64",
    "DOUBLE": "FP64", "STRING": "BYTES",
}


def parse_datatype(text: str, where: str) -> str:
    """Returns the KServe name for ``FP32``, ``TYPE_FP32``, ``fp32`` or ``float32``.

    >>> parse_datatype("TYPE_FP16", "input x")
    'FP16'
    """
    key = str(text).upper()
    key = key[len("TYPE_"):] if key.startswith("TYPE_") else key
    key = _ALIASES.get(key, key)
    if key not in KSERVE_TO_NUMPY:
        valid = ", ".join(KSERVE_TO_NUMPY)
        raise ModelConfigError(f"{where}: unknown or unsupported datatype {text!r}; use one of {valid}")
    return key


def to_numpy(datatype: str) -> np.dtype:
    """numpy dtype of a KServe datatype that ``parse_datatype`` accepted."""
    return KSERVE_TO_NUMPY[datatype]


def from_numpy(dtype: np.dtype) -> str:
    """KServe name of a numpy dtype; raises ``ModelConfigError`` for dtypes KServe lacks."""
    try:
        return NUMPY_TO_KSERVE[np.dtype(dtype)]
    except KeyError:
        raise ModelConfigError(f"numpy dtype {np.dtype(dtype).name} has no KServe v2 datatype") from None


def triton_name(datatype: str) -> str:
    """``"FP32"`` -> ``"TYPE_FP32"`` (the enum name of Triton's model_config.proto)."""
    return "TYPE_" + datatype
