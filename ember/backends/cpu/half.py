"""Half-precision layers on the CPU: what every bf16 / fp16 layer's kernel gets around it.

A half layer stores its float activations in 16 bits (``storage_dtype``; the graph keeps the
model's types, as on CUDA) and the build plans the conversions between precisions as ``Cast``
layers (``ember.passes.cpu_half``), so a half layer's kernel reads 16-bit activations and its
readers expect 16-bit results. ``half_kernel`` wraps the kernel of such a
layer (``CPUBackend.compile_node``):

- float32 constant inputs are converted to the layer's dtype once, here, so arithmetic with them
  stays 16-bit (PyTorch would promote ``bf16 + fp32 tensor`` to fp32); except those the tactic
  converts or prepacks itself (``owns_constants``: convolution and GEMM weights, whose bias stays
  float32 for oneDNN's float32 accumulator) and normalization parameters, which PyTorch takes in
  float32 next to 16-bit activations (``FP32_PARAMS``);
- the ops in ``UPCAST_OPS`` (LRN, instance and group normalization), whose PyTorch CPU kernels
  accumulate in the input's 16 bits, compute from their inputs converted to float32: reductions,
  normalizations and softmax accumulate in fp32 (the others' PyTorch kernels already do);
- ReLU, Clip and GELU after a convolution or GEMM fuse into oneDNN's call when the run's inputs
  are all finite (``finite_run``) and nothing upstream of the layer can make a finite value
  non-finite (``finite_safe``): oneDNN's post-ops turn NaN into 0, so for NaN in, NaN out (issue 17)
  the fp32 layers apply them in a separate pass, which PyTorch's bf16 elementwise kernels make
  slow on the CPUs measured (a 6.4M-element bf16 ReLU: 7.6 ms, against 0.3 ms fused; ResNet-50
  batch 8 on one core: 398 ms with the separate passes, 193 ms fused). A run with a NaN or an
  infinity in its inputs takes the exact path. What remains: a float32 overflow *inside* the
  network (finite inputs, an activation past 3.4e38) that a later layer turns into NaN is clipped
  to 0 by a fused ReLU, where ONNX Runtime keeps the NaN;
- outputs are returned in their storage dtypes (16-bit, or float32 for a graph output), which
  also makes a planned conversion (a ``Cast`` to float32 in a half layer) store 16 bits.

>>> from ember.plan.config import Precision
>>> compute_dtype(Precision.BF16)
torch.bfloat16
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from ember.backends.activations import OneDNNPostOp, onednn_postop
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into, write_into_of
from ember.backends.tensors import compute_dtype, torch_dtype
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, LRNAttrs, activation_params
from ember.plan.config import Precision
from ember.plan.records import Records

Inputs = Sequence[Optional[torch.Tensor]]

#: Storage dtype of each half precision.
HALF_DTYPES = {Precision.BF16: DType.BFLOAT16, Precision.FP16: DType.FLOAT16}


def storage_dtype(graph: Graph, precisions: Mapping[str, Precision], producer: str, tensor: str) -> DType:
    """How ``tensor``, an output of layer ``producer``, is stored on the CPU: a half layer's
    float32 outputs in its 16-bit dtype, except graph outputs (written in their declared type);
    everything else as the graph types it. The graph keeps the model's types (as on CUDA)."""
    t = graph.types[tensor]
    half = HALF_DTYPES.get(precisions.get(producer, Precision.FP32))
    if half is None or t.dtype is not DType.FLOAT32 or tensor in graph.outputs:
        return t.dtype
    return half


#: Constant inputs a half layer reads in float32: normalization parameters (PyTorch's CPU
#: LayerNorm and BatchNorm take float32 parameters with 16-bit activations and compute in float32).
FP32_PARAMS: dict[OpType, frozenset[int]] = {
    OpType.LAYER_NORM: frozenset({1, 2}),
    OpType.SKIP_LAYER_NORM: frozenset({2, 3}),
    OpType.BATCH_NORM: frozenset({1, 2, 3, 4}),
}

#: Ops computed in float32 from 16-bit inputs: PyTorch's CPU kernels accumulate these in the
#: input's dtype (instance normalization of bf16: 1.2e-2 relative error against 2.2e-3 in fp32),
#: or Ember's own kernel does (LRN's window sum).
UPCAST_OPS = frozenset({OpType.LRN, OpType.INSTANCE_NORM, OpType.GROUP_NORM})

#: ``(op, tactic) -> constant input slots`` the tactic reads and converts itself at compile time.
_OWN_CONSTANTS: dict[tuple[OpType, str], frozenset[int]] = {}


def owns_constants(ops: Iterable[OpType], tactics: Iterable[str], slots: Iterable[int]) -> None:
    """Declares that ``tactics`` of ``ops`` convert (or prepack) their constant inputs ``slots``
    themselves: ``half_kernel`` leaves those alone (no second, unused 16-bit copy of a weight)."""
    tactic_list, slot_set = list(tactics), frozenset(slots)
    for op in ops:
        for tactic in tactic_list:
            _OWN_CONSTANTS[(op, tactic)] = slot_set


