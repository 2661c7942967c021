"""FusedElementwise on the GPU: Ember's generated Triton kernel, or the steps run eagerly.

Two tactics, timed against each other by the builder:

- ``eager`` (the default and the timer's reference): each step is the op's own PyTorch kernel
  (the CPU backend's device-agnostic FusedElementwise kernel, run on the GPU), with float inputs
  and outputs in the layer's precision, as the unfused layers would run;
- ``triton``: one generated kernel for the whole chain (``triton_elementwise``): every input read
  once through its broadcast strides, fp32 math in registers, one store in the output dtype.
  It applies when every step and dtype has a Triton form; the rest keep ``eager``.
  ``write_into`` (``ember.backends.base``): the same kernel stores into a given ``out`` of the
  result's shape and dtype that is dense in any dim order (``triton_elementwise.dense``: it
  stores at the linear index over the output's memory order, so not into a strided slice).
"""
from __future__ import annotations

from typing import Optional

import torch

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cuda.device import compute_dtype
from ember.backends.cuda.fallback import wrap_generic
from ember.backends.cuda.registry import register_cuda_kernel
from ember.errors import BuildError, EmberError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.records import Records

Tensor = torch.Tensor


@register_cuda_kernel(OpType.FUSED_ELEMENTWISE, "eager", rank=0)
def fused_elementwise_eager(node: Node, ctx: CompileContext) -> Kernel:
    """The steps one after another with PyTorch ops (intermediates updated in place)."""
    inner = wrap_generic(node, ctx)
    n_in = len(node.inputs)

    def run(inputs) -> list:
        out = inner(inputs)
        # a chain whose last step returned an input unchanged must still give a fresh tensor
        if any(out[0] is t for t in inputs[:n_in]):
            out = [out[0].clone()]
        return out

    return run


def _program(node: Node, graph: Graph):
    from ember.backends.cuda.libs.triton_elementwise import elementwise_program

    in_types = [graph.types.get(i) for i in node.inputs]
    if any(t is None for t in in_types):
        raise BuildError(f"node {node.name!r}: an input of the FusedElementwise layer has no type")
    return elementwise_program(node, in_types)


def _has_triton_form(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    if graph is None or not node.inputs:
        return False
    from ember.backends.cuda.libs.triton_elementwise import NoTritonForm

    try:
        _program(node, graph)
    except (NoTritonForm, EmberError):  # no Triton form, or types the generator cannot derive
        return False
    return True


@register_cuda_kernel(OpType.FUSED_ELEMENTWISE, "triton", rank=10, when=_has_triton_form, needs_triton=True)
def fused_elementwise_triton(node: Node, ctx: CompileContext) -> Kernel:
    """The whole chain as one generated Triton kernel (fp32 math, output in its own dtype)."""
    from ember.backends.cuda.libs.triton_elementwise import F, run_program
    from ember.backends.layout import dense
    from ember.backends.tensors import torch_dtype

    program = _program(node, ctx.graph)
    out_type = ctx.graph.types[node.outputs[0]]
    out_dtype = compute_dtype(ctx.precision) if program.out_kind == F else torch_dtype(out_type.dtype)

    def run(inputs) -> list:
        shape = torch.broadcast_shapes(*(t.shape for t in inputs))
        return [run_program(program, inputs, shape, out_dtype)]

    def accepts(out: Tensor) -> bool:
        return out.dtype == out_dtype and dense(out)

    def write(inputs, out: Tensor) -> bool:
        if not accepts(out) or any(t is None or t.device != out.device for t in inputs):
            return False
        shape = torch.broadcast_shapes(*(t.shape for t in inputs))
        if tuple(out.shape) != tuple(shape):
            return False
        run_program(program, inputs, shape, out_dtype, out=out)
        return True

    return with_write_into(run, WriteInto(write, accepts))
