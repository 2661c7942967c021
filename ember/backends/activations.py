"""The one table of epilogue activations: per ``Activation``, how PyTorch computes it (out of
place, and in place where there is such a form) and the name each library knows it by.

Every backend reads its activation mapping from here, so adding an activation is one row in
``_ROWS`` (plus its ``Activation`` member and, for Triton, the branch of its code in
``triton_jit.activate``). What a library *can* do with a name stays with the code that calls it,
decided there (often at run time): which post-ops a PyTorch release's oneDNN binary convolution
accepts (``cpu/kernels/conv_mkldnn.binary_supports``), which cuBLASLt epilogues
``torch._addmm_activation`` exposes (``cuda/kernels/gemm.py``), which post-ops oneDNN's linear
takes (``cpu/kernels/linalg_mkldnn.py``).

Parameters: every form takes the parameters with ONNX's defaults filled in
(``ember.ops.attrs.activation_params``); the accessors below do that, so callers pass a layer's
``act_params`` as they are::

    >>> import torch
    >>> from ember.ops.attrs import Activation
    >>> activation_fn(Activation.CLIP, (0.0, 6.0))(torch.tensor([-1.0, 7.0]))
    tensor([0., 6.])
    >>> onednn_postop(Activation.SILU, ()).name
    'swish'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ember.ops.attrs import Activation, activation_params

Tensor = torch.Tensor
#: ``act``'s parameters with ONNX's defaults filled in (``activation_params``).
Params = tuple[float, ...]
#: An activation out of place: a new tensor.
ActFn = Callable[[Tensor], Tensor]
#: An activation in place, on a tensor of any strides (TensorIterator ops); the result is unused.
InplaceAct = Callable[[Tensor], object]


@dataclass(frozen=True)
class OneDNNPostOp:
    """A oneDNN post-op as ``mkldnn._convolution_pointwise`` / ``_linear_pointwise`` take it:
    the ``attr`` name, its ``scalars`` and the ``algorithm`` (GELU's ``"none"``/``"tanh"``)."""

    name: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""

    def args(self) -> tuple[str, list[float], str]:
        """``(attr, scalars, algorithm)``, the three trailing arguments of the oneDNN ops."""
        return self.name, list(self.scalars), self.algorithm


#: oneDNN's "no post-op".
NO_POSTOP = OneDNNPostOp("none")


@dataclass(frozen=True)
class ActivationRow:
    """Everything Ember knows about computing one ``Activation`` (see the module docstring).

    - ``fn(p)``: the out-of-place torch function (``NONE``: the identity);
    - ``inplace(p)``: the in-place form on any strides, numerically equal to ``fn(p)`` (``None``:
      there is none; a kernel then offers no ``write_into`` that needs one);
    - ``onednn(p)``: the oneDNN post-op, ``None`` where oneDNN has none for these parameters;
    - ``cublaslt``: the cuBLASLt epilogue with a bias (``CUBLASLT_EPILOGUE_<name>``);
    - ``cudnn_graph``: the pointwise step of Ember's cuDNN-frontend convolution graph
      (``cudnn_graph.conv_graph``'s ``act``; ``None``: that graph has no step for it);
    - ``triton``: the ``ACT`` code of Ember's Triton epilogue (``triton_jit.activate``);
    - ``onnx_rnn``: the ONNX RNN/GRU/LSTM ``activations`` name of the same function.
    """

    act: Activation
    fn: Callable[[Params], ActFn]
    inplace: Optional[Callable[[Params], InplaceAct]]
    onednn: Optional[Callable[[Params], Optional[OneDNNPostOp]]] = None
    cublaslt: Optional[str] = None
    cudnn_graph: Optional[str] = None
    triton: Optional[int] = None
    onnx_rnn: Optional[str] = None


def _identity(t: Tensor) -> Tensor:
    return t


def _postop(name: str, algorithm: str = "", scalars: bool = False) -> Callable[[Params], OneDNNPostOp]:
    """A post-op taking no parameters, or (``scalars``) the activation's parameters as its scalars."""
    return lambda p: OneDNNPostOp(name, p if scalars else (), algorithm)


def _may_hold_posinf(x: Tensor) -> bool:
    """Whether a CPU tensor may hold +inf (or NaN): one max pass, about half a GELU's time."""
    return x.device.type == "cpu" and x.numel() > 0 and not bool(x.max() < math.inf)


def gelu_erf(x: Tensor) -> Tensor:
    """GELU (erf) as ONNX Runtime computes it at the edges: PyTorch's vectorized CPU GELU (and
    oneDNN's gelu_erf post-op) return NaN for +inf where ONNX and ONNX Runtime return +inf."""
    y = F.gelu(x)
    return torch.where(torch.isposinf(x), x, y) if _may_hold_posinf(x) else y


def gelu_erf_(t: Tensor) -> Tensor:
    """``gelu_erf`` in place."""
    if not _may_hold_posinf(t):
        return torch.ops.aten.gelu_(t)
    posinf = torch.isposinf(t)
    torch.ops.aten.gelu_(t)
    return t.masked_fill_(posinf, math.inf)


def _onednn_hardsigmoid(p: Params) -> Optional[OneDNNPostOp]:
    # oneDNN's hardsigmoid is PyTorch's (x / 6 + 0.5): ONNX's alpha/beta must be those to fuse
    return OneDNNPostOp("hardsigmoid") if math.isclose(p[0], 1 / 6, rel_tol=1e-6) and p[1] == 0.5 else None


A = Activation
_ROWS: tuple[ActivationRow, ...] = (
    ActivationRow(A.NONE, fn=lambda p: _identity, inplace=lambda p: _identity,
                  onednn=_postop("none"), cublaslt="BIAS", cudnn_graph="none", triton=0),
    # oneDNN's relu and hardtanh post-ops turn NaN (and so an infinite input) into 0 (measured:
    # torch 2.13, oneDNN 3.12, AMX and AVX-512); ONNX and ONNX Runtime keep NaN, so on the CPU
    # these two run after the oneDNN call, in place (+1-3% on ResNet-50, BENCHMARKS.md).
    ActivationRow(A.RELU, fn=lambda p: torch.relu, inplace=lambda p: torch.relu_,
                  onednn=None, cublaslt="RELU_BIAS", cudnn_graph="relu", triton=1,
                  onnx_rnn="Relu"),
    ActivationRow(A.CLIP,
                  fn=lambda p: lambda x: torch.clamp(x, p[0], p[1]),
                  inplace=lambda p: lambda t: t.clamp_(p[0], p[1]),
                  onednn=None, cudnn_graph="clip", triton=2),
    ActivationRow(A.LEAKY_RELU,
                  fn=lambda p: lambda x: F.leaky_relu(x, p[0]),
                  inplace=lambda p: lambda t: F.leaky_relu_(t, p[0]),
                  onednn=_postop("leaky_relu", scalars=True), triton=3, onnx_rnn="LeakyRelu"),
    ActivationRow(A.SIGMOID, fn=lambda p: torch.sigmoid, inplace=lambda p: torch.sigmoid_,
                  onednn=_postop("sigmoid"), triton=4, onnx_rnn="Sigmoid"),
    ActivationRow(A.SILU, fn=lambda p: F.silu, inplace=lambda p: lambda t: F.silu(t, inplace=True),
                  onednn=_postop("swish"), triton=5),
    ActivationRow(A.HARD_SWISH,
                  fn=lambda p: F.hardswish,
                  inplace=lambda p: lambda t: F.hardswish(t, inplace=True),
                  onednn=_postop("hardswish"), triton=6),
    ActivationRow(A.HARD_SIGMOID,
                  fn=lambda p: lambda x: torch.clamp(x * p[0] + p[1], 0.0, 1.0),
                  inplace=lambda p: lambda t: t.mul_(p[0]).add_(p[1]).clamp_(0.0, 1.0),
                  onednn=_onednn_hardsigmoid, triton=7, onnx_rnn="HardSigmoid"),
    ActivationRow(A.TANH, fn=lambda p: torch.tanh, inplace=lambda p: torch.tanh_,
                  onednn=_postop("tanh"), triton=8, onnx_rnn="Tanh"),
    # oneDNN's gelu_erf post-op and PyTorch's vectorized CPU GELU turn +inf into NaN (ONNX Runtime:
    # +inf), so on the CPU GELU (erf) runs after the oneDNN call, with +inf kept (gelu_erf_).
    ActivationRow(A.GELU_ERF,
                  fn=lambda p: gelu_erf,
                  inplace=lambda p: gelu_erf_,
                  onednn=None, triton=9),
    ActivationRow(A.GELU_TANH,
                  fn=lambda p: lambda x: F.gelu(x, approximate="tanh"),
                  inplace=lambda p: lambda t: torch.ops.aten.gelu_(t, approximate="tanh"),
                  onednn=_postop("gelu", "tanh"), cublaslt="GELU_BIAS", triton=10),
)
del A


def _index(rows: Sequence[ActivationRow]) -> Mapping[Activation, ActivationRow]:
    """The rows by activation; every ``Activation`` must have exactly one (checked at import, so
    a member added without its row fails loudly, not in some kernel later)."""
    table: dict[Activation, ActivationRow] = {}
    for row in rows:
        if row.act in table:
            raise RuntimeError(f"ember.backends.activations: two rows for {row.act}; keep one")
        table[row.act] = row
    missing = [a.name for a in Activation if a not in table]
    if missing:
        raise RuntimeError(f"ember.backends.activations: no row for Activation {', '.join(missing)}; "
                           f"add one to _ROWS")
    return MappingProxyType(table)


#: The table, by activation.
ACTIVATIONS: Mapping[Activation, ActivationRow] = _index(_ROWS)

#: ONNX RNN activation name -> ``Activation`` (the rows that have one).
RNN_ACTIVATIONS: Mapping[str, Activation] = MappingProxyType(
    {r.onnx_rnn: r.act for r in _ROWS if r.onnx_rnn is not None})


def activation_fn(act: Activation, params: Sequence[float]) -> Optional[ActFn]:
    """``act`` with its ``params`` as an out-of-place tensor function; ``None`` for ``NONE``, so
    that a kernel skips the call."""
    if act is Activation.NONE:
        return None
    return ACTIVATIONS[act].fn(activation_params(act, params))


def inplace_activation(act: Activation, params: Sequence[float]) -> Optional[InplaceAct]:
    """``act`` applied in place on a tensor of any strides (a no-op for ``NONE``), or ``None`` when
    it has no in-place form (the kernel then offers no ``write_into`` that relies on one)."""
    make = ACTIVATIONS[act].inplace
    return None if make is None else make(activation_params(act, params))


def activation_after(act: Activation, params: Sequence[float]) -> Optional[ActFn]:
    """``act`` for a library call's fresh output, where it was not fused: in place where it can
    be (no allocation; the tensor itself is returned), else out of place; ``None`` for ``NONE``."""
    if act is Activation.NONE:
        return None
    inplace = inplace_activation(act, params)
    if inplace is None:
        return activation_fn(act, params)

    def run(t: Tensor) -> Tensor:
        inplace(t)
        return t

    return run


def onednn_postop(act: Activation, params: Sequence[float]) -> Optional[OneDNNPostOp]:
    """The oneDNN post-op computing ``act`` with ``params`` (``NO_POSTOP`` for ``NONE``), or ``None``
    where oneDNN has none (whether a given oneDNN op accepts it is the caller's question)."""
    make = ACTIVATIONS[act].onednn
    return None if make is None else make(activation_params(act, params))


__all__ = [
    "ACTIVATIONS", "ActFn", "ActivationRow", "InplaceAct", "NO_POSTOP", "OneDNNPostOp", "Params",
    "RNN_ACTIVATIONS", "activation_after", "activation_fn", "gelu_erf", "gelu_erf_", "inplace_activation",
    "onednn_postop",
]
