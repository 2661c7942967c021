"""LSTM, GRU, RNN kernels with ONNX semantics: a step loop over the sequence in PyTorch, and
``torch.lstm`` / ``torch.gru`` (cuDNN on the GPU) for the forms those compute (``fused_applies``).

Handles both directions, layout 1, ``sequence_lens`` (steps past a batch entry's length output 0
and keep its state; the reverse direction starts at each entry's last valid step), initial
states, LSTM peepholes and ``input_forget``, GRU ``linear_before_reset``, ``clip`` and every
ONNX activation. Only tensor ops are used (no host reads), so it also runs on the GPU.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import ACTIVATIONS, RNN_ACTIVATIONS
from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg
from ember.backends.cpu.registry import register_kernel
from ember.errors import BuildError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import RNNAttrs, activation_params
from ember.ops.recurrent import DEFAULT_ACTIVATIONS, GATES, N_ACTIVATIONS, num_directions

Act = Callable[[Tensor], Tensor]

#: The ONNX RNN activations that are no epilogue ``Activation`` (those come from the activation
#: table, ``RNN_ACTIVATIONS``): name -> (function of (x, alpha, beta), default alpha, default
#: beta); a default of None: the function takes no such parameter.
RNN_ONLY: dict[str, tuple[Callable[[Tensor, float, float], Tensor], Optional[float], Optional[float]]] = {
    "Softsign": (lambda x, a, b: F.softsign(x), None, None),
    "Softplus": (lambda x, a, b: F.softplus(x), None, None),
    "ThresholdedRelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), 1.0, None),
    "ScaledTanh": (lambda x, a, b: a * torch.tanh(b * x), 1.0, 1.0),
    "Affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "Elu": (lambda x, a, b: F.elu(x, a), 1.0, None),
}


def _table_activation(name: str, alphas: list[float], betas: list[float]) -> Act:
    """The activation-table row ``name`` names; it takes as many of (alpha, beta) as its
    ``Activation`` has parameters, ONNX's defaults (``activation_params``) where the lists ran out."""
    act = RNN_ACTIVATIONS[name]
    defaults = activation_params(act, ())
    given = [alphas.pop(0) if alphas else defaults[0]] if len(defaults) > 0 else []
    if len(defaults) > 1:
        given.append(betas.pop(0) if betas else defaults[1])
    return ACTIVATIONS[act].fn(activation_params(act, given))


def activation_fns(node: Node) -> list[Act]:
    """One function per listed activation of ``node``; alphas/betas are consumed in order by
    those taking them."""
    a: RNNAttrs = node.attrs
    alphas, betas = [float(v) for v in a.activation_alpha], [float(v) for v in a.activation_beta]
    out: list[Act] = []
    for name in a.activations:
        if name in RNN_ACTIVATIONS:
            out.append(_table_activation(name, alphas, betas))
            continue
        if name not in RNN_ONLY:
            known = ", ".join(sorted({*RNN_ACTIVATIONS, *RNN_ONLY}))
            raise BuildError(f"node {node.name!r} ({node.op}): activation {name!r} is not an ONNX RNN "
                             f"activation this backend knows ({known}); fix the model's activations")
        fn, da, db = RNN_ONLY[name]
        alpha = (alphas.pop(0) if alphas else da) if da is not None else 0.0
        beta = (betas.pop(0) if betas else db) if db is not None else 0.0
        out.append(lambda x, fn=fn, al=float(alpha), be=float(beta): fn(x, al, be))
    return out


def _clipped(fn: Act, clip: Optional[float]) -> Act:
    if clip is None:
        return fn
    return lambda x: fn(torch.clamp(x, -clip, clip))


def _step_order(seq: int, lens: Optional[Tensor], reverse: bool, device: torch.device) -> Optional[Tensor]:
    """Per (step, batch) source step index for the reverse direction ([seq, batch]), else None."""
    if not reverse:
        return None
    t = torch.arange(seq, device=device).unsqueeze(1)
    if lens is None:
        return (seq - 1 - t).expand(seq, 1)
    lens = lens.to(device=device, dtype=torch.int64).unsqueeze(0)
    return torch.where(t < lens, lens - 1 - t, t)


