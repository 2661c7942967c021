"""Signal processing kernels: the window functions, DFT, STFT and MelWeightMatrix.

Transforms run in float32, or float64 for float64 signals; half-precision signals are widened
first (cuFFT takes half only for power-of-two lengths) and the result is rounded once.

On CPU tensors the transforms are numpy's (pocketfft, in the signal's own precision), the
library ONNX's reference implementation and ONNX's test data use: Ember's results agree with
them to the last bit, rounding noise included (ONNX's ``test_dft_inverse`` expects a float32
pocketfft's 1.9e-7 imaginary part where the exact value, and PyTorch's MKL FFT, give 0, with an
absolute tolerance of 1e-7). On audio-sized frames pocketfft is as fast as PyTorch's CPU FFT.
On any other device they are ``torch.fft``'s (cuFFT): the CUDA backend runs these same kernels
on GPU tensors, with the sizes, lengths and steps (``HOST_SLOTS``) on the host, so every tensor
made here is on the device of the input it comes from.

Sizes that are only known at run time are checked with the shape rules of ``ember.ops.signal``;
a bad one is an ``InputError`` naming the node.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, floats, int_param, ints, torch_dtype
from ember.backends.cpu.registry import register_kernel
from ember.errors import InputError, ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import DFTAttrs, MelWeightMatrixAttrs, STFTAttrs, WindowAttrs
from ember.ops.signal import dft_axis, dft_size, mel_bin_edges, stft_frames

_HAMMING_ALPHA = 25.0 / 46.0


def _hann(n: Tensor, period: int) -> Tensor:
    return torch.sin(n * math.pi / period) ** 2


def _hamming(n: Tensor, period: int) -> Tensor:
    return _HAMMING_ALPHA - torch.cos(n * math.pi * 2 / period) * (1 - _HAMMING_ALPHA)


def _blackman(n: Tensor, period: int) -> Tensor:
    return torch.cos(n * (math.pi * 2) / period) * -0.5 + torch.cos(n * (math.pi * 4) / period) * 0.08 + 0.42


#: Each window over ``n = 0 .. size - 1`` (float64) with period ``N``: the formulas of ONNX's
#: reference, evaluated in the same order, so that integer ``output_datatype``s (which truncate)
#: get the same values where a float lands a hair below 1 one way and on it the other.
WINDOW_FUNCTIONS: dict[OpType, Callable[[Tensor, int], Tensor]] = {
    OpType.HANN_WINDOW: _hann,
    OpType.HAMMING_WINDOW: _hamming,
    OpType.BLACKMAN_WINDOW: _blackman,
}


def _fail(node: Node, e: ShapeError) -> InputError:
    return InputError(f"node {node.name!r} ({node.op}): {e}")


def _scalar(node: Node, inputs: Inputs, i: int, what: str) -> int:
    values = ints(arg(inputs, i))
    if values is None or len(values) != 1:
        raise InputError(f"node {node.name!r} ({node.op}): {what} (input {i}) must be one integer, "
                         f"got {values}")
    return values[0]


def _optional_scalar(node: Node, ctx: CompileContext, i: int, what: str) -> Callable[[Inputs], Optional[int]]:
    """An optional scalar int input: read once when it is a constant, else at every run."""
    get = int_param(node, ctx, None, i)

    def resolve(inputs: Inputs) -> Optional[int]:
        values = get(inputs)
        if values is None:
            return None
        if len(values) != 1:
            raise InputError(f"node {node.name!r} ({node.op}): {what} (input {i}) must be one integer, "
                             f"got {len(values)} values")
        return values[0]

    return resolve


#: Each transform as (numpy's, torch's): the same signature, ``fn(signal, n=, axis= / dim=)``.
_TRANSFORMS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., Tensor]]] = {
    "fft": (np.fft.fft, torch.fft.fft),
    "ifft": (np.fft.ifft, torch.fft.ifft),
    "rfft": (np.fft.rfft, torch.fft.rfft),
    "irfft": (np.fft.irfft, torch.fft.irfft),
}


def transform(kind: str, signal: Tensor, n: Optional[int], dim: int, *, use_torch: bool = False) -> Tensor:
    """``fft``, ``ifft``, ``rfft`` or ``irfft`` of ``signal`` along ``dim`` (``n``: the length
    the axis is zero-padded or cut to first): numpy's on CPU tensors unless ``use_torch``,
    ``torch.fft``'s elsewhere."""
    numpy_fn, torch_fn = _TRANSFORMS[kind]
    if signal.device.type == "cpu" and not use_torch:
        return torch.from_numpy(numpy_fn(signal.numpy(), n=n, axis=dim))
    return torch_fn(signal, n=n, dim=dim)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_complex(node: Node, x: Tensor, components: int) -> tuple[Tensor, bool]:
    """``x[..., 1 or 2]`` in the working precision as a real or complex tensor without the
    component dim, and whether it is real."""
    if components not in (1, 2):
        raise InputError(f"node {node.name!r} ({node.op}): input {list(x.shape)} must end in a dim of 1 "
                         f"(real) or 2 (real, imaginary), not {components}")
    x = x.to(_work_dtype(x))
    if components == 1:
        return x[..., 0], True
    return torch.complex(x[..., 0], x[..., 1]), False


