"""LSTM, GRU, RNN: every ONNX attribute form (directions, layout, clip, activations,
sequence_lens, initial states, peepholes, input_forget, linear_before_reset)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, choice, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import RNNActivation, RNNAttrs, RNNDirection
from ember.ops.recurrent import DEFAULT_ACTIVATIONS, N_ACTIVATIONS

#: Activation names by their lower-case spelling: ONNX files write them in any case.
_ACTIVATIONS = {a.value.lower(): a for a in RNNActivation}


def _activations(op: OpType, n: OnnxNode, dirs: int) -> tuple[RNNActivation, ...]:
    names = n.attr("activations")
    if names is None:
        return DEFAULT_ACTIVATIONS[op] * dirs
    want = N_ACTIVATIONS[op] * dirs
    if len(names) != want:
        raise reject(f"it lists {len(names)} activations; {op} with {dirs} direction(s) needs {want}")
    out = []
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise reject(f"attribute activations: {name!r} is not one of "
                         + ", ".join(repr(a) for a in RNNActivation.values()))
        out.append(_ACTIVATIONS[name.lower()])
    return tuple(out)


def _rnn(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Attributes canonicalized into RNNAttrs; inputs and outputs kept in ONNX order."""
        hidden = n.attr("hidden_size")
        if hidden is None:
            raise reject("hidden_size is missing; Ember needs it to size the outputs")
        direction = choice(n, "direction", RNNDirection.FORWARD)
        dirs = 2 if direction is RNNDirection.BIDIRECTIONAL else 1
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
