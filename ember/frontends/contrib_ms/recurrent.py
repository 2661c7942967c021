"""DynamicQuantizeLSTM: an LSTM whose W and R are int8/uint8 with per-direction (or
per-direction and per-gate-column) scales and zero points.

Lowered to a float LSTM on the dequantized weights: ``(W - zero_point) * scale``, transposed from
ONNX Runtime's ``[directions, input, 4 * hidden]`` to ONNX's ``[directions, 4 * hidden, input]``
(gate order iofc in both). ONNX Runtime also quantizes X and the hidden state on the fly; that
rounding is not reproduced, so results agree to the quantization step, not bit for bit.
"""
from __future__ import annotations

import numpy as np

from ember.frontends.contrib_ms.common import contrib, int_attr, need
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import CastAttrs, ReshapeAttrs, RNNActivation, RNNAttrs, RNNDirection, TransposeAttrs
from ember.ops.plugin import Lowering, PluginAttrs
from ember.ops.recurrent import DEFAULT_ACTIVATIONS, N_ACTIVATIONS

_ACTIVATIONS = {a.value.lower(): a for a in RNNActivation}


def _dequantized(lo: Lowering, w: str, scale: str, zp: str, what: str) -> str:
    """(float(w) - float(zp)) * scale, scales [D] or [D, 4H] broadcast over [D, rows, 4H];
    then transposed to [D, 4H, rows]."""
    st = lo.type(scale)
    if st.rank not in (1, 2):
        raise lo.reject(f"{what}_scale {st} must be [directions] or [directions, 4 * hidden]")
    shape = (0, 1, 1) if st.rank == 1 else (0, 1, -1)
    target = lo.constant(np.array(shape, np.int64), f"{what}_scale_shape")
    (wf,) = lo.op(OpType.CAST, [w], CastAttrs(to=DType.FLOAT32), suffix=f"{what}_f32")
    (zf,) = lo.op(OpType.CAST, [zp], CastAttrs(to=DType.FLOAT32), suffix=f"{what}_zp_f32")
    (z3,) = lo.op(OpType.RESHAPE, [zf, target], ReshapeAttrs(), suffix=f"{what}_zp_b")
    (s3,) = lo.op(OpType.RESHAPE, [scale, target], ReshapeAttrs(), suffix=f"{what}_scale_b")
    (centered,) = lo.op(OpType.SUB, [wf, z3], None, suffix=f"{what}_centered")
    (deq,) = lo.op(OpType.MUL, [centered, s3], None, suffix=f"{what}_dequantized")
    (t,) = lo.op(OpType.TRANSPOSE, [deq], TransposeAttrs(perm=(0, 2, 1)), suffix=f"{what}_onnx_layout")
    return t


@contrib("DynamicQuantizeLSTM")
def dynamic_quantize_lstm(lo: Lowering, a: PluginAttrs) -> None:
    """LSTM(X, dequantized W, dequantized R, B, sequence_lens, initial_h, initial_c, P)."""
    hidden = int_attr(a, "hidden_size", 0)
    if hidden <= 0:
        raise lo.reject("hidden_size is missing (Ember needs it to size the outputs)")
    try:
        direction = RNNDirection(str(a.get("direction", "forward")))
    except ValueError:
        raise lo.reject(f"direction {a.get('direction')!r} is not one of "
                       + ", ".join(RNNDirection.values())) from None
    dirs = 2 if direction is RNNDirection.BIDIRECTIONAL else 1
    names = a.get("activations")
    if names is None:
        acts = DEFAULT_ACTIVATIONS[OpType.LSTM] * dirs
    else:
        if len(names) != N_ACTIVATIONS[OpType.LSTM] * dirs or any(str(n).lower() not in _ACTIVATIONS for n in names):
            raise lo.reject(f"activations {tuple(names)} are not {N_ACTIVATIONS[OpType.LSTM] * dirs} of "
                           + ", ".join(RNNActivation.values()))
        acts = tuple(_ACTIVATIONS[str(n).lower()] for n in names)
    clip = a.get("clip")
    attrs = RNNAttrs(hidden_size=hidden, direction=direction, activations=acts,
                     activation_alpha=tuple(float(v) for v in a.get("activation_alpha", ()) or ()),
                     activation_beta=tuple(float(v) for v in a.get("activation_beta", ()) or ()),
                     clip=None if clip is None else float(clip), layout=0,
                     input_forget=bool(int_attr(a, "input_forget", 0)))
    w = _dequantized(lo, need(lo, 1, "W"), need(lo, 8, "W_scale"), need(lo, 9, "W_zero_point"), "w")
    r = _dequantized(lo, need(lo, 2, "R"), need(lo, 10, "R_scale"), need(lo, 11, "R_zero_point"), "r")
    inputs = [need(lo, 0, "X"), w, r] + [lo.input(i) for i in range(3, 8)]
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = list(lo.outputs[:3])
    while outputs and not outputs[-1]:
        outputs.pop()
    lo.op(OpType.LSTM, inputs, attrs, outputs=outputs, suffix="lstm")
