"""LSTM, GRU and RNN (ONNX semantics): shape/type inference.

Inputs: ``X, W, R, B?, sequence_lens?, initial_h?`` (LSTM adds ``initial_c?, P?``).
Outputs: ``Y`` ``[seq, dirs, batch, hidden]`` (layout 1: ``[batch, seq, dirs, hidden]``),
``Y_h`` ``[dirs, batch, hidden]`` (layout 1: ``[batch, dirs, hidden]``), LSTM's ``Y_c`` as ``Y_h``.
"""
from __future__ import annotations

from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import RNNActivation, RNNAttrs, RNNDirection
from ember.ops.common import Consts, Types, broadcast_dim, need_input, require, same_dtype
from ember.ops.registry import register_op

_SIGMOID, _TANH = RNNActivation.SIGMOID, RNNActivation.TANH

#: Gates per op (rows of W are ``gates * hidden_size``) and activation functions per direction.
GATES = {OpType.LSTM: 4, OpType.GRU: 3, OpType.RNN: 1}
N_ACTIVATIONS = {OpType.LSTM: 3, OpType.GRU: 2, OpType.RNN: 1}
DEFAULT_ACTIVATIONS: dict[OpType, tuple[RNNActivation, ...]] = {
    OpType.LSTM: (_SIGMOID, _TANH, _TANH), OpType.GRU: (_SIGMOID, _TANH), OpType.RNN: (_TANH,)}


def num_directions(a: RNNAttrs) -> int:
    return 2 if a.direction is RNNDirection.BIDIRECTIONAL else 1


def _infer_rnn(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    a: RNNAttrs = node.attrs
    x, w, r = (need_input(in_types, i, name) for i, name in enumerate(("X", "W", "R")))
    require(x.rank == 3 and w.rank == 3 and r.rank == 3, f"{node.op} X, W, R must be 3-D, got {x}, {w}, {r}")
    require(a.layout in (0, 1), f"{node.op} layout {a.layout} is not 0 or 1")
    dirs, hidden = num_directions(a), a.hidden_size
    same_dtype([x, w, r], f"{node.op} X, W and R")
    broadcast_dim(w.shape[0], dirs)
    broadcast_dim(w.shape[1], GATES[node.op] * hidden)
    broadcast_dim(w.shape[2], x.shape[2])
    seq, batch = (x.shape[0], x.shape[1]) if a.layout == 0 else (x.shape[1], x.shape[0])
    y: tuple[Dim, ...]
    state: tuple[Dim, ...]
    if a.layout == 0:
        y, state = (seq, dirs, batch, hidden), (dirs, batch, hidden)
    else:
        y, state = (batch, seq, dirs, hidden), (batch, dirs, hidden)
    outs = [x.with_shape(y), x.with_shape(state)]
    if node.op is OpType.LSTM:
        outs.append(x.with_shape(state))
    return outs


for _op in (OpType.LSTM, OpType.GRU, OpType.RNN):
    register_op(_op, attrs=RNNAttrs)(_infer_rnn)