def _reorder(x: Tensor, order: Optional[Tensor]) -> Tensor:
    """``x[order[t, b], b]`` for a [seq, batch, ...] tensor."""
    if order is None:
        return x
    idx = order.expand(x.shape[0], x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
    return torch.gather(x, 0, idx.expand_as(x))


Cell = Callable[[Tensor, list[Tensor]], list[Tensor]]


def _run_direction(x: Tensor, state: list[Tensor], cell: Cell, lens: Optional[Tensor],
                   reverse: bool) -> tuple[Tensor, list[Tensor]]:
    """Runs ``cell`` over x [seq, batch, in]; returns Y [seq, batch, hidden] and the final states."""
    seq = x.shape[0]
    order = _step_order(seq, lens, reverse, x.device)
    xs = _reorder(x, order)
    ys = []
    for t in range(seq):
        new = cell(xs[t], state)
        if lens is not None:
            valid = (t < lens.to(device=x.device)).unsqueeze(1)
            state = [torch.where(valid, n, s) for n, s in zip(new, state)]
            ys.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
        else:
            state = new
            ys.append(new[0])
    y = torch.stack(ys) if ys else x.new_zeros((0, x.shape[1], state[0].shape[-1]))
    return _reorder(y, order), state


def _lstm_cell(w: Tensor, r: Tensor, b: Tensor, p: Tensor, acts: list[Act], a: RNNAttrs) -> Cell:
    f, g, h = (_clipped(fn, a.clip) for fn in acts)
    pi, po, pf = p.chunk(3)
    b = b[:4 * a.hidden_size] + b[4 * a.hidden_size:]  # Wb + Rb

    def cell(xt: Tensor, state: list[Tensor]) -> list[Tensor]:
        hp, cp = state
        i, o, fg, c = (xt @ w.T + hp @ r.T + b).chunk(4, dim=-1)
        i = f(i + pi * cp)
        fg = 1 - i if a.input_forget else f(fg + pf * cp)
        c_new = fg * cp + i * g(c)
        o = f(o + po * c_new)
        return [o * h(c_new), c_new]

    return cell


def _gru_cell(w: Tensor, r: Tensor, b: Tensor, acts: list[Act], a: RNNAttrs) -> Cell:
    f, g = (_clipped(fn, a.clip) for fn in acts)
    hidden = a.hidden_size
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    rz, rh = r[:2 * hidden], r[2 * hidden:]

    def cell(xt: Tensor, state: list[Tensor]) -> list[Tensor]:
        hp = state[0]
        xz, xr, xh = (xt @ w.T + wb).chunk(3, dim=-1)
        hz, hr = (hp @ rz.T + rb[:2 * hidden]).chunk(2, dim=-1)
        z, rg = f(xz + hz), f(xr + hr)
        if a.linear_before_reset:
            hh = g(xh + rg * (hp @ rh.T + rb[2 * hidden:]))
        else:
            hh = g(xh + (rg * hp) @ rh.T + rb[2 * hidden:])
        return [(1 - z) * hh + z * hp]

    return cell


def _rnn_cell(w: Tensor, r: Tensor, b: Tensor, acts: list[Act], a: RNNAttrs) -> Cell:
    f = _clipped(acts[0], a.clip)
    bias = b[:a.hidden_size] + b[a.hidden_size:]

    def cell(xt: Tensor, state: list[Tensor]) -> list[Tensor]:
        return [f(xt @ w.T + state[0] @ r.T + bias)]

    return cell


def _initial(t: Optional[Tensor], d: int, batch: int, hidden: int, like: Tensor, layout: int) -> Tensor:
    if t is None:
        return like.new_zeros((batch, hidden))
    return t[:, d] if layout == 1 else t[d]


def _recurrent_kernel(node: Node) -> Kernel:
    a: RNNAttrs = node.attrs
    op = node.op
    dirs, hidden, gates = num_directions(a), a.hidden_size, GATES[op]
    acts = activation_fns(node)
    per_dir = N_ACTIVATIONS[op]

    def make_cell(d: int, w: Tensor, r: Tensor, b: Tensor, p: Optional[Tensor]) -> Cell:
        fns = acts[d * per_dir:(d + 1) * per_dir]
        if op is OpType.LSTM:
            return _lstm_cell(w, r, b, p, fns, a)
        return _gru_cell(w, r, b, fns, a) if op is OpType.GRU else _rnn_cell(w, r, b, fns, a)

    def run(inputs: Inputs) -> list:
        x, w, r = inputs[0], inputs[1], inputs[2]
        x = x.transpose(0, 1) if a.layout == 1 else x
        batch = x.shape[1]
        b = arg(inputs, 3)
        b = b if b is not None else x.new_zeros((dirs, 2 * gates * hidden))
        lens = arg(inputs, 4)
        p = arg(inputs, 7) if op is OpType.LSTM else None
        ys, hs, cs = [], [], []
        for d in range(dirs):
            state = [_initial(arg(inputs, 5), d, batch, hidden, x, a.layout)]
            if op is OpType.LSTM:
                state.append(_initial(arg(inputs, 6), d, batch, hidden, x, a.layout))
            pd = p[d] if p is not None else x.new_zeros((3 * hidden,))
            reverse = a.direction == "reverse" or d == 1
            y, final = _run_direction(x, state, make_cell(d, w[d], r[d], b[d], pd), lens, reverse)
            ys.append(y)
            hs.append(final[0])
            if op is OpType.LSTM:
                cs.append(final[1])
        return _outputs(ys, hs, cs, a.layout)

    return run


def _outputs(ys: list[Tensor], hs: list[Tensor], cs: list[Tensor], layout: int) -> list:
    y = torch.stack(ys, 1)  # [seq, dirs, batch, hidden]
    states = [torch.stack(s, 0) for s in (hs, cs) if s]  # [dirs, batch, hidden]
    if layout == 1:
        y = y.permute(2, 0, 1, 3)
        states = [s.transpose(0, 1) for s in states]
    return [y.contiguous(), *(s.contiguous() for s in states)]


# ---- fused path: torch.lstm / torch.gru (cuDNN on the GPU) for the forms they compute --------
#: ONNX gate order -> torch's (LSTM: i, o, f, c -> i, f, c, o; GRU: z, r, h -> r, z, h).
_TORCH_GATES = {OpType.LSTM: (0, 2, 3, 1), OpType.GRU: (1, 0, 2)}


def fused_applies(node: Node) -> bool:
    """Default activations, no clip, no sequence_lens, no peepholes, no input_forget, and for
    GRU ``linear_before_reset`` (torch's GRU is that form)."""
    a: RNNAttrs = node.attrs
    if node.op not in _TORCH_GATES or a.clip is not None or a.input_forget or node.input(4):
        return False
    if node.op is OpType.LSTM and node.input(7):
        return False
    if node.op is OpType.GRU and not a.linear_before_reset:
        return False
    return a.activations == DEFAULT_ACTIVATIONS[node.op] * num_directions(a)


def _torch_order(op: OpType, t: Tensor) -> Tensor:
    chunks = t.chunk(len(_TORCH_GATES[op]), 0)
    return torch.cat([chunks[i] for i in _TORCH_GATES[op]], 0).contiguous()


def _torch_params(op: OpType, a: RNNAttrs, w: Tensor, r: Tensor, b: Optional[Tensor]) -> list[Tensor]:
    n = GATES[op] * a.hidden_size
    params = []
    for d in range(num_directions(a)):
        bd = b[d] if b is not None else w.new_zeros((2 * n,))
        params += [_torch_order(op, t) for t in (w[d], r[d], bd[:n], bd[n:])]
    return params


def _fused_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: RNNAttrs = node.attrs
    op, dirs, hidden = node.op, num_directions(a), a.hidden_size
    consts = [ctx.const(node.input(i)) if i < len(node.inputs) else None for i in (1, 2, 3)]
    fixed = _torch_params(op, a, *consts) if consts[0] is not None and consts[1] is not None and (
        consts[2] is not None or not node.input(3)) else None
    reverse_only = a.direction == "reverse"

    def state(t: Optional[Tensor], x: Tensor) -> Tensor:
        if t is None:
            return x.new_zeros((dirs, x.shape[1], hidden))
        return (t.transpose(0, 1) if a.layout == 1 else t).contiguous()

    def run(inputs: Inputs) -> list:
        x = inputs[0].transpose(0, 1) if a.layout == 1 else inputs[0]
        params = fixed or _torch_params(op, a, inputs[1], inputs[2], arg(inputs, 3))
        xin = (x.flip(0) if reverse_only else x).contiguous()
        h0 = state(arg(inputs, 5), x)
        if op is OpType.LSTM:
            y, hn, cn = torch.lstm(xin, (h0, state(arg(inputs, 6), x)), params, True, 1, 0.0, False, dirs == 2, False)
        else:
            (y, hn), cn = torch.gru(xin, h0, params, True, 1, 0.0, False, dirs == 2, False), None
        y = (y.flip(0) if reverse_only else y).reshape(x.shape[0], x.shape[1], dirs, hidden)
        return _outputs([y[:, :, d] for d in range(dirs)], list(hn), list(cn) if cn is not None else [], a.layout)

    return run


@register_kernel(OpType.LSTM)
def lstm(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX LSTM (gates i, o, f, c; peepholes i, o, f)."""
    return _fused_kernel(node, ctx) if fused_applies(node) else _recurrent_kernel(node)


@register_kernel(OpType.GRU)
def gru(node: Node, ctx: CompileContext) -> Kernel:
    """ONNX GRU (gates z, r, h)."""
    return _fused_kernel(node, ctx) if fused_applies(node) else _recurrent_kernel(node)


@register_kernel(OpType.RNN)
def rnn(node: Node, ctx: CompileContext) -> Kernel:
    return _recurrent_kernel(node)
