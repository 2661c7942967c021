"""Signal processing (opset 17+): HannWindow, HammingWindow, BlackmanWindow, DFT, STFT,
MelWeightMatrix."""
from __future__ import annotations

import onnx

from ember.frontends.onnx.context import ONNX_DTYPES, ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import reject, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import DFTAttrs, MelWeightMatrixAttrs, STFTAttrs, WindowAttrs
from ember.ops.signal import GENERATED_DTYPES


def _flag(n: OnnxNode, name: str, default: int) -> bool:
    value = n.attr(name, default)
    if value not in (0, 1):
        raise reject(f"attribute {name}={value!r} must be 0 or 1")
    return bool(value)


def _output_datatype(n: OnnxNode) -> DType:
    """``output_datatype`` (default 1, float32) as a DType; a type the op cannot make is refused."""
    code = int(n.attr("output_datatype", 1))
    dtype = ONNX_DTYPES.get(code)
    if dtype is None or dtype not in GENERATED_DTYPES:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else "unknown"
        allowed = ", ".join(f"{d.value} ({c})" for c, d in ONNX_DTYPES.items() if d in GENERATED_DTYPES)
        raise reject(f"attribute output_datatype={code} ({name}) is not a type {n.op_type} makes "
                     f"(allowed: {allowed})")
    return dtype


def _window(op: OpType) -> None:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        ctx.emit(n, op, n.inputs[:1], n.outputs[:1],
                 WindowAttrs(periodic=_flag(n, "periodic", 1), dtype=_output_datatype(n)))

    handler.__name__ = f"import_{op.name.lower()}"
    onnx_op(op.value, since=17)(handler)


for _op in (OpType.HANN_WINDOW, OpType.HAMMING_WINDOW, OpType.BLACKMAN_WINDOW):
    _window(_op)


@onnx_op("DFT", since=17)
def import_dft_17(ctx: ImportContext, n: OnnxNode) -> None:
    """DFT 17: ``axis`` is an attribute (default 1)."""
    ctx.emit(n, OpType.DFT, strip_trailing_empty(n.inputs[:2]), n.outputs[:1],
             DFTAttrs(axis=int(n.attr("axis", 1)), inverse=_flag(n, "inverse", 0),
                      onesided=_flag(n, "onesided", 0)))


@onnx_op("DFT", since=20)
def import_dft_20(ctx: ImportContext, n: OnnxNode) -> None:
    """DFT 20: ``axis`` is an optional scalar input (default -2); a constant one becomes the
    attribute, one computed at run time stays input 2."""
    inverse, onesided = _flag(n, "inverse", 0), _flag(n, "onesided", 0)
    if not n.input(2):
        axis: int | None = -2
    else:
        values = ctx.const_ints(n.input(2))
        if values is not None and len(values) != 1:
            raise reject(f"its axis input {n.input(2)!r} has {len(values)} values; it must be a scalar")
        axis = None if values is None else values[0]
    inputs = strip_trailing_empty(n.inputs[:2]) if axis is not None else (n.input(0), n.input(1), n.input(2))
    ctx.emit(n, OpType.DFT, inputs, n.outputs[:1], DFTAttrs(axis=axis, inverse=inverse, onesided=onesided))


@onnx_op("STFT", since=17)
def import_stft(ctx: ImportContext, n: OnnxNode) -> None:
    """STFT(signal, frame_step, window?, frame_length?)."""
    ctx.emit(n, OpType.STFT, strip_trailing_empty(n.inputs[:4]), n.outputs[:1],
             STFTAttrs(onesided=_flag(n, "onesided", 1)))


@onnx_op("MelWeightMatrix", since=17)
def import_mel_weight_matrix(ctx: ImportContext, n: OnnxNode) -> None:
    missing = [what for i, what in enumerate(("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
                                              "upper_edge_hertz")) if not n.input(i)]
    if missing:
        raise reject(f"its required input(s) {', '.join(missing)} are missing")
    ctx.emit(n, OpType.MEL_WEIGHT_MATRIX, n.inputs[:5], n.outputs[:1],
             MelWeightMatrixAttrs(dtype=_output_datatype(n)))
