"""Bindings of the libraries the CUDA kernels call beyond PyTorch's own operators.

- ``cudnn_graph``: cuDNN operation graphs (fused conv epilogues, attention) through NVIDIA's
  cuDNN frontend (the optional ``nvidia-cudnn-frontend`` package), with a persistent plan cache;
- ``triton_ops``: Ember's Triton kernels as plain tensor functions (bias + activation epilogue,
  LayerNorm, softmax, NHWC max pooling, LRN); ``triton_conv``: the implicit-GEMM convolution
  that writes through any output strides; ``triton_elementwise``: generated kernels for fused
  elementwise chains; ``triton_jit``: the ``@triton.jit`` functions behind them. Their big
  kernels launch through ``launch``, which inside ``compiling_ahead()`` only starts the kernel's
  compile (the tactic timer's precompile: every candidate compiled in parallel before any is timed).

Every module here imports without the library (and without a GPU): the library is imported when
a kernel is first built or launched, and ``available()`` / ``ember.backends.cuda.device``'s
``triton_available()`` tell the registry whether the tactics that need it apply. The layer
kernels that use these bindings are in ``ember.backends.cuda.kernels``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from contextvars import ContextVar
from typing import Any, Iterator, Optional


def llvm_clash() -> Optional[str]:
    """Why Triton must not be imported into this process, or None. TensorFlow bundles its own LLVM,
    and loading Triton's next to it aborts the whole process ("LLVM ERROR: inconsistency in
    registered CommandLine options"), whichever comes second; so once TensorFlow is loaded (a
    TensorFlow or Keras model converted in this process), Ember's Triton tactics do not apply and
    the CUDA build uses the library kernels (INT8 on CUDA is refused with this reason)."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        return ("TensorFlow is loaded in this process, and Triton next to it would abort the process "
                "(both bundle LLVM); convert the TensorFlow/Keras model to .onnx or .ember in another "
                "process (`ember build model.keras -o model.ember`), then build or load it here")
    return None


def triton_modules() -> tuple[Any, Any]:
    """``(triton, triton.language)`` where Triton may be imported into this process, else
    ``(None, None)``: no package (CPU CI), or TensorFlow loaded (``llvm_clash``). The kernel modules
    bind them at import and define their ``@triton.jit`` functions only when they are there."""
    if llvm_clash():  # Triton next to TensorFlow's LLVM would abort the process
        return None, None
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - machines without Triton (CPU CI)
        return None, None
    return triton, tl


#: inside ``compiling_ahead``: ``launch`` starts compiles, runs nothing
_AHEAD: ContextVar[bool] = ContextVar("ember_triton_compiling_ahead", default=False)


def launch(kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``; inside ``compiling_ahead()`` the kernel is only compiled
    (in the background, for these arguments' types and specializations) and nothing runs: what it
    would have written stays unwritten."""
    if _AHEAD.get():
        kernel.warmup(*args, grid=grid, **kwargs)
        return
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def compiling_ahead(workers: Optional[int] = None) -> Iterator[bool]:
    """Within it, ``launch`` hands each kernel's compile to a pool of ``workers`` threads (default:
    the CPUs, at most 16) and returns at once; leaving it waits for every compile, and a launch
    after it finds its kernel compiled. A compile that fails is dropped: the real launch compiles
    again and raises. Yields ``False`` and changes nothing where that cannot be done: no Triton, a
    Triton without ``AsyncCompileMode`` (before 3.4), Triton's interpreter, or
    ``EMBER_TRITON_PRECOMPILE=0``. Threads help because a compile spends most of its time in
    ``ptxas`` (a subprocess) and LLVM, outside the GIL."""
    triton, _ = triton_modules()
    mode = getattr(triton, "AsyncCompileMode", None) if triton is not None else None
    if (mode is None or os.environ.get("TRITON_INTERPRET") == "1"
            or os.environ.get("EMBER_TRITON_PRECOMPILE", "1") == "0" or _AHEAD.get()):
        yield False
        return
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="ember-triton-compile") as pool:
        with mode(pool, ignore_errors=True):
            token = _AHEAD.set(True)
            try:
                yield True
            finally:
                _AHEAD.reset(token)
