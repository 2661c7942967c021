"""A 1x1 convolution written straight into a channel slice of a Concat's buffer, as one GEMM.

In channels-last (NHWC) order a ``[N, C, H, W]`` tensor is the ``[N*H*W, C]`` matrix of its
pixels. A channel slice ``buf[:, a:b]`` of a channels-last Concat buffer ``[N, Ctot, H, W]`` is
then the matrix ``[N*H*W, b - a]`` with column stride 1 and row stride ``Ctot``: an ordinary
GEMM output with leading dimension ``ldc = Ctot``. A 1x1, stride-1, unpadded, ungrouped
convolution is exactly the GEMM ``X[N*H*W, Cin] @ W^T[Cin, Cout]``, so it can write its slice
with ``torch.addmm(bias, x2d, w_t, out=slice2d)`` and no temporary:

- CPU (``addmm_impl_cpu_``, MKL ``sgemm``): a result with ``stride(1) == 1`` and
  ``stride(0) >= size(1)`` (or the transposed case) is handed to BLAS as it is (``transpose_c``,
  ``ldc = stride(0)``); only other strides go through a contiguous copy. Checked here with the
  profiler: ``aten::addmm`` on such a view runs with no ``aten::copy_``/``clone`` of the result
  beyond the broadcast of the bias into it (tests/backends/test_gemm_into.py).
- CUDA (``addmm_out_cuda_impl``): ``cublasCommonArgs``/``prepare_matrix_for_cublas`` keep a
  result with ``stride(1) == 1`` and ``stride(0) >= size(1)`` as is (``result_ld = stride(0)``);
  the cuBLASLt epilogue path needs a contiguous result, so a strided slice takes the cuBLAS path
  (bias broadcast into the result, GEMM with beta = 1, ReLU in place), still without a copy of
  the result (``result.copy_(*args.result)`` runs only when a temporary was made).

``matrix_view`` is the test both backends' ``WriteInto.accepts`` use: the exact condition under
which aten's GEMM writes the given view without a temporary. The epilogue activation is applied
in place afterwards (``ember.backends.activations.inplace_activation``: TensorIterator ops, any
strides).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ember.backends.activations import InplaceAct
from ember.ops.attrs import ConvAttrs

Tensor = torch.Tensor


def pointwise_conv(a: ConvAttrs, w_shape: Sequence[int]) -> bool:
    """A 2-D 1x1, stride-1, unpadded, ungrouped convolution: a GEMM over the NHWC matrix.
    (``auto_pad`` of a 1x1 stride-1 kernel always resolves to no padding; dilation is moot.)"""
    return (len(w_shape) == 4 and tuple(w_shape[2:]) == (1, 1) and a.group == 1
            and all(int(s) == 1 for s in (a.strides or (1, 1)))
            and not any(int(p) for p in (a.pads or ())))


def matrix_view(t: Tensor) -> Optional[Tensor]:
    """``t`` (``[N, C, H, W]``) as the ``[N*H*W, C]`` matrix of its pixels, when that is a view
    aten's GEMM writes directly (row-major with ``ldc >= C``, or column-major with
    ``ldc >= N*H*W``: the conditions of ``addmm_impl_cpu_`` and ``prepare_matrix_for_cublas``);
    ``None`` when it is not a view or would need a temporary. Works on ``meta`` tensors."""
    if t.dim() != 4:
        return None
    try:
        m = t.permute(0, 2, 3, 1).view(-1, t.shape[1])
    except RuntimeError:  # not expressible as a view: NHW do not collapse into one stride
        return None
    rows, cols = m.shape
    s0, s1 = m.stride()
    if s1 == 1 and (rows == 1 or s0 >= max(1, cols)):
        return m
    if s0 == 1 and (cols == 1 or s1 >= max(1, rows)):
        return m
    return None


class MatrixViews:
    """``matrix_view`` at the cost of one ``as_strided`` per call: the decision and the matrix
    geometry are worked out once per (shape, strides) of the tensors met (a program meets the
    same few every run), which keeps the per-call Python work of a writing kernel below that of
    the copy it saves."""

    def __init__(self) -> None:
        self._seen: dict[tuple, Optional[tuple[tuple[int, ...], tuple[int, ...]]]] = {}

    def __call__(self, t: Tensor) -> Optional[Tensor]:
        key = (tuple(t.shape), t.stride())
        if key in self._seen:
            geo = self._seen[key]
        else:
            m = matrix_view(t)
            geo = None if m is None else (tuple(m.shape), m.stride())
            if len(self._seen) < 64:
                self._seen[key] = geo
        return None if geo is None else t.as_strided(geo[0], geo[1])


def input_matrix(x: Tensor) -> Tensor:
    """The input ``[N, Cin, H, W]`` as its ``[N*H*W, Cin]`` pixel matrix: a view when ``x`` is
    channels-last (also a channel slice of a wider tensor), else a channels-last copy (what the
    convolution itself would do with an NCHW input)."""
    m = matrix_view(x)
    if m is not None:
        return m
    x = x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def gemm_into(out2: Tensor, x2: Tensor, w_t: Tensor, bias: Optional[Tensor],
              residual2: Optional[Tensor], act: InplaceAct) -> None:
    """``out2 = act(x2 @ w_t + bias + residual2)`` computed in ``out2`` (a ``matrix_view``):
    the residual (or the bias) is put in ``out2`` first and the GEMM accumulates onto it
    (beta = 1; ``addmm`` with ``self`` being ``out`` copies nothing), then the activation."""
    if residual2 is not None:
        if bias is not None:
            torch.add(residual2, bias, out=out2)
        else:
            out2.copy_(residual2)
        torch.addmm(out2, x2, w_t, out=out2)
    elif bias is not None:
        torch.addmm(bias, x2, w_t, out=out2)
    else:
        torch.mm(x2, w_t, out=out2)
    act(out2)


__all__ = ["pointwise_conv", "matrix_view", "MatrixViews", "input_matrix", "gemm_into"]