def layer_dtype(ctx: CompileContext) -> torch.dtype:
    """The dtype a layer computes in: its precision's 16-bit type for a half layer, else float32."""
    return compute_dtype(ctx.precision) if Precision(ctx.precision).is_half else torch.float32


def half_applies(node: Node, records: Optional[Records]) -> bool:
    """Whether ``records`` make ``node`` a half layer (for tactics only half layers have)."""
    if records is None:
        return False
    p = records.precision.layers.get(node.name)
    return p is not None and p.is_half


def half_kernel(node: Node, ctx: CompileContext, tactic: str, kernel: Kernel) -> Kernel:
    """``kernel`` of half layer ``node`` (tactic ``tactic``) with its constants converted once and
    its outputs in their planned dtypes (see the module docstring)."""
    dtype = compute_dtype(ctx.precision)
    upcast = node.op in UPCAST_OPS
    keep = FP32_PARAMS.get(node.op, frozenset()) | _OWN_CONSTANTS.get((node.op, tactic), frozenset())
    consts: dict[int, torch.Tensor] = {}
    if not upcast:
        for i, name in enumerate(node.inputs):
            c = ctx.const(name)
            if c is not None and i not in keep and c.dtype == torch.float32:
                consts[i] = c.to(dtype)
    want = _planned_dtypes(node, ctx)
    inner = kernel

    def args_of(inputs: Inputs) -> list[Optional[torch.Tensor]]:
        if upcast:
            return [t.float() if t is not None and t.is_floating_point() else t for t in inputs]
        args = list(inputs)
        for i, c in consts.items():
            args[i] = c
        return args

    def run(inputs: Inputs) -> list[Optional[torch.Tensor]]:
        outs = list(inner(args_of(inputs)))
        for i, d in want:
            t = outs[i] if i < len(outs) else None
            if t is not None and t.dtype != d:
                outs[i] = t.to(d)
        return outs

    inner_write = write_into_of(kernel)
    if inner_write is not None:
        def write(inputs: Inputs, out: torch.Tensor) -> bool:
            return inner_write(args_of(inputs), out)

        with_write_into(run, WriteInto(write, inner_write.accepts))
    link = getattr(kernel, "chain_link", None)
    if link is not None and not consts and not upcast:  # a chain runs the layer as its kernel would
        run.chain_link = link  # type: ignore[attr-defined]
    return run


#: Ops that give finite outputs for finite inputs and finite constants (barring float32 overflow):
#: where only these lie upstream of a layer, finite graph inputs mean finite inputs to the layer.
FINITE_OPS = frozenset({
    OpType.CONV, OpType.FUSED_CONV, OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM, OpType.FUSED_ATTENTION,
    OpType.RELU, OpType.LEAKY_RELU, OpType.PRELU, OpType.CLIP, OpType.SIGMOID, OpType.TANH, OpType.GELU,
    OpType.ERF, OpType.HARD_SIGMOID, OpType.HARD_SWISH, OpType.ADD, OpType.SUB, OpType.MUL, OpType.NEG,
    OpType.ABS, OpType.MAX, OpType.MIN, OpType.WHERE, OpType.MAX_POOL, OpType.AVERAGE_POOL,
    OpType.GLOBAL_AVERAGE_POOL, OpType.BATCH_NORM, OpType.LAYER_NORM, OpType.SKIP_LAYER_NORM, OpType.SOFTMAX,
    OpType.REDUCE_MEAN, OpType.REDUCE_SUM, OpType.REDUCE_MAX, OpType.REDUCE_MIN, OpType.CONCAT, OpType.SPLIT,
    OpType.SLICE, OpType.GATHER, OpType.RESHAPE, OpType.FLATTEN, OpType.TRANSPOSE, OpType.SQUEEZE,
    OpType.UNSQUEEZE, OpType.EXPAND, OpType.IDENTITY, OpType.DROPOUT, OpType.PAD, OpType.TILE,
    OpType.DEPTH_TO_SPACE, OpType.SPACE_TO_DEPTH, OpType.CAST, OpType.SHAPE,
    OpType.LRN})  # LRN only with a positive bias (``_finite_steps``)

_FINITE_INPUTS: contextvars.ContextVar[bool] = contextvars.ContextVar("ember_cpu_finite_inputs", default=False)


