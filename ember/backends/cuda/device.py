"""CUDA-side helpers: the TF32 switch around a layer, Triton availability; ``compute_dtype``
(precision -> dtype) lives with the other tensor helpers in ``ember.backends.tensors``."""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional, Sequence

import torch

from ember.backends.tensors import FLOAT8_TORCH, compute_dtype, numpy_to_torch
from ember.errors import DeviceError

__all__ = ["compute_dtype"]  # re-exported for the CUDA kernels


def is_half(precision: str) -> bool:
    return precision in ("fp16", "bf16")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton can compile kernels here (needs the package and a CUDA GPU)."""
    if not torch.cuda.is_available():
        return False
    from ember.backends.cuda.libs import llvm_clash

    if llvm_clash():  # Triton next to TensorFlow's LLVM would abort the process
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no Triton"
        return False
    return True


def require_cuda(what: str = "a CUDA engine") -> torch.device:
    """The current CUDA device, or a ``DeviceError`` saying what to do instead."""
    if not torch.cuda.is_available():
        raise DeviceError(f"{what} needs an NVIDIA GPU with a CUDA build of PyTorch, and this machine "
                          f"has none; build and run with --device cpu instead")
    return torch.device("cuda", torch.cuda.current_device())


@contextlib.contextmanager
def tf32_scope(precision: str) -> Iterator[None]:
    """Sets cuBLAS/cuDNN TF32 for one layer call: on for ``tf32``, off for ``fp32``.

    PyTorch's defaults (cuDNN TF32 on, cuBLAS off) would make fp32 layers silently lossy or tf32
    layers slow; the flags are read when a kernel is chosen, so a captured CUDA graph keeps them.
    Half-precision layers leave the flags alone.
    """
    if precision not in ("fp32", "tf32"):
        yield
        return
    want = precision == "tf32"
    old_mm, old_dnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = want
    torch.backends.cudnn.allow_tf32 = want
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_mm
        torch.backends.cudnn.allow_tf32 = old_dnn


@contextlib.contextmanager
def conv_scope(precision: str) -> Iterator[None]:
    """Around a cuDNN convolution: ``tf32_scope`` plus cuDNN's benchmark mode, so the first call
    of each shape (the warm-up before capture, or tactic timing) times cuDNN's algorithms and
    keeps the fastest, as TensorRT does; later calls and graph replays reuse that choice. Only
    Ember's own conv calls see the flag (it is restored after each call)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with tf32_scope(precision):
            yield
    finally:
        torch.backends.cudnn.benchmark = old


def cast_float(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``t`` in ``dtype`` when it is a float tensor (ints, bools, 8-bit floats, which are storage,
    and ``None`` pass through)."""
    if t is None or not t.is_floating_point() or t.dtype == dtype or t.dtype in FLOAT8_TORCH:
        return t
    return t.to(dtype)


def cast_inputs(inputs: Sequence[Optional[torch.Tensor]], dtype: torch.dtype) -> list[Optional[torch.Tensor]]:
    return [cast_float(t, dtype) for t in inputs]


def host_tensor(v) -> torch.Tensor:
    """A CPU torch tensor of a numpy array or tensor, C-contiguous, keeping 0-d arrays 0-d
    (``np.ascontiguousarray`` would make them 1-d)."""
    if isinstance(v, torch.Tensor):
        return v.detach()
    import numpy as np

    # (ml_dtypes' bfloat16 and 8-bit floats, which torch.from_numpy refuses, as the same bytes)
    return numpy_to_torch(np.asarray(v), torch.device("cpu"))
