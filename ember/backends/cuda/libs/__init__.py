"""Bindings of the libraries the CUDA kernels call beyond PyTorch's own operators.

- ``cudnn_graph``: cuDNN operation graphs (fused conv epilogues, attention) through NVIDIA's
  cuDNN frontend (the optional ``nvidia-cudnn-frontend`` package), with a persistent plan cache;
- ``triton_ops``: Ember's Triton kernels as plain tensor functions (bias + activation epilogue,
  LayerNorm, softmax, NHWC max pooling, LRN); ``triton_conv``: the implicit-GEMM convolution
  that writes through any output strides; ``triton_elementwise``: generated kernels for fused
  elementwise chains; ``triton_jit``: the ``@triton.jit`` functions behind them.

Every module here imports without the library (and without a GPU): the library is imported when
a kernel is first built or launched, and ``available()`` / ``ember.backends.cuda.device``'s
``triton_available()`` tell the registry whether the tactics that need it apply. The layer
kernels that use these bindings are in ``ember.backends.cuda.kernels``.
"""
from __future__ import annotations

import sys
from typing import Any, Optional


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
