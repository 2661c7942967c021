"""Signal processing (ONNX opset 17+): HannWindow, HammingWindow, BlackmanWindow, DFT, STFT,
MelWeightMatrix.

Complex tensors are real tensors whose last dim holds (real, imaginary) pairs: a signal is
``[..., 1]`` (real) or ``[..., 2]`` (complex), and every spectrum is ``[..., 2]``. The size
rules (``dft_size``, ``stft_frames``, ``mel_bin_edges``) are plain functions on ints, so the CPU
kernels check run-time values with the same rules and messages as shape inference does at build
time.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import DFTAttrs, MelWeightMatrixAttrs, STFTAttrs, WindowAttrs
from ember.ops.common import (
    Consts,
    Types,
    affine_dim,
    const_at,
    fresh_dims,
    input_at,
    make_dim,
    need_input,
    require,
)
from ember.ops.registry import register_op

#: Element types of signals and spectra (ONNX's T1 of DFT and STFT).
SIGNAL_DTYPES = (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64)
#: Element types of sizes, lengths and steps (ONNX's T2).
INDEX_DTYPES = (DType.INT32, DType.INT64)
#: ``output_datatype`` values the generators accept (ONNX's T2 of the windows, T3 of MelWeightMatrix).
GENERATED_DTYPES = (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64, DType.INT8, DType.UINT8,
                    DType.INT16, DType.UINT16, DType.INT32, DType.UINT32, DType.INT64, DType.UINT64)

WINDOW_OPS = (OpType.HANN_WINDOW, OpType.HAMMING_WINDOW, OpType.BLACKMAN_WINDOW)


# ---- size rules (shared with the kernels) ---------------------------------------------------
def dft_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[0, rank - 1)``: negative counts from the back, and the last (component)
    dim is never the transformed one (ONNX's accepted range ``[-r, -2] U [0, r - 2]``)."""
    if not -rank <= axis <= rank - 2 or axis == -1:
        raise ShapeError(f"DFT axis {axis} is out of range for an input of rank {rank}: it must be "
                         f"in [{-rank}, -2] or [0, {rank - 2}] (the last dim holds the real/imaginary "
                         f"components and is not transformed)")
    return axis + rank if axis < 0 else axis


