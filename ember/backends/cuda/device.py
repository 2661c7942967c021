"""CUDA-side helpers: the TF32 switch around a layer, Triton availability, the per-forward memo
(``forward_scope`` / ``per_forward``); ``compute_dtype`` (precision -> dtype) lives with the other
tensor helpers in ``ember.backends.tensors``."""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Hashable, Iterator, Optional, Sequence

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


_FORWARD_MEMO: contextvars.ContextVar[Optional[tuple[bool, dict[Any, tuple[torch.Tensor, torch.Tensor]]]]] = \
    contextvars.ContextVar("ember_cuda_forward_memo", default=None)


@contextlib.contextmanager
def forward_scope(per_stream: bool = False) -> Iterator[None]:
    """One forward of a CUDA program (``CudaProgram.forward``, also while a CUDA graph captures
    it; the tactic timer's runs of one layer): what ``per_forward`` derives from a tensor is kept
    until the forward ends. ``per_stream``: the forward runs layers on several streams, so each
    stream derives its own (a layer on another stream could read the result before the stream
    that computes it has)."""
    token = _FORWARD_MEMO.set((per_stream, {}))
    try:
        yield
    finally:
        _FORWARD_MEMO.reset(token)


def per_forward(t: torch.Tensor, tag: Hashable, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(t)``, computed once per forward and per ``tag`` for the same tensor object ``t``: the
    attention mask every layer of a transformer reads is prepared by the first layer that reads
    it, and inside a CUDA graph once per replay (BERT-base: 12 layers, 5 small kernels each). A
    tensor of the program's environment is never written while layers still read it, so the same
    object means the same values; the memo holds ``t``, so its ``id`` is not reused within the
    forward. Outside a forward (a kernel called on its own): ``fn(t)`` every time."""
    scope = _FORWARD_MEMO.get()
    if scope is None:
        return fn(t)
    per_stream, memo = scope
    stream = torch.cuda.current_stream(t.device).cuda_stream if per_stream and t.is_cuda else 0
    key = (id(t), tag, stream)
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    out = fn(t)
    memo[key] = (t, out)
    return out
