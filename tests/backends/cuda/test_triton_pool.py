"""Ember's Triton max pooling (``libs.triton_ops.max_pool2d_nhwc``): against PyTorch's pooling for
a small window (taps unrolled) and a large dilated one (taps in loops: ONNX's
``test_MaxPool2d_stride_padding_dilation`` has a 60x80 window, which unrolled took Triton minutes
to compile and then failed), with NaN in a window giving NaN. Under Triton's interpreter in CI."""
from __future__ import annotations

import pytest
import torch
from tritonkit import run_triton_check

_CHECK = r"""
import sys
import torch
import torch.nn.functional as F
from ember.backends.cuda.libs.triton_ops import max_pool2d_nhwc

dev = torch.device(sys.argv[1])
g = torch.Generator().manual_seed(0)
cases = [  # shape, kernel, strides, begins, ends, dilations
    ((2, 5, 9, 11), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)),
    ((1, 3, 40, 48), (6, 8), (2, 2), (1, 2), (1, 2), (3, 2)),  # 48 taps: unrolled
    ((1, 2, 40, 44), (9, 10), (3, 3), (2, 3), (2, 3), (2, 2)),  # 90 taps: loops
]
for shape, k, s, b, e, d in cases:
    x = torch.randn(shape, generator=g).to(dev)
    x[0, 0, 4, 4] = float("nan")
    want = F.max_pool2d(x, k, s, b, d)
    got = max_pool2d_nhwc(x, k, s, b, e, d, False)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got.isnan().any()), shape
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), shape
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant runs instead")
def test_max_pooling_under_tritons_interpreter():
    run_triton_check(_CHECK, "cpu")


@pytest.mark.cuda
def test_max_pooling_on_the_gpu():
    run_triton_check(_CHECK, "cuda")