def dft_size(n: int, dft_length: Optional[int], inverse: bool, onesided: bool) -> tuple[int, int]:
    """``(transform length, output length along the axis)`` of a DFT of ``n`` samples.

    Without ``dft_length`` the transform is ``n`` long, or ``2 * (n - 1)`` for the inverse of a
    one-sided spectrum (an even-length real signal, as numpy's ``irfft``); a forward one-sided
    DFT keeps ``length // 2 + 1`` bins.
    """
    if dft_length is None:
        length = 2 * (n - 1) if inverse and onesided else n
        if length <= 0:
            raise ShapeError(f"the DFT axis has {n} samples, which leaves no transform length; "
                             f"give dft_length")
    else:
        length = dft_length
        if length <= 0:
            raise ShapeError(f"dft_length is {length}; it must be positive")
    return length, (length // 2 + 1 if onesided and not inverse else length)


def stft_frames(signal_length: int, frame_step: int, window_length: Optional[int],
                frame_length: Optional[int]) -> tuple[int, int]:
    """``(frame length, frame count)`` of an STFT; ShapeError for a step or length that cannot be."""
    if frame_step <= 0:
        raise ShapeError(f"frame_step is {frame_step}; it must be positive")
    if window_length is not None and frame_length is not None and window_length != frame_length:
        raise ShapeError(f"the window has {window_length} values but frame_length is {frame_length}; "
                         f"they must match (or give only one of them)")
    length = frame_length if frame_length is not None else window_length
    if length is None:
        length = signal_length
    if length <= 0:
        raise ShapeError(f"frame_length is {length}; it must be positive")
    if length > signal_length:
        raise ShapeError(f"frame_length {length} is longer than the signal ({signal_length} samples)")
    return length, (signal_length - length) // frame_step + 1


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_bin_edges(num_mel_bins: int, dft_length: int, sample_rate: int, lower_edge_hertz: float,
                  upper_edge_hertz: float) -> list[int]:
    """The spectrogram bin of each triangle's left edge, peak and right edge: ``num_mel_bins + 2``
    points evenly spaced on the mel scale from ``lower_edge_hertz``, at steps of
    ``(mel(upper) - mel(lower)) / (num_mel_bins + 2)`` (ONNX's reference and ONNX Runtime),
    each at bin ``floor((dft_length + 1) * hz / sample_rate)``."""
    if num_mel_bins <= 0:
        raise ShapeError(f"num_mel_bins is {num_mel_bins}; it must be positive")
    if dft_length <= 0:
        raise ShapeError(f"dft_length is {dft_length}; it must be positive")
    if sample_rate <= 0:
        raise ShapeError(f"sample_rate is {sample_rate}; it must be positive")
    if not 0 <= lower_edge_hertz <= upper_edge_hertz:
        raise ShapeError(f"lower_edge_hertz {lower_edge_hertz} and upper_edge_hertz {upper_edge_hertz} "
                         f"must satisfy 0 <= lower <= upper")
    bins = dft_length // 2 + 1
    for name, hz in (("lower_edge_hertz", lower_edge_hertz), ("upper_edge_hertz", upper_edge_hertz)):
        if math.floor((dft_length + 1) * hz / sample_rate) >= bins:
            raise ShapeError(f"{name} {hz} Hz is past the last of the {bins} spectrogram bins of a "
                             f"{dft_length}-point DFT at {sample_rate} Hz (at most sample_rate / 2)")
    low, high = _hz_to_mel(lower_edge_hertz), _hz_to_mel(upper_edge_hertz)
    step = (high - low) / (num_mel_bins + 2)
    edges = []
    for i in range(num_mel_bins + 2):
        hz = 700.0 * (10.0 ** ((low + step * i) / 2595.0) - 1.0)
        edges.append(int(((dft_length + 1) * hz) // sample_rate))
    return edges


# ---- shape inference --------------------------------------------------------------------------
def _scalar(in_types: Types, consts: Consts, i: int, what: str, dtypes: Sequence[DType] = INDEX_DTYPES,
            required: bool = True) -> tuple[bool, Optional[float | int]]:
    """Checks scalar input ``i`` (rank 0, or one value); returns (present, its build-time value)."""
    t = input_at(in_types, i)
    if t is None:
        require(not required, f"required input {what} is missing")
        return False, None
    require(t.dtype in dtypes, f"{what} must be a scalar of {'/'.join(d.value for d in dtypes)}, got {t}")
    one = t.rank == 0 or (t.rank == 1 and (t.shape[0] == 1 or isinstance(t.shape[0], str)))
    require(one, f"{what} must be a scalar, got {t}")
    value = const_at(consts, i)
    if value is None:
        return True, None
    flat = value.reshape(-1)
    require(flat.size == 1, f"{what} must be one value, got {flat.size}")
    return True, (float(flat[0]) if t.dtype.is_float else int(flat[0]))


def _signal(in_types: Types, what: str, min_rank: int) -> TensorType:
    x = need_input(in_types, 0, what)
    require(x.dtype in SIGNAL_DTYPES, f"{what} must be float16, bfloat16, float32 or float64, got {x}")
    require(x.rank >= min_rank, f"{what} must have at least {min_rank} dims, got {x}")
    return x


def _components(x: TensorType, what: str) -> None:
    last = x.shape[-1]
    require(not isinstance(last, int) or last in (1, 2),
            f"{what} {x} must end in a dim of 1 (real) or 2 (real, imaginary), not {last}")


def _window(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Window(size) -> [size] of ``output_datatype``."""
    attrs = node.attrs or WindowAttrs()
    require(attrs.dtype in GENERATED_DTYPES, f"output_datatype {attrs.dtype.value} is not a numeric type")
    _, size = _scalar(in_types, consts, 0, "size")
    if size is None:
        return [TensorType(attrs.dtype, fresh_dims(node.outputs[0], 1))]
    require(int(size) >= 0, f"size is {size}; a window cannot have a negative length")
    return [TensorType(attrs.dtype, (int(size),))]


for _op in WINDOW_OPS:
    register_op(_op, attrs=WindowAttrs)(_window)


@register_op(OpType.DFT, attrs=DFTAttrs)
def infer_dft(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """DFT(input[..., n, ..., 1 or 2], dft_length?, axis?) -> [..., m, ..., 2] (the inverse of a
    one-sided spectrum: ``[..., m, ..., 1]``)."""
    attrs: DFTAttrs = node.attrs or DFTAttrs()
    x = _signal(in_types, "input", 2)
    _components(x, "input")
    has_length, length = _scalar(in_types, consts, 1, "dft_length", required=False)
    axis: Optional[int] = attrs.axis
    if axis is None:
        has_axis, given = _scalar(in_types, consts, 2, "axis", dtypes=(DType.INT64,), required=False)
        axis = -2 if not has_axis else (None if given is None else int(given))  # opset 20's default: -2
    last: Dim = 1 if attrs.inverse and attrs.onesided else 2
    if axis is None:  # known only at run time: every signal dim may change
        return [x.with_shape((*fresh_dims(node.outputs[0], x.rank - 1), last))]
    a = dft_axis(axis, x.rank)
    n = x.shape[a]
    out: Dim
    if length is not None:  # the axis' own size does not matter then
        _, out = dft_size(0, int(length), attrs.inverse, attrs.onesided)
    elif has_length:  # a dft_length known only at run time
        out = f"{node.outputs[0]}_d{a}"
    elif isinstance(n, int):
        _, out = dft_size(n, None, attrs.inverse, attrs.onesided)
    elif attrs.inverse and attrs.onesided:
        out = make_dim(2, [f"({n}-1)"])
    elif attrs.onesided:
        out = affine_dim(n, 0, 2)
    else:
        out = n
    return [x.with_shape((*x.shape[:a], out, *x.shape[a + 1:-1], last))]


@register_op(OpType.STFT, attrs=STFTAttrs)
def infer_stft(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """STFT(signal[batch, length, 1 or 2] or [batch, length], frame_step, window?[frame_length],
    frame_length?) -> [batch, frames, bins, 2]."""
    attrs: STFTAttrs = node.attrs or STFTAttrs()
    x = _signal(in_types, "signal", 2)
    require(x.rank in (2, 3), f"signal must be [batch, length, 1 or 2] (or [batch, length]), got {x}")
    if x.rank == 3:
        _components(x, "signal")
    _, step = _scalar(in_types, consts, 1, "frame_step")
    window = input_at(in_types, 2)
    if window is not None:
        require(window.rank == 1, f"window must be 1-D [frame_length], got {window}")
        require(window.dtype == x.dtype, f"window {window} must have the signal's type {x.dtype}")
    _, frame_length = _scalar(in_types, consts, 3, "frame_length", required=False)
    if step is not None:
        require(int(step) > 0, f"frame_step is {step}; it must be positive")
    length = x.shape[1]
    win = window.shape[0] if window is not None else None
    fl: Optional[Dim]  # None: known only at run time
    if input_at(in_types, 3) is not None:
        fl = None if frame_length is None else int(frame_length)
    else:
        fl = win if window is not None else length
    if isinstance(fl, int) and isinstance(win, int):
        require(fl == win, f"the window has {win} values but frame_length is {fl}; they must match")
    if isinstance(fl, int):
        require(fl > 0, f"frame_length is {fl}; it must be positive")
        require(not isinstance(length, int) or fl <= length,
                f"frame_length {fl} is longer than the signal ({length} samples)")
    fresh = fresh_dims(node.outputs[0], 4)
    frames: Dim = fresh[1]
    if step is None or fl is None:
        pass
    elif isinstance(length, int) and isinstance(fl, int):
        frames = stft_frames(length, int(step), None, fl)[1]
    elif fl == length:
        frames = 1
    elif isinstance(fl, int):
        frames = affine_dim(length, -fl, int(step))
    bins: Dim = fresh[2] if fl is None else (affine_dim(fl, 0, 2) if attrs.onesided else fl)
    return [TensorType(x.dtype, (x.shape[0], frames, bins, 2))]


@register_op(OpType.MEL_WEIGHT_MATRIX, attrs=MelWeightMatrixAttrs)
def infer_mel_weight_matrix(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """MelWeightMatrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz)
    -> [dft_length // 2 + 1, num_mel_bins]."""
    attrs: MelWeightMatrixAttrs = node.attrs or MelWeightMatrixAttrs()
    require(attrs.dtype in GENERATED_DTYPES, f"output_datatype {attrs.dtype.value} is not a numeric type")
    _, mels = _scalar(in_types, consts, 0, "num_mel_bins")
    _, length = _scalar(in_types, consts, 1, "dft_length")
    _, rate = _scalar(in_types, consts, 2, "sample_rate")
    _, low = _scalar(in_types, consts, 3, "lower_edge_hertz", dtypes=SIGNAL_DTYPES)
    _, high = _scalar(in_types, consts, 4, "upper_edge_hertz", dtypes=SIGNAL_DTYPES)
    if mels is not None:
        require(int(mels) > 0, f"num_mel_bins is {mels}; it must be positive")
    if length is not None:
        require(int(length) > 0, f"dft_length is {length}; it must be positive")
    if mels is not None and length is not None and rate is not None and low is not None and high is not None:
        mel_bin_edges(int(mels), int(length), int(rate), float(low), float(high))
    fresh = fresh_dims(node.outputs[0], 2)
    rows: Dim = int(length) // 2 + 1 if length is not None else fresh[0]
    return [TensorType(attrs.dtype, (rows, int(mels) if mels is not None else fresh[1]))]