def _spectrum(y: Tensor, dtype: torch.dtype) -> Tensor:
    """A complex result as ``[..., 2]`` (real, imaginary) of ``dtype``."""
    return torch.view_as_real(y).to(dtype).contiguous()


# ---- window functions -------------------------------------------------------------------------
def _window(node: Node, ctx: CompileContext) -> Kernel:
    window = WINDOW_FUNCTIONS[node.op]
    attrs: WindowAttrs = node.attrs or WindowAttrs()
    out_dtype = torch_dtype(attrs.dtype)

    def run(inputs: Inputs) -> list:
        size = _scalar(node, inputs, 0, "size")
        if size < 0:
            raise InputError(f"node {node.name!r} ({node.op}): size is {size}; a window cannot have a "
                             f"negative length")
        # a symmetric window of one value divides by zero: NaN, as ONNX's reference and ONNX Runtime
        period = size if attrs.periodic else size - 1
        n = torch.arange(size, dtype=torch.float64, device=inputs[0].device)
        return [window(n, period).to(out_dtype)]

    return run


for _op in WINDOW_FUNCTIONS:
    register_kernel(_op)(_window)


# ---- DFT --------------------------------------------------------------------------------------
@register_kernel(OpType.DFT)
def dft(node: Node, ctx: CompileContext) -> Kernel:
    """The DFT along one axis: ``fft``/``rfft`` forward (a one-sided complex one keeps the first
    ``length // 2 + 1`` bins), ``ifft`` inverse (scaled by ``1 / length``), ``irfft`` for the
    inverse of a one-sided spectrum; ``dft_length`` zero-pads or truncates the axis first."""
    attrs: DFTAttrs = node.attrs or DFTAttrs()
    length_of = _optional_scalar(node, ctx, 1, "dft_length")
    axis_of = _optional_scalar(node, ctx, 2, "axis") if attrs.axis is None else (lambda inputs: attrs.axis)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        given = axis_of(inputs)
        try:
            axis = dft_axis(-2 if given is None else given, x.dim())
            length, _ = dft_size(x.shape[axis], length_of(inputs), attrs.inverse, attrs.onesided)
        except ShapeError as e:
            raise _fail(node, e) from None
        signal, real = _as_complex(node, x, x.shape[-1])
        if attrs.inverse and attrs.onesided:
            return [transform("irfft", signal, length, axis).unsqueeze(-1).to(x.dtype)]
        if attrs.inverse:
            return [_spectrum(transform("ifft", signal, length, axis), x.dtype)]
        if attrs.onesided and real:
            return [_spectrum(transform("rfft", signal, length, axis), x.dtype)]
        y = transform("fft", signal, length, axis)
        if attrs.onesided:  # a complex signal's spectrum has no symmetry: the first half, as ONNX's reference
            y = y.narrow(axis, 0, length // 2 + 1)
        return [_spectrum(y, x.dtype)]

    return run


# ---- STFT -------------------------------------------------------------------------------------
@register_kernel(OpType.STFT)
def stft(node: Node, ctx: CompileContext) -> Kernel:
    """Frames of ``frame_length`` samples every ``frame_step`` (``unfold``, no copy), each
    multiplied by the window and transformed: ``[batch, frames, bins, 2]``."""
    attrs: STFTAttrs = node.attrs or STFTAttrs()
    frame_length_of = _optional_scalar(node, ctx, 3, "frame_length")

    def run(inputs: Inputs) -> list:
        x, window = inputs[0], arg(inputs, 2)
        step = _scalar(node, inputs, 1, "frame_step")
        if window is not None and window.dim() != 1:
            raise InputError(f"node {node.name!r} (STFT): window must be 1-D, got {list(window.shape)}")
        if x.dim() not in (2, 3):
            raise InputError(f"node {node.name!r} (STFT): signal must be [batch, length, 1 or 2], "
                             f"got {list(x.shape)}")
        try:
            length, _ = stft_frames(x.shape[1], step, None if window is None else window.shape[0],
                                    frame_length_of(inputs))
        except ShapeError as e:
            raise _fail(node, e) from None
        signal, real = _as_complex(node, x if x.dim() == 3 else x.unsqueeze(-1), x.shape[2] if x.dim() == 3 else 1)
        frames = signal.unfold(1, length, step)  # [batch, frames, length]
        if window is not None:
            frames = frames * window.to(_work_dtype(x))
        if attrs.onesided and real:
            return [_spectrum(transform("rfft", frames, None, -1), x.dtype)]
        y = transform("fft", frames, None, -1)
        if attrs.onesided:
            y = y.narrow(-1, 0, length // 2 + 1)
        return [_spectrum(y, x.dtype)]

    return run


# ---- MelWeightMatrix --------------------------------------------------------------------------
@register_kernel(OpType.MEL_WEIGHT_MATRIX)
def mel_weight_matrix(node: Node, ctx: CompileContext) -> Kernel:
    """Triangular filters of peak 1 on the mel scale, one per column: rising from a filter's left
    edge bin to its peak bin, falling to (not including) its right edge bin; a filter whose left
    edge is its peak is 1 there. Integer output types truncate, as ONNX's reference does."""
    attrs: MelWeightMatrixAttrs = node.attrs or MelWeightMatrixAttrs()
    out_dtype = torch_dtype(attrs.dtype)

    def run(inputs: Inputs) -> list:
        mels, length, rate = (_scalar(node, inputs, i, what)
                              for i, what in enumerate(("num_mel_bins", "dft_length", "sample_rate")))
        low, high = (_float(node, inputs, i, what) for i, what in ((3, "lower_edge_hertz"), (4, "upper_edge_hertz")))
        try:
            edges = mel_bin_edges(mels, length, rate, low, high)
        except ShapeError as e:
            raise _fail(node, e) from None
        device = inputs[0].device
        e = torch.tensor(edges, dtype=torch.float64, device=device)
        left, peak, right = e[:-2], e[1:-1], e[2:]
        j = torch.arange(length // 2 + 1, dtype=torch.float64, device=device).unsqueeze(1)
        rising = (j - left) / (peak - left).clamp(min=1)
        out = torch.where((j >= left) & (j <= peak), rising, torch.zeros((), dtype=torch.float64, device=device))
        out = torch.where((peak == left) & (j == peak), torch.ones((), dtype=torch.float64, device=device), out)
        falling = (right - j) / (right - peak).clamp(min=1)
        out = torch.where((j >= peak) & (j < right), falling, out)
        return [out.to(out_dtype)]

    return run


def _float(node: Node, inputs: Inputs, i: int, what: str) -> float:
    values = floats(arg(inputs, i))
    if values is None or len(values) != 1:
        raise InputError(f"node {node.name!r} ({node.op}): {what} (input {i}) must be one number, got {values}")
    return values[0]