def inputs_finite() -> bool:
    """Whether the run in progress (on this thread) was given only finite float inputs."""
    return _FINITE_INPUTS.get()


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element of float tensor ``t`` is finite, conservatively: by its sum (a NaN or
    an infinity anywhere makes the sum NaN or infinite), one pass that allocates nothing, where
    ``isfinite(t).all()`` wrote a bool per element (a 224x224 image: 8 µs against 187 µs; at
    batch 8, 73 µs against 1.76 ms). A sum that overflows from finite values answers "not finite":
    the run then takes the NaN-safe path, which is only slower."""
    wide = torch.float64 if t.dtype == torch.float64 else torch.float32
    return math.isfinite(float(t.sum(dtype=wide)))


@contextlib.contextmanager
def finite_run(feeds: Mapping[str, torch.Tensor],
               check: Optional[Callable[[torch.Tensor], bool]] = None) -> Iterator[None]:
    """Marks the run of ``feeds`` as one with finite inputs (or not) for the kernels it calls.
    ``check``: a faster exact test for contiguous float32 CPU tensors (the extension's
    ``all_finite``); the others, or without it, ``_all_finite``'s sum."""
    finite = all(check(t) if check is not None and t.dtype == torch.float32 and t.is_contiguous()
                 else _all_finite(t) for t in feeds.values() if t.is_floating_point())
    token = _FINITE_INPUTS.set(finite)
    try:
        yield
    finally:
        _FINITE_INPUTS.reset(token)


_SAFE_CACHE: dict[int, tuple[Graph, frozenset[str]]] = {}  # id(graph) -> (graph, its finite-safe nodes)


def _finite_safe(graph: Graph) -> frozenset[str]:
    hit = _SAFE_CACHE.get(id(graph))
    if hit is not None and hit[0] is graph:
        return hit[1]
    clean = set(graph.inputs)  # tensors that are finite when the graph inputs are
    clean.update(name for name, v in graph.constants.items()
                 if v.dtype.kind != "f" or not v.size or bool(np.isfinite(v).all()))
    safe: set[str] = set()
    for node in graph.nodes:  # an input of unknown type counts as a float one that may not be finite
        if all(not i or i in clean or (i in graph.types and not graph.types[i].dtype.is_float) for i in node.inputs):
            safe.add(node.name)
            if node.op in FINITE_OPS and _finite_steps(node):
                clean.update(o for o in node.outputs if o)
    if len(_SAFE_CACHE) >= 8:
        _SAFE_CACHE.pop(next(iter(_SAFE_CACHE)))
    _SAFE_CACHE[id(graph)] = (graph, frozenset(safe))
    return _SAFE_CACHE[id(graph)][1]


def _finite_steps(node: Node) -> bool:
    """The node's own conditions for being finite-preserving, beyond its op being in ``FINITE_OPS``."""
    if node.op is OpType.LRN:  # x * (bias + ...)^-beta: finite for finite x when bias > 0 (0^-beta is inf)
        return isinstance(node.attrs, LRNAttrs) and node.attrs.bias > 0
    if node.op is not OpType.FUSED_ELEMENTWISE:
        return True
    return node.attrs is not None and all(step.op in FINITE_OPS for step in node.attrs.steps)


def finite_safe(node: Node, graph: Optional[Graph]) -> bool:
    """Whether every float input of ``node`` is finite whenever the graph's inputs are: only ops of
    ``FINITE_OPS`` upstream, every constant finite. Without its graph (a layer compiled on its own,
    as a CUDA test's CPU reference is) nothing is known: ``False``."""
    return graph is not None and node.name in _finite_safe(graph)


def finite_or_exact(fast: Kernel, exact: Kernel) -> Kernel:
    """``fast`` in runs whose inputs are all finite (``finite_run``), ``exact`` in the others."""

    def run(inputs: Inputs) -> list[Optional[torch.Tensor]]:
        return fast(inputs) if _FINITE_INPUTS.get() else exact(inputs)

    return run


def finite_postop(act: Activation, params: Sequence[float]) -> Optional[OneDNNPostOp]:
    """The oneDNN post-op computing ``act`` exactly on finite values, for ``finite_safe`` half
    layers in runs with finite inputs: ReLU, Clip and GELU (erf) too, which the activation table
    keeps out of oneDNN because its post-ops turn NaN (or +inf, for GELU) into numbers."""
    p = activation_params(act, params)
    if act is Activation.RELU:
        return OneDNNPostOp("relu")
    if act is Activation.CLIP:
        return OneDNNPostOp("hardtanh", (float(p[0]), float(p[1])))
    if act is Activation.GELU_ERF:
        return OneDNNPostOp("gelu", (), "none")
    return onednn_postop(act, params)


def _planned_dtypes(node: Node, ctx: CompileContext) -> list[tuple[int, torch.dtype]]:
    """(output index, storage dtype) of each float output of half layer ``node``."""
    out = []
    precisions = {node.name: Precision(ctx.precision)}
    for i, name in enumerate(node.outputs):
        t = ctx.graph.types.get(name) if name else None
        if t is not None and t.dtype.is_float:
            out.append((i, torch_dtype(storage_dtype(ctx.graph, precisions, node.name, name))))
    return out


__all__ = ["FINITE_OPS", "FP32_PARAMS", "HALF_DTYPES", "UPCAST_OPS", "finite_or_exact", "finite_postop",
           "finite_run", "finite_safe", "half_applies", "half_kernel", "inputs_finite", "layer_dtype",
           "owns_constants", "storage_dtype"]
