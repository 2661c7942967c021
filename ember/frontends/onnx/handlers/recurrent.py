"""LSTM, GRU, RNN: every ONNX attribute form (directions, layout, clip, activations,
sequence_lens, initial states, peepholes, input_forget, linear_before_reset)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import RNNAttrs
from ember.ops.recurrent import DEFAULT_ACTIVATIONS, N_ACTIVATIONS

#: Activation names ONNX recurrent ops accept (case-insensitive in files), canonical spelling.
ACTIVATIONS = {name.lower(): name for name in (
    "Sigmoid", "Tanh", "Relu", "HardSigmoid", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
    "Affine", "Elu", "Softsign", "Softplus")}


def _activations(op: OpType, n: OnnxNode, dirs: int) -> tuple[str, ...]:
    names = n.attr("activations")
    if names is None:
        return DEFAULT_ACTIVATIONS[op] * dirs
    want = N_ACTIVATIONS[op] * dirs
    if len(names) != want:
        raise reject(f"it lists {len(names)} activations; {op} with {dirs} direction(s) needs {want}")
    out = []
    for name in names:
        if name.lower() not in ACTIVATIONS:
            raise reject(f"activation {name!r} is not one of {', '.join(ACTIVATIONS.values())}")
        out.append(ACTIVATIONS[name.lower()])
    return tuple(out)


def _rnn(op: OpType):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Attributes canonicalized into RNNAttrs; inputs and outputs kept in ONNX order."""
        hidden = n.attr("hidden_size")
        if hidden is None:
            raise reject("hidden_size is missing; Ember needs it to size the outputs")
        direction = n.attr("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise reject(f"direction {direction!r} is not forward, reverse or bidirectional")
        dirs = 2 if direction == "bidirectional" else 1
        clip = n.attr("clip")
        attrs = RNNAttrs(
            hidden_size=int(hidden), direction=direction, activations=_activations(op, n, dirs),
            activation_alpha=tuple(float(v) for v in n.attr("activation_alpha", ())),
            activation_beta=tuple(float(v) for v in n.attr("activation_beta", ())),
            clip=None if clip is None else float(clip), layout=int(n.attr("layout", 0)),
            input_forget=bool(n.attr("input_forget", 0)),
            linear_before_reset=bool(n.attr("linear_before_reset", 0)))
        n_out = 3 if op is OpType.LSTM else 2
        ctx.emit(n, op, n.inputs, n.outputs[:n_out], attrs)

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


for _name, _op in (("LSTM", OpType.LSTM), ("GRU", OpType.GRU), ("RNN", OpType.RNN)):
    onnx_op(_name, since=7)(_rnn(_op))
