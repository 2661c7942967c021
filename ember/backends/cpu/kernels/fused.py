"""FusedElementwise: a chain of elementwise ops run as one layer.

Each step is compiled once into its own generic kernel; at run time the steps run in order on
the node's inputs and the results of earlier steps, and the last result is the output.
Intermediates that no later step reads twice are updated in place where the op allows it, so
the chain allocates one buffer instead of one per step.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.chain_steps import fused_scale_link
from ember.backends.cpu.kernels.common import Inputs, Tensor, broadcast_shape
from ember.backends.cpu.registry import ATEN, lookup, register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedElementwiseAttrs

#: Steps that may overwrite their first operand (same shape and dtype as the result).
_IN_PLACE: dict[OpType, Callable[..., Tensor]] = {
    OpType.RELU: torch.relu_,
    OpType.SIGMOID: torch.sigmoid_,
    OpType.TANH: torch.tanh_,
    OpType.EXP: torch.exp_,
    OpType.NEG: torch.neg_,
    OpType.ADD: Tensor.add_,
    OpType.SUB: Tensor.sub_,
    OpType.MUL: Tensor.mul_,
}


def _uses(steps, n_inputs: int) -> list[int]:
    uses = [0] * (n_inputs + len(steps))
    for step in steps:
        for o in step.operands:
            uses[o] += 1
    return uses


@register_kernel(OpType.FUSED_ELEMENTWISE)
def fused_elementwise(node: Node, ctx: CompileContext) -> Kernel:
    a: FusedElementwiseAttrs = node.attrs
    n_in = len(node.inputs)
    uses = _uses(a.steps, n_in)
    plan: list[tuple[Kernel, tuple[int, ...], Optional[Callable[..., Tensor]]]] = []
    for i, step in enumerate(a.steps):
        sub = Node(f"{node.name}/step{i}", step.op, tuple(f"%{o}" for o in step.operands),
                   (f"{node.name}/out{i}",), step.attrs)
        kernel = lookup(sub, ATEN, None).factory(sub, ctx)
        first = step.operands[0] if step.operands else -1
        inplace = _IN_PLACE.get(step.op) if first >= n_in and uses[first] == 1 else None
        plan.append((kernel, step.operands, inplace))

    any_inplace = any(p[2] is not None for p in plan)

    def run(inputs: Inputs) -> list:
        values: list[Optional[Tensor]] = list(inputs)
        # a step may hand back its input unchanged (a no-op Cast or Clip): never write into those
        owned = ({t.untyped_storage().data_ptr() for t in inputs if t is not None}
                 if any_inplace else set())
        for kernel, operands, inplace in plan:
            args = [values[o] for o in operands]
            out = None
            if (inplace is not None and _fits(args)
                    and args[0].untyped_storage().data_ptr() not in owned):
                out = inplace(*args)
            if out is None:
                out = kernel(args)[0]
            values.append(out)
        return [values[-1]]

    link = fused_scale_link(node, ctx)
    if link is not None:  # an SE-ResNet block's relu(x * gate + identity) may run inside a chain
        run.chain_link = link  # type: ignore[attr-defined]
    return run


def _fits(args: list) -> bool:
    """Whether the in-place form writes a result of the first operand's shape and dtype."""
    first = args[0]
    if first is None or not first.is_floating_point():
        return False
    for other in args[1:]:
        if other is None or other.dtype != first.dtype:
            return False
        if broadcast_shape(first.shape, other.shape) != tuple(first.shape):
            return False
    return True
