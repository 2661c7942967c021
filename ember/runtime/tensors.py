"""Conversions between Ember's ``DType`` and torch / numpy at the runtime's edges."""
from __future__ import annotations

import numpy as np
import torch

from ember.ir.dtype import DType

_TORCH = {
    DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT64: torch.float64, DType.INT8: torch.int8, DType.UINT8: torch.uint8,
    DType.INT16: torch.int16, DType.INT32: torch.int32, DType.INT64: torch.int64,
    DType.BOOL: torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TORCH.items()}


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype of an Ember ``DType``."""
    return _TORCH[dtype]


def from_torch_dtype(dtype: torch.dtype) -> DType:
    """The Ember ``DType`` of a torch dtype; ``TypeError`` if Ember has none."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise TypeError(f"torch dtype {dtype} has no Ember equivalent") from None


def numpy_to_torch(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A torch tensor holding ``array`` (shares memory on the CPU when it can; never read-only)."""
    if not array.flags.c_contiguous or not array.flags.writeable:
        array = np.array(array, order="C", copy=True)
    t = torch.from_numpy(array)
    return t if device.type == "cpu" else t.to(device)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array of ``tensor`` (bfloat16 becomes float32: numpy has no bfloat16)."""
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def max_relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours - ref| / max|ref|`` in float64 (``inf`` on a shape mismatch or NaN): the error
    measure of ``ember bench``, ``ember compare`` and accuracy-targeted builds."""
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape or not np.isfinite(a).all():
        return float("inf")
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else diff
