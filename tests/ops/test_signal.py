"""Shape and type inference of the signal ops (HannWindow, HammingWindow, BlackmanWindow, DFT,
STFT, MelWeightMatrix): static and symbolic shapes, build-time values, and the errors that name
the node; plus the size rules the CPU kernels share (``ember.ops.signal``)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.errors import ShapeError
from ember.ir import DType, Node, OpType, TensorType
from ember.ops.attrs import DFTAttrs, MelWeightMatrixAttrs, STFTAttrs, WindowAttrs
from ember.ops.registry import infer_node
from ember.ops.signal import dft_axis, dft_size, mel_bin_edges, stft_frames

F, D, H = DType.FLOAT32, DType.FLOAT64, DType.FLOAT16
I32, I64 = DType.INT32, DType.INT64


def t(*shape, dtype=F):
    return TensorType(dtype, tuple(shape))


def scalar(dtype=I64):
    return TensorType(dtype, ())


def infer(op, attrs, *types, consts=()):
    node = Node("sig", op, tuple(f"i{k}" if ty is not None else "" for k, ty in enumerate(types)), ("y",), attrs)
    values = [None if v is None else np.asarray(v) for v in consts]
    values += [None] * (len(types) - len(values))
    return infer_node(node, list(types), values)[0]


# ---- windows --------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [OpType.HANN_WINDOW, OpType.HAMMING_WINDOW, OpType.BLACKMAN_WINDOW])
@pytest.mark.parametrize("dtype", [F, D, H, DType.INT32, DType.UINT8])
def test_window_has_size_values_of_the_output_datatype(op, dtype):
    assert infer(op, WindowAttrs(True, dtype), scalar(), consts=[10]) == TensorType(dtype, (10,))
    assert infer(op, WindowAttrs(False, dtype), scalar(I32), consts=[0]) == TensorType(dtype, (0,))


def test_window_of_a_run_time_size_has_a_symbolic_length():
    out = infer(OpType.HANN_WINDOW, WindowAttrs(), scalar())
    assert out.dtype == F and out.rank == 1 and isinstance(out.shape[0], str)


@pytest.mark.parametrize("bad, match", [
    ((t(2),), r"size must be a scalar"),
    ((scalar(F),), r"size must be a scalar of int32/int64"),
])
def test_window_size_must_be_an_integer_scalar(bad, match):
    with pytest.raises(ShapeError, match=r"node 'sig' \(HannWindow\).*" + match):
        infer(OpType.HANN_WINDOW, WindowAttrs(), *bad)


def test_negative_window_size_is_refused():
    with pytest.raises(ShapeError, match=r"node 'sig' \(BlackmanWindow\).*size is -3"):
        infer(OpType.BLACKMAN_WINDOW, WindowAttrs(), scalar(), consts=[-3])


def test_window_output_datatype_must_be_numeric():
    with pytest.raises(ShapeError, match=r"output_datatype bool"):
        infer(OpType.HAMMING_WINDOW, WindowAttrs(True, DType.BOOL), scalar(), consts=[4])


# ---- DFT ------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs, length, want", [
    (DFTAttrs(axis=1), None, (2, 10, 7, 2)),
    (DFTAttrs(axis=1, onesided=True), None, (2, 6, 7, 2)),
    (DFTAttrs(axis=-2, onesided=True), None, (2, 10, 4, 2)),
    (DFTAttrs(axis=1, onesided=True), 9, (2, 5, 7, 2)),
    (DFTAttrs(axis=2), 16, (2, 10, 16, 2)),
    (DFTAttrs(axis=1, inverse=True), 4, (2, 4, 7, 2)),
    (DFTAttrs(axis=1, inverse=True, onesided=True), None, (2, 18, 7, 1)),
    (DFTAttrs(axis=-3, inverse=True, onesided=True), 11, (2, 11, 7, 1)),
    (DFTAttrs(axis=0), None, (2, 10, 7, 2)),
])
@pytest.mark.parametrize("components", [1, 2])
def test_dft_static_shapes(attrs, length, want, components):
    types = [t(2, 10, 7, components)] + ([scalar()] if length is not None else [])
    assert infer(OpType.DFT, attrs, *types, consts=[None, length]) == t(*want)


@pytest.mark.parametrize("attrs, want", [
    (DFTAttrs(axis=1), ("b", "n", 2)),
    (DFTAttrs(axis=1, onesided=True), ("b", "((n)//2+1)", 2)),
    (DFTAttrs(axis=1, inverse=True, onesided=True), ("b", "(n-1)*2", 1)),
])
def test_dft_symbolic_shapes(attrs, want):
    assert infer(OpType.DFT, attrs, t("b", "n", 1, dtype=D)) == t(*want, dtype=D)


def test_dft_of_a_run_time_length_has_a_symbolic_axis():
    out = infer(OpType.DFT, DFTAttrs(axis=1), t(3, 8, 2), scalar())
    assert out.shape[0] == 3 and isinstance(out.shape[1], str) and out.shape[2] == 2


def test_dft_axis_input_known_at_build_time_or_not():
    x = t(3, 8, 5, 1)
    assert infer(OpType.DFT, DFTAttrs(axis=None), x, None, scalar(), consts=[None, None, 2]) == t(3, 8, 5, 2)
    assert infer(OpType.DFT, DFTAttrs(axis=None), x) == t(3, 8, 5, 2)  # opset 20's default, -2
    dynamic = infer(OpType.DFT, DFTAttrs(axis=None, onesided=True), x, None, scalar())
    assert dynamic.rank == 4 and dynamic.shape[-1] == 2 and all(isinstance(d, str) for d in dynamic.shape[:3])


@pytest.mark.parametrize("types, consts, attrs, match", [
    ([t(2, 8, 3)], [], DFTAttrs(axis=1), r"must end in a dim of 1 \(real\) or 2 \(real, imaginary\), not 3"),
    ([t(2, 8, 1)], [], DFTAttrs(axis=2), r"axis 2 is out of range.*\[-3, -2\] or \[0, 1\]"),
    ([t(2, 8, 1)], [], DFTAttrs(axis=-1), r"axis -1 is out of range"),
    ([t(2, 8, 1), scalar()], [None, 0], DFTAttrs(axis=1), r"dft_length is 0; it must be positive"),
    ([t(2, 1, 2)], [], DFTAttrs(axis=1, inverse=True, onesided=True), r"no transform length; give dft_length"),
    ([t(2, 8, 1), t(2)], [], DFTAttrs(axis=1), r"dft_length must be a scalar"),
    ([t(2, 8, 1, dtype=I64)], [], DFTAttrs(axis=1), r"input must be float16, bfloat16, float32 or float64"),
    ([t(8)], [], DFTAttrs(axis=0), r"input must have at least 2 dims"),
])
def test_dft_bad_inputs_name_the_node(types, consts, attrs, match):
    with pytest.raises(ShapeError, match=r"node 'sig' \(DFT\).*" + match):
        infer(OpType.DFT, attrs, *types, consts=consts)


# ---- STFT -----------------------------------------------------------------------------------
@pytest.mark.parametrize("types, consts, onesided, want", [
    ([t(2, 64, 1), scalar(), t(16)], [None, 8], True, (2, 7, 9, 2)),
    ([t(2, 64, 1), scalar(), t(16)], [None, 8], False, (2, 7, 16, 2)),
    ([t(2, 64, 2), scalar(), None, scalar()], [None, 5, None, 10], False, (2, 11, 10, 2)),
    ([t(2, 64, 1), scalar(), t(16), scalar(I32)], [None, 16, None, 16], True, (2, 4, 9, 2)),
    ([t(3, 20, 1), scalar()], [None, 4], True, (3, 1, 11, 2)),  # one frame of the whole signal
    ([t(2, 64), scalar(), t(15)], [None, 7], True, (2, 8, 8, 2)),  # [batch, length]: real
    ([t("b", 64, 1), scalar(), t(16)], [None, 8], True, ("b", 7, 9, 2)),
    ([t("b", "len", 1), scalar(), t(16)], [None, 4], True, ("b", "((len-16)//4+1)", 9, 2)),
    ([t("b", "len", 1), scalar()], [None, 4], True, ("b", 1, "((len)//2+1)", 2)),
])
def test_stft_shapes(types, consts, onesided, want):
    assert infer(OpType.STFT, STFTAttrs(onesided), *types, consts=consts) == t(*want)


def test_stft_of_run_time_sizes_has_symbolic_frames_and_bins():
    out = infer(OpType.STFT, STFTAttrs(), t(2, 64, 1), scalar(), None, scalar())
    assert out.shape[0] == 2 and out.shape[3] == 2 and isinstance(out.shape[1], str) and isinstance(out.shape[2], str)
    out = infer(OpType.STFT, STFTAttrs(), t(2, 64, 1), scalar(), t(16))  # run-time step: the bins are known
    assert isinstance(out.shape[1], str) and out.shape[2] == 9


@pytest.mark.parametrize("types, consts, match", [
    ([t(2, 64, 1), scalar()], [None, 0], r"frame_step is 0; it must be positive"),
    ([t(2, 64, 1), scalar()], [None, -2], r"frame_step is -2; it must be positive"),
    ([t(2, 64, 1), scalar(), t(16), scalar()], [None, 4, None, 12],
     r"the window has 16 values but frame_length is 12; they must match"),
    ([t(2, 64, 1), scalar(), t(80)], [None, 4], r"frame_length 80 is longer than the signal \(64 samples\)"),
    ([t(2, 64, 1), scalar(), None, scalar()], [None, 4, None, 0], r"frame_length is 0; it must be positive"),
    ([t(2, 64, 3), scalar()], [None, 4], r"must end in a dim of 1 \(real\) or 2"),
    ([t(2, 64, 1, 1), scalar()], [None, 4], r"signal must be \[batch, length, 1 or 2\]"),
    ([t(2, 64, 1), scalar(), t(4, 4)], [None, 4], r"window must be 1-D"),
    ([t(2, 64, 1), scalar(), t(16, dtype=D)], [None, 4], r"must have the signal's type"),
    ([t(2, 64, 1), scalar(F)], [None, 4], r"frame_step must be a scalar of int32/int64"),
])
def test_stft_bad_inputs_name_the_node(types, consts, match):
    with pytest.raises(ShapeError, match=r"node 'sig' \(STFT\).*" + match):
        infer(OpType.STFT, STFTAttrs(), *types, consts=consts)


# ---- MelWeightMatrix --------------------------------------------------------------------------
def _mel_types(low=F):
    return [scalar(), scalar(I32), scalar(), scalar(low), scalar(low)]


@pytest.mark.parametrize("dtype", [F, D, DType.INT32, DType.UINT8])
def test_mel_weight_matrix_shape(dtype):
    out = infer(OpType.MEL_WEIGHT_MATRIX, MelWeightMatrixAttrs(dtype), *_mel_types(),
                consts=[8, 16, 8192, 0.0, 4096.0])
    assert out == TensorType(dtype, (9, 8))


def test_mel_weight_matrix_of_run_time_values():
    out = infer(OpType.MEL_WEIGHT_MATRIX, MelWeightMatrixAttrs(), *_mel_types(), consts=[40, None, None, None, None])
    assert out.shape[1] == 40 and isinstance(out.shape[0], str)
    out = infer(OpType.MEL_WEIGHT_MATRIX, MelWeightMatrixAttrs(), *_mel_types(D), consts=[None, 400])
    assert out.shape[0] == 201 and isinstance(out.shape[1], str)


@pytest.mark.parametrize("consts, match", [
    ([0, 16, 8192, 0.0, 4096.0], r"num_mel_bins is 0"),
    ([8, 0, 8192, 0.0, 4096.0], r"dft_length is 0"),
    ([8, 16, 0, 0.0, 4096.0], r"sample_rate is 0"),
    ([8, 16, 8192, -5.0, 4096.0], r"must satisfy 0 <= lower <= upper"),
    ([8, 16, 8192, 3000.0, 1000.0], r"must satisfy 0 <= lower <= upper"),
    ([8, 16, 8192, 0.0, 8000.0], r"upper_edge_hertz 8000.0 Hz is past the last of the 9 spectrogram bins"),
])
def test_mel_weight_matrix_bad_values_name_the_node(consts, match):
    with pytest.raises(ShapeError, match=r"node 'sig' \(MelWeightMatrix\).*" + match):
        infer(OpType.MEL_WEIGHT_MATRIX, MelWeightMatrixAttrs(), *_mel_types(), consts=consts)


def test_mel_weight_matrix_hertz_must_be_floats():
    with pytest.raises(ShapeError, match=r"lower_edge_hertz must be a scalar of float16"):
        infer(OpType.MEL_WEIGHT_MATRIX, MelWeightMatrixAttrs(), *_mel_types(I64))


# ---- the shared size rules ----------------------------------------------------------------------
def test_size_rules():
    assert dft_axis(-2, 4) == 2 and dft_axis(0, 2) == 0
    assert dft_size(10, None, False, True) == (10, 6)
    assert dft_size(6, None, True, True) == (10, 10)
    assert dft_size(6, 7, True, True) == (7, 7)
    assert dft_size(8, 5, False, False) == (5, 5)
    assert stft_frames(64, 8, 16, None) == (16, 7)
    assert stft_frames(64, 8, None, None) == (64, 1)
    assert stft_frames(10, 3, None, 4) == (4, 3)


def test_mel_bin_edges_are_those_of_onnx_reference():
    # the reference's spacing divides the mel range by num_mel_bins + 2
    edges = mel_bin_edges(8, 16, 8192, 0.0, 4096.0)
    assert len(edges) == 10 and edges == sorted(edges) and edges[0] == 0 and edges[-1] <= 8
