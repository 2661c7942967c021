"""Chains: runs of persistent oneDNN convolutions executed in one C++ call.

A CPU program runs one Python kernel per layer. For the persistent convolutions (``onednn_persistent``)
the oneDNN call itself is a few dozen microseconds on small layers, and the Python around it
(the program's loop, the kernel's checks, the output's allocation) about ten more: a third of
MobileNetV2's run at batch 1, whose 52 convolutions' kernels are as fast as ONNX Runtime's.

Where consecutive layers are all such convolutions (each kernel says how it may be chained:
``ChainLink``, set only for a static NHWC input (float32, bfloat16 or 8-bit), an output that stays
channels-last, a residual of the output's shape and an activation oneDNN fuses), whose inputs come
from the chain's own input or from earlier layers of the chain, and whose outputs but the last are
read only inside it, the program runs them as one step: the extension's ``run_chain`` allocates each
output, runs each primitive and releases each output after its last reader, all without returning to
Python.

A chain may end in a head (``HeadRole``): the global average pooling that reads its last output,
and the classifier after it (Flatten and up to ``MAX_HEAD_GEMMS`` float32 Gemm / MatMul / FusedGemm
layers by constant weights), run by the extension's ``Head`` on the last output as the chain lays it
out, in the same C++ call. Inside a chain a squeeze-excite block's global average pooling and
per-channel Mul run as steps too (``ChainLink.kind``: ``kernels.chain_steps``).

A float chain may run a 1x1 convolution and the 3x3 depthwise convolution that alone reads its
output as one oneDNN primitive (``with_dw_pairs``: MobileNet's expand -> depthwise pairs), so the
expanded tensor is computed row by row in cache instead of written out and read back; the build
times each chain with and without its pairs (``CPUProgram.tune``).

A chain runs only in runs with finite inputs (its activations are fused; NaN needs the unfused
path) and without an observer (calibration sees every tensor); otherwise, and where the chain
call fails, its layers run one by one as usual. ``EMBER_CPU_CHAINS=0`` switches chains off.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

#: The switch: ``EMBER_CPU_CHAINS=0`` (or off / false / no) runs every layer on its own.
SWITCH_ENV = "EMBER_CPU_CHAINS"
CL = torch.channels_last


#: The output types a chain step may have (``run_chain``'s ``dtypes`` codes).
DTYPE_CODES = {torch.float32: 0, torch.uint8: 1, torch.int8: 2, torch.bfloat16: 3}


@dataclass(frozen=True)
class ChainLink:
    """How a layer runs inside a chain: its primitive for the static input shape, whether it adds
    a residual (input 3) in a binary-add post-op (float layers: fp32 or bf16), or sums into a copy
    of it (INT8 layers: ``sum``), whether its activation is fused (in a finite run), its output
    type (a bf16 layer's: bfloat16, or float32 for a graph output)."""

    conv: Any  # the primitive (INT8 layers); None: ``relayout("nhwc", "nhwc")`` gives it
    residual: bool
    fused: bool
    sum: bool = False
    dtype: torch.dtype = torch.float32
    #: an INT8 layer reading a float input: ``quantize_nhwc``'s constants (``qlayers.quantize_constants``),
    #: applied to the chain's input; such a layer can only start a chain
    quant: Optional[tuple[float, float, float, bool]] = None
    #: a float layer: ``relayout(src_layout, dst_layout)`` makes its primitive for the same input
    #: with other activation layouts ("nhwc", "nchw", "blocked": ``Layer.prepare``'s), for a
    #: blocked chain; None: the layer runs only channels-last
    relayout: Optional[Callable[[str, str], Any]] = None
    #: ``release(kept_layout)``: frees what only the other layout's primitives held (weight copies)
    release: Optional[Callable[[str], None]] = None
    #: the extension's ``Layer`` behind the primitives (``weight_copies`` says how many packed weights it holds)
    layer: Any = None
    #: the static input's shape and the layer's pads [top, left, bottom, right] (a depthwise pair's
    #: ``Layer.prepare_dw`` arguments: ``with_dw_pairs``); () for an INT8 layer
    shape: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    #: what the step is: "conv" (a persistent convolution), or one of the two layers of a
    #: squeeze-excite block between its convolutions (``kernels.chain_steps``): "pool" (global
    #: average pooling) or "scale" (a per-channel Mul, its [N, C, 1, 1] factors passed as the residual)
    kind: str = "conv"
    #: which of the node's inputs is the layer's input, which its residual (``residual``) and which
    #: the tensor its output starts as (``sum``)
    src_input: int = 0
    res_input: int = 3
    sum_input: int = 3
    #: the layer's part in a depthwise pair (``with_dw_pairs``): "1x1" (a stride-1 1x1 convolution
    #: without groups or dilation, which may start one), "dw3x3" (a 3x3 depthwise convolution,
    #: which may end one), "" (neither)
    pair_role: str = ""

    @property
    def in_channels(self) -> int:
        """The input's channels (0 where the shape is not recorded)."""
        return self.shape[1] if len(self.shape) > 1 else 0

    def nhwc_conv(self) -> Any:
        return self.conv if self.conv is not None else self.relayout("nhwc", "nhwc")  # type: ignore[misc]


@dataclass(frozen=True)
class HeadRole:
    """How a layer after a chain may run in the chain's head: ``pool`` (global average pooling of
    a static 4-D float32 tensor: GlobalAveragePool, or ReduceMean over H and W; ``flat``: its output
    is [N, C], keepdims=0), ``flatten`` ([N, C, 1, 1] -> [N, C]: Flatten, Reshape, Squeeze) or
    ``gemm`` (a float32 Gemm, MatMul or FusedGemm of [N, C] by a constant: ``weight`` [O, C],
    ``bias`` [O] or None, then ``activation``: the extension's (name, alpha, beta), fused in oneDNN
    as a convolution's is, so only where nothing upstream can turn finite values non-finite).
    ``head_role`` says which a layer is."""

    kind: str
    flat: bool = False
    #: the constant B as the layer reads it (no copy: most such layers are never in a head) and
    #: whether it is [O, C] already (Gemm's transB) or [C, O]
    b: Optional[torch.Tensor] = None
    b_is_oc: bool = False
    c: Optional[torch.Tensor] = None  # the constant bias as the layer reads it ([O], [1, O] or one value)
    activation: tuple[str, float, float] = ("none", 0.0, 0.0)

    def weight(self) -> torch.Tensor:
        """The classifier's weight [O, C] (a copy only where B is [C, O])."""
        assert self.b is not None
        return (self.b if self.b_is_oc else self.b.t()).contiguous()

    def bias(self) -> Optional[torch.Tensor]:
        """The classifier's bias [O], or None."""
        if self.c is None or self.b is None:
            return None
        return self.c.reshape(-1).expand(self.b.shape[0] if self.b_is_oc else self.b.shape[1]).contiguous()


@dataclass(frozen=True)
class Chain:
    """Steps ``start .. end - 1`` of a program as one: the arguments of ``run_chain``."""

    start: int
    end: int
    input: str  # the chain's input (the first layer's)
    output: str  # the last layer's output
    convs: tuple[Any, ...]
    src: tuple[int, ...]  # per layer: the chain step whose output it reads (-1: the chain's input)
    res: tuple[int, ...]  # per layer: the step whose output it adds (-1: the input, -2: none)
    sum: tuple[int, ...]  # per layer: the step whose output its output starts as (-1: the input, -2: none)
    last: tuple[int, ...]  # per layer: the last step of the chain that reads its output
    fused: tuple[bool, ...]
    dtypes: tuple[int, ...]  # per layer: the output type (``DTYPE_CODES``)
    quant: Optional[tuple[float, float, float, bool]] = None  # the input stored 8-bit first (``ChainLink``)
    #: "nhwc", or "blocked": the activations between the layers in oneDNN's nChw16c / nChw8c (``blocked``)
    layout: str = "nhwc"
    #: how the chain's input is passed: channels-last ("nhwc"), or as it is, NCHW, where a blocked
    #: chain's first layer reads the image directly ("nchw")
    input_layout: str = "nhwc"
    #: the last ``head_steps`` steps (``start .. end - 1``) are the chain's head (``HeadRole``),
    #: run by ``head`` (the extension's ``Head``, made by ``head_layer`` for the last convolution's
    #: output in ``layout``; ``flat``: its output is [N, C]); ``attach_head`` makes them
    head_steps: int = 0
    head: Any = None
    head_layer: Any = None
    head_flat: bool = False
    #: the layers (0-based among the chain's convolutions) that run as depthwise pairs, two by two
    #: (``with_dw_pairs``: ``convs`` then has one entry per pair)
    paired: tuple[int, ...] = ()

    @property
    def conv_end(self) -> int:
        """The end of the chain's convolutions (its head, if any, follows)."""
        return self.end - self.head_steps


def switched_on(env: str) -> bool:
    """Whether switch `env` is on (unset, or anything but 0 / off / false / no)."""
    return os.environ.get(env, "1").strip().lower() not in ("0", "off", "false", "no")


def enabled() -> bool:
    return switched_on(SWITCH_ENV)


#: ``EMBER_CHAIN_LAYOUT``: the activations' layout between a float chain's layers: ``nhwc``
#: (channels-last, as between every other layer), ``blocked`` (oneDNN's nChw16c or nChw8c), or ``auto`` (the
#: default: what the build timed and recorded, ``CPUProgram.tune``; channels-last where nothing was).
LAYOUT_ENV = "EMBER_CHAIN_LAYOUT"
LAYOUTS = ("nhwc", "blocked")
#: A blocked chain's first layer reads an image of fewer channels than this as it is (NCHW), as
#: ONNX Runtime's first convolution does, instead of a channels-last copy of it.
PLANAR_INPUT_CHANNELS = 8


def forced_layout() -> Optional[str]:
    """The layout ``LAYOUT_ENV`` forces on every float chain, or None (``auto``, unset); a clear
    error for another value."""
    value = os.environ.get(LAYOUT_ENV, "auto").strip().lower() or "auto"
    if value == "auto":
        return None
    if value not in LAYOUTS:
        from ember.errors import EmberError
        raise EmberError(f"{LAYOUT_ENV}={value!r}: use one of auto, {', '.join(LAYOUTS)}")
    return value


def links(steps: Sequence[Any], chain: Chain) -> list[ChainLink]:
    """The ``ChainLink`` of each of ``chain``'s layers."""
    return [_link(steps[k]) for k in range(chain.start, chain.conv_end)]  # type: ignore[misc]


def reference(step: Any) -> bool:
    """Whether oneDNN runs ``step`` (an extension step) with a reference implementation: its plain
    C++ loops, 10-100x slower than its JIT kernels, which exist for every layout Ember asks for on
    a CPU that supports it."""
    return str(getattr(step, "impl", "")).startswith("ref")


def blocked(chain: Chain, members: Sequence[ChainLink]) -> Optional[Chain]:
    """``chain`` with its activations in oneDNN's blocked layout (nChw16c with AVX-512, nChw8c
    on an AVX2 CPU) between its layers: each layer's primitive made again
    (``ChainLink.relayout``) to write blocked and to read blocked, or, for a first layer reading
    an image of few channels, the image as it is (NCHW). The extension reorders the chain's input
    once for layers that read it in another layout, and the last output back to channels-last.
    None where a layer runs only channels-last (INT8), or oneDNN makes no such primitive or only
    a reference one."""
    if chain.paired or any(link.relayout is None for link in members):
        return None
    planar = 0 < members[0].in_channels < PLANAR_INPUT_CHANNELS
    try:
        convs = tuple(link.relayout("nchw" if planar and k == 0 else "blocked", "blocked")  # type: ignore[misc]
                      for k, link in enumerate(members))
        head = (chain.head_layer.prepare(convs[-1].dst_dims, "blocked", chain.head_flat)
                if chain.head_layer is not None else None)
    except (RuntimeError, ValueError):  # oneDNN has no primitive for a layout: keep channels-last
        return None
    if any(reference(step) for step in convs):  # timing it alone would cost minutes on a large model
        return None
    return replace(chain, convs=convs, layout="blocked", input_layout="nchw" if planar else "nhwc", head=head)


#: ``EMBER_CHAIN_DW=0`` (or off / false / no): no depthwise pairs (``with_dw_pairs``), for measuring.
DW_ENV = "EMBER_CHAIN_DW"


def dw_enabled() -> bool:
    return switched_on(DW_ENV)


#: Whether a pair may run on oneDNN's reference fusion (``ref_fused_convolution``: the two
#: primitives one after the other, slower than the pair apart); tests set it to exercise pairs on
#: shapes too small for oneDNN's fused kernels.
DW_REFERENCE_OK = False


def with_dw_pairs(chain: Chain, members: Sequence[ChainLink]) -> Optional[Chain]:
    """``chain`` (in its layout) with each float 1x1 convolution whose output only the 3x3
    depthwise convolution after it reads run together with it as one primitive (oneDNN's
    depthwise post-op: ``Layer.prepare_dw``, both activations fused), where oneDNN has a real
    fused kernel for the pair (not its reference one, which runs the two one after the other).
    MobileNet's expand -> depthwise pairs: the expanded tensor is never written out whole. None
    where no pair qualifies."""
    n = len(members)
    if chain.paired:
        return None
    planar = chain.input_layout == "nchw"
    pairs: dict[int, Any] = {}  # first layer of a pair -> the pair's primitive
    j = 0
    while j < n - 1:
        a, b = members[j], members[j + 1]
        conv = None
        if (a.pair_role == "1x1" and b.pair_role == "dw3x3"  # what Layer.prepare_dw checks again, so
                # that a chain of other layers makes no failed call (each an exception in C++)
                and a.layer is not None and b.layer is not None and a.relayout is not None and b.relayout is not None
                and chain.src[j + 1] == j and chain.last[j] == j + 1 and chain.res[j] == chain.res[j + 1] == -2
                and chain.sum[j] == chain.sum[j + 1] == -2 and chain.dtypes[j] in (0, 3)
                and chain.dtypes[j + 1] in (0, 3)):
            src = "nchw" if planar and j == 0 else chain.layout
            try:
                conv = a.layer.prepare_dw(b.layer, list(a.shape), list(a.pads), list(b.pads), src, chain.layout,
                                          DW_REFERENCE_OK)
            except (RuntimeError, ValueError):  # not a 1x1 -> depthwise pair: the checks say why
                conv = None
        if conv is not None:
            pairs[j] = conv
            j += 2
        else:
            j += 1
    if not pairs:
        return None
    new_index: list[int] = []  # old layer -> its step in the new chain
    convs: list[Any] = []
    for j in range(n):
        if j - 1 in pairs:  # the depthwise half of a pair
            new_index.append(len(convs) - 1)
            continue
        new_index.append(len(convs))
        convs.append(pairs.get(j, chain.convs[j]))
    firsts = [j for j in range(n) if j - 1 not in pairs]  # each new step's first old layer
    lasts = [j + 1 if j in pairs else j for j in firsts]  # ... and its last

    def at(k: int) -> int:
        return k if k < 0 else new_index[k]

    head = chain.head
    if chain.head_layer is not None and n - 2 in pairs:  # the head reads the pair's output
        head = chain.head_layer.prepare(convs[-1].dst_dims, chain.layout, chain.head_flat)
    return replace(chain, convs=tuple(convs), src=tuple(at(chain.src[j]) for j in firsts),
                   res=tuple(at(chain.res[j]) for j in firsts), sum=tuple(at(chain.sum[j]) for j in firsts),
                   last=tuple(at(chain.last[j]) for j in lasts),
                   fused=tuple(False if j in pairs else chain.fused[j] for j in firsts),
                   dtypes=tuple(chain.dtypes[j] for j in lasts), head=head,
                   paired=tuple(k for j in pairs for k in (j, j + 1)))


def head_role(node: Any, precision: Any, types: Mapping[str, Any],
              constants: Mapping[str, torch.Tensor], finite: Callable[[], bool] = lambda: False) -> Optional[HeadRole]:
    """The part ``node`` (an IR node computed at ``precision``) may take in a chain's head, or None
    (``types``: the graph's tensor types; ``constants``: the program's constant tensors; ``finite()``:
    whether the node's inputs are finite whenever the graph's are, ``half.finite_safe``, which a
    FusedGemm's activation needs to be fused)."""
    from ember.ir.dtype import DType
    from ember.ir.optype import OpType

    if precision.is_half or precision.is_quantized:
        return None
    if not node.inputs or len(node.outputs) != 1 or not node.inputs[0] or not node.outputs[0]:
        return None
    x, y = types.get(node.inputs[0]), types.get(node.outputs[0])
    if (x is None or y is None or not x.is_static or not y.is_static or x.dtype is not DType.FLOAT32
            or y.dtype is not DType.FLOAT32 or 0 in x.shape):
        return None
    op, n_c = node.op, tuple(x.shape[:2])
    if op is OpType.GLOBAL_AVERAGE_POOL and x.rank == 4:
        return HeadRole("pool")
    if op is OpType.REDUCE_MEAN and x.rank == 4 and len(node.inputs) <= 2:
        axes = node.attrs.axes if node.attrs is not None else None
        if len(node.inputs) == 2 and node.inputs[1]:
            given = constants.get(node.inputs[1])
            axes = tuple(int(v) for v in given.reshape(-1).tolist()) if given is not None else None
        if axes is not None and {a % 4 for a in axes} == {2, 3} and len(axes) == 2:
            return HeadRole("pool", flat=tuple(y.shape) == n_c)
        return None
    if op in (OpType.FLATTEN, OpType.RESHAPE, OpType.SQUEEZE):
        ok = x.rank == 4 and tuple(x.shape[2:]) == (1, 1) and tuple(y.shape) == n_c
        return HeadRole("flatten") if ok else None
    if op in (OpType.GEMM, OpType.MATMUL) and x.rank == 2 and 2 <= len(node.inputs) <= 3:
        return _classifier(node, x, y, constants)
    if op is OpType.FUSED_GEMM and x.rank == 2 and 2 <= len(node.inputs) <= 3 and node.attrs is not None:
        from ember.backends.cpu.native import eltwise

        act = eltwise(node.attrs.activation, node.attrs.act_params)
        if act[0] == "none" or not finite():  # NONE is a plain Gemm's; other activations oneDNN cannot fuse
            return None
        role = _classifier(node, x, y, constants, node.attrs.gemm)
        return replace(role, activation=act) if role is not None else None
    return None


def _classifier(node: Any, x: Any, y: Any, constants: Mapping[str, torch.Tensor],
                gemm_attrs: Any = None) -> Optional[HeadRole]:
    """``head_role`` of a Gemm / MatMul (or a FusedGemm's, ``gemm_attrs``): y = x . W^T + b with a
    constant float32 W [O, C] and b."""
    from ember.ir.optype import OpType

    b = constants.get(node.inputs[1])
    bias_name = node.inputs[2] if len(node.inputs) == 3 else ""
    c = constants.get(bias_name) if bias_name else None
    if b is None or b.dim() != 2 or b.dtype != torch.float32 or (bias_name and c is None):
        return None
    trans_b = False
    if node.op is OpType.GEMM or gemm_attrs is not None:
        a = gemm_attrs if gemm_attrs is not None else node.attrs
        if a is None or a.trans_a or a.alpha != 1.0 or (c is not None and a.beta != 1.0):
            return None
        trans_b = a.trans_b
    elif c is not None:
        return None
    o, k = (b.shape[0], b.shape[1]) if trans_b else (b.shape[1], b.shape[0])
    if k != x.shape[1] or tuple(y.shape) != (x.shape[0], o):
        return None
    # a bias row broadcast over the batch: [O], [1, O] or a scalar
    if c is not None and (c.dtype != torch.float32 or c.numel() not in (1, o) or c.dim() > 2
                          or (c.dim() == 2 and c.shape[0] != 1)):
        return None
    return HeadRole("gemm", b=b, b_is_oc=trans_b, c=c)


#: The switch: ``EMBER_CHAIN_HEADS=0`` (or off / false / no) leaves every chain's head layers on their own.
HEAD_ENV = "EMBER_CHAIN_HEADS"

#: The most dense layers a head runs (a classifier of up to this many Gemms, VGG's has 3).
MAX_HEAD_GEMMS = 4


def head_shape_ok(kinds: Sequence[str]) -> bool:
    """Whether a head's layers come in an order a chain's head runs: a pooling, at most one flatten,
    then up to ``MAX_HEAD_GEMMS`` dense layers."""
    if not kinds or kinds[0] != "pool":
        return False
    rest = list(kinds[1:])
    if rest and rest[0] == "flatten":
        rest = rest[1:]
    return len(rest) <= MAX_HEAD_GEMMS and all(k == "gemm" for k in rest)


def _head_steps(steps: Sequence[Any], end: int, output: str, readers: Mapping[str, list[int]],
                outputs: set[str]) -> int:
    """How many steps from ``end`` make a head (``head_shape_ok``) on a chain whose last output is
    ``output``: each reads the one before as its only reader, and no output but the last is the
    graph's (the roles' own shape conditions keep a pooled [N, C, 1, 1] from a GEMM and a pooled
    [N, C] from a flatten)."""
    roles: list[HeadRole] = []
    name = output
    k = end
    while k < len(steps) and len(roles) < 2 + MAX_HEAD_GEMMS:
        s = steps[k]
        role = getattr(s, "head", None)
        if (role is None or s.special or s.inputs[0] != name or name in outputs
                or readers.get(name, []) != [k]):
            break
        roles.append(role)
        name = s.outputs[0]
        k += 1
    kinds = [r.kind for r in roles]
    while kinds and not head_shape_ok(kinds):
        kinds.pop()
    return len(kinds)


def attach_head(chain: Chain, steps: Sequence[Any], ext: Any) -> Chain:
    """``chain`` with its head's ``Head`` made (channels-last: ``blocked`` makes the other), or
    without a head where the extension cannot make one (then its head layers run on their own)."""
    if not chain.head_steps:
        return chain
    roles = [steps[k].head for k in range(chain.conv_end, chain.end)]
    gemms = [r for r in roles if r.kind == "gemm"]
    flat = roles[0].flat or any(r.kind == "flatten" for r in roles)
    try:
        if gemms:
            layer = ext.HeadLayer(gemms[0].weight(), gemms[0].bias(), *gemms[0].activation)
            for g in gemms[1:]:
                layer.then(g.weight(), g.bias(), *g.activation)
        else:
            layer = ext.HeadLayer(None, None)
        head = layer.prepare(chain.convs[-1].dst_dims, "nhwc", flat)
    except (RuntimeError, ValueError, AttributeError):  # AttributeError: an extension without heads
        return replace(chain, end=chain.conv_end, output=steps[chain.conv_end - 1].outputs[0], head_steps=0)
    return replace(chain, head=head, head_layer=layer, head_flat=flat)


def plan_chains(steps: Sequence[Any], graph_outputs: Sequence[str], min_length: int = 2) -> list[Chain]:
    """The chains of ``steps`` (``CPUStep``s: ``kernel``, ``inputs``, ``outputs``, ``special``):
    maximal runs of chainable steps that satisfy the module docstring's rules (channels-last:
    ``blocked`` gives a chain's other layout)."""
    readers: dict[str, list[int]] = {}
    for i, s in enumerate(steps):
        for name in s.inputs:
            if name:
                readers.setdefault(name, []).append(i)
    outputs = set(graph_outputs)
    chains: list[Chain] = []
    i = 0
    while i < len(steps):
        end = _extend(steps, i)
        # a chain ends in a convolution or a scale: a pooling at its end is a head's (or runs alone)
        while end - i >= min_length and (not _closed(steps, i, end, readers, outputs)
                                         or _link(steps[end - 1]).kind == "pool"):  # type: ignore[union-attr]
            end -= 1
        if end - i >= min_length:
            chain = _chain(steps, i, end, readers)
            heads = chain.dtypes[-1] == 0 and switched_on(HEAD_ENV)
            h = _head_steps(steps, end, chain.output, readers, outputs) if heads else 0
            if h:
                chain = replace(chain, end=end + h, output=steps[end + h - 1].outputs[0], head_steps=h)
            chains.append(chain)
            i = chain.end
        else:
            i += 1
    return chains


def _input(step: Any, i: int) -> str:
    return step.inputs[i] if len(step.inputs) > i else ""


def _link(step: Any) -> Optional[ChainLink]:
    if step.special or len(step.outputs) != 1 or not step.outputs[0]:
        return None
    return getattr(step.kernel, "chain_link", None)


def _extend(steps: Sequence[Any], start: int) -> int:
    """The end of the longest run of chainable steps from ``start`` whose layer inputs (0, and 3
    for a residual) are the chain's input or earlier outputs of the run. A layer that quantizes
    its float input only starts a chain, and then no later layer reads that float input."""
    first = _link(steps[start])
    if first is None:
        return start
    known = {_input(steps[start], first.src_input)}
    end = start
    while end < len(steps):
        s = steps[end]
        link = _link(s)
        if (link is None or _input(s, link.src_input) not in known or (link.quant is not None and end > start)
                or (link.residual and _input(s, link.res_input) not in known)
                or (link.sum and _input(s, link.sum_input) not in known)):
            break
        if end == start and first.quant is not None:
            known.clear()
        known.add(s.outputs[0])
        end += 1
    return end


def _closed(steps: Sequence[Any], start: int, end: int, readers: Mapping[str, list[int]],
            outputs: set[str]) -> bool:
    """Whether the outputs of steps ``start .. end - 2`` are read only inside the chain."""
    for k in range(start, end - 1):
        name = steps[k].outputs[0]
        if name in outputs or any(r < start or r >= end for r in readers.get(name, ())):
            return False
    return True


def _chain(steps: Sequence[Any], start: int, end: int, readers: Mapping[str, list[int]]) -> Chain:
    links = [_link(steps[k]) for k in range(start, end)]
    first = _input(steps[start], links[0].src_input)  # type: ignore[union-attr]
    index = {steps[k].outputs[0]: k - start for k in range(start, end)}

    def source(name: str) -> int:
        return -1 if name == first and name not in index else index[name]

    src = tuple(source(_input(steps[k], link.src_input)) for k, link in zip(range(start, end), links))  # type: ignore[union-attr]
    res = tuple(source(_input(steps[k], link.res_input)) if link.residual else -2  # type: ignore[union-attr]
                for k, link in zip(range(start, end), links))
    sums = tuple(source(_input(steps[k], link.sum_input)) if link.sum else -2  # type: ignore[union-attr]
                 for k, link in zip(range(start, end), links))
    last = tuple(max([k - start for k in range(start, end)
                      if steps[start + j].outputs[0] in steps[k].inputs] or [j])
                 for j in range(end - start))
    return Chain(start, end, first, steps[end - 1].outputs[0], tuple(link.nhwc_conv() for link in links),  # type: ignore[union-attr]
                 src, res, sums, last, tuple(link.fused for link in links),  # type: ignore[union-attr]
                 tuple(DTYPE_CODES[link.dtype] for link in links),  # type: ignore[union-attr]
                 links[0].quant)  # type: ignore[union-attr]


#: ``time_layouts``: a chain whose first run took less than this runs ``WARM_RUNS`` times a turn
WARM_BELOW_S = 0.05
WARM_RUNS = 3


def time_layouts(variants: Mapping[str, Chain], ext: Any, x: torch.Tensor, budget_s: float = 2.0) -> dict[str, float]:
    """The median milliseconds of each variant of one chain on its input ``x``, the variants taking
    turns (a warm-up run each, then 3 to 7 turns, fewer past ``budget_s``): taking turns keeps a
    machine's drift out of the comparison. A short chain (warm-up under ``WARM_BELOW_S``) runs
    ``WARM_RUNS`` times back to back a turn and the last run counts, its weights warm as when an
    engine runs again and again; one run a turn timed each variant with its weights evicted by the
    other variants' copies."""
    first: dict[str, float] = {}
    for k, chain in variants.items():
        t0 = time.perf_counter()
        run_chain(ext, chain, x)
        first[k] = time.perf_counter() - t0
    reps = WARM_RUNS if max(first.values()) < WARM_BELOW_S else 1
    times: dict[str, list[float]] = {k: [] for k in variants}
    start = time.perf_counter()
    for turn in range(7):
        for k, chain in variants.items():
            for _ in range(reps - 1):
                run_chain(ext, chain, x)
            t0 = time.perf_counter()
            run_chain(ext, chain, x)
            times[k].append(time.perf_counter() - t0)
        if turn >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _chain_input(chain: Chain, x: torch.Tensor, ext: Any) -> torch.Tensor:
    """The chain's input as its first layer reads it (``run_chain``)."""
    if chain.quant is not None and x.dtype == torch.float32:
        return ext.quantize_nhwc(x, *chain.quant)
    if chain.input_layout == "nchw":
        return x.contiguous()
    return x if x.is_contiguous(memory_format=CL) else x.contiguous(memory_format=CL)


def prepare(ext: Any, chain: Chain) -> Callable[[torch.Tensor], torch.Tensor]:
    """``run_chain(ext, chain, x)`` as a function of ``x`` alone: the chain's description checked
    and converted once (the extension's ``ChainPlan``; an extension without it: ``run_chain``)."""
    if not hasattr(ext, "ChainPlan"):
        return lambda x: run_chain(ext, chain, x)
    plan = _plan(ext, chain)

    def run(x: torch.Tensor) -> torch.Tensor:
        return plan.run(_chain_input(chain, x, ext))

    return run


def array_runner(ext: Any, chain: Chain) -> Optional[Callable[[np.ndarray], Optional[np.ndarray]]]:
    """The chain as a function of a numpy array, made into the chain's input form and run in one
    native call, its output a numpy array (the extension's ``ChainPlan.run_array``): ``None`` back,
    before anything ran, for an array it does not take as it is (not writeable, C-contiguous,
    native float32, or not all finite). ``None`` for an extension without it."""
    if not hasattr(getattr(ext, "ChainPlan", None), "run_array"):
        return None
    return _plan(ext, chain).run_array  # type: ignore[no-any-return]


def _plan(ext: Any, chain: Chain) -> Any:
    return ext.ChainPlan(chain.convs, chain.src, chain.res, chain.sum, chain.last, chain.fused, chain.dtypes,
                         chain.head, input_layout=chain.input_layout, quant=chain.quant)


def run_chain(ext: Any, chain: Chain, x: torch.Tensor, times: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The chain on its input ``x`` (made channels-last here, as its first layer would; stored
    8-bit first where the first layer is INT8 on a float input). ``times`` (profiling): a float64
    tensor of ``len(chain.convs) + 2`` values that receives each step's milliseconds, then the
    head's pooling and classifier's."""
    return ext.run_chain(chain.convs, _chain_input(chain, x, ext), chain.src, chain.res, chain.sum, chain.last,
                         chain.fused, chain.dtypes, chain.head, times)


__all__ = ["DTYPE_CODES", "DW_ENV", "HEAD_ENV", "LAYOUTS", "LAYOUT_ENV", "MAX_HEAD_GEMMS", "SWITCH_ENV", "Chain",
           "ChainLink", "HeadRole", "array_runner", "attach_head", "blocked", "dw_enabled", "reference", "enabled",
           "forced_layout", "head_role", "head_shape_ok", "links", "plan_chains", "prepare", "run_chain",
           "switched_on", "time_layouts", "with_dw_pairs"]
