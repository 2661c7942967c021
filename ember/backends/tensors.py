"""Tensors at the edges: ``DType`` <-> torch / numpy, the one error measure, the one maker of
random tensors for kernel timing.

``max_relative_error`` is the error measure of ``ember bench``, ``ember compare``,
accuracy-targeted builds and the CUDA tactic timer's accuracy check: one definition, so a
number printed by one tool means the same in another.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ember.errors import DeviceError
from ember.ir.dtype import DType
from ember.ir.types import TensorType

ArrayLike = Union[np.ndarray, torch.Tensor]

_TORCH = {
    DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT64: torch.float64, DType.INT8: torch.int8, DType.UINT8: torch.uint8,
    DType.INT16: torch.int16, DType.UINT16: torch.uint16, DType.INT32: torch.int32, DType.INT64: torch.int64,
    DType.BOOL: torch.bool, DType.UINT32: torch.uint32, DType.UINT64: torch.uint64,
    DType.FLOAT8E4M3FN: torch.float8_e4m3fn, DType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.FLOAT8E5M2: torch.float8_e5m2, DType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}
_FROM_TORCH = {v: k for k, v in _TORCH.items()}
#: torch's 8-bit floats: storage, moved through numpy as their bytes (ml_dtypes' types there).
FLOAT8_TORCH = frozenset(_TORCH[d] for d in DType if d.is_float8)


#: ``int8`` / ``fp8``: the float operands and outputs of an INT8 or FP8 layer on CUDA, where such a
#: build's float layers run in half precision (the CPU's INT8 layers read and write float32 and
#: ask for none).
_COMPUTE = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
            "int8": torch.float16, "fp8": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype float activations and weights take in a layer of ``precision`` (a ``Precision``
    or its spelling): fp32 and tf32 compute in float32, fp16 and bf16 in their own type."""
    try:
        return _COMPUTE[str(precision)]
    except KeyError:
        raise DeviceError(f"precision {str(precision)!r} has no floating-point compute dtype; use one of "
                          f"{', '.join(_COMPUTE)}") from None


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
    flags = array.flags
    if not flags.c_contiguous or not flags.writeable:
        array = np.array(array, order="C", copy=True)
    if array.dtype.isbuiltin == 1:  # numpy's own types (ml_dtypes' are not): the common case, first
        t = torch.from_numpy(array)
    elif array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 (what onnx's numpy_helper makes)
        t = torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    elif array.dtype.name.startswith("float8_"):  # ml_dtypes' 8-bit floats: the same bytes
        t = torch.from_numpy(array.view(np.uint8)).view(_TORCH[DType(array.dtype.name)])
    else:
        t = torch.from_numpy(array)
    return t if device.type == "cpu" else t.to(device)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array of ``tensor`` (bfloat16 becomes float32: numpy has no bfloat16; the 8-bit
    floats become ml_dtypes' types, the same bytes)."""
    # an engine's CPU output takes no operator call but .numpy(): each is a dispatch on cold caches
    t = tensor.detach() if tensor.requires_grad else tensor
    if t.dtype == torch.bfloat16:
        t = t.float()
    if t.dtype in FLOAT8_TORCH:
        return t.cpu().contiguous().view(torch.uint8).numpy().view(_FROM_TORCH[t.dtype].to_numpy())
    return (t if t.device.type == "cpu" else t.cpu()).numpy()


def max_relative_error(ours: ArrayLike, ref: ArrayLike) -> float:
    """``max|ours - ref| / max|ref|`` in float64 (``inf`` on a shape mismatch, or where ``ours``
    has a NaN or infinity that ``ref`` has not); numpy arrays or torch tensors on any device
    (computed where the tensors are). Where both have NaN (or the same infinity) at the same
    place, that place counts as equal: NaN in, NaN out is right."""
    a, b = _as_f64(ours), _as_f64(ref)
    if a.shape != b.shape:
        return float("inf")
    if b.device != a.device:
        b = b.to(a.device)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if not bool((torch.isfinite(a) | same).all()):
        return float("inf")
    finite = torch.isfinite(b)
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    scale = float(b.abs()[finite].max()) if bool(finite.any()) else 0.0
    worst = float(diff.max()) if diff.numel() else 0.0
    return worst / scale if scale > 0 else worst


def _as_f64(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def random_tensor(t: TensorType, device: torch.device,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A tensor of static type ``t`` to run or time a kernel with: N(0, 1) floats (drawn where
    ``generator`` lives when one is given, so a seeded generator gives the same values every time),
    zeros for integers (always valid indices, shapes and axes), ones for booleans (an all-true
    mask). Give a CUDA tensor a CUDA generator: drawn on the CPU, a batch-256 activation took about
    0.2 s (the twenty-first session's INT8 ResNet-50 build spent 56 s of its three builds there)."""
    dtype = torch_dtype(t.dtype)
    shape = tuple(int(d) for d in t.shape)
    if dtype.is_floating_point:
        if generator is not None:
            drawn = torch.randn(shape, generator=generator, dtype=torch.float32, device=generator.device)
            return drawn.to(device=device, dtype=dtype)
        return torch.randn(shape, dtype=torch.float32, device=device).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)
