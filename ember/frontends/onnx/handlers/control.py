"""``If`` whose condition is known at build time: the taken branch is imported inline.

Exporters emit such Ifs for shape checks (TorchScript's ``squeeze(dim)`` on a dynamic-shape
input becomes ``If(Equal(Gather(Shape(x), d), 1))``); the condition follows from the input
shapes, so the branch can be chosen once, here.
"""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType


@onnx_op("If", since=1)
def import_if(ctx: ImportContext, n: OnnxNode) -> None:
    from ember.frontends.onnx.importer import convert_subgraph

    cond = ctx.value(n.input(0))
    if cond is None or cond.dtype == object or cond.size != 1:
        raise reject("its condition is only known at run time; Ember imports If only when the "
                     "condition follows from constants and input shapes. Give fixed input shapes "
                     "(shapes=... / --shapes) or remove the branch from the model")
    taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
    branch = n.attr(taken)
    if branch is None or not hasattr(branch, "g"):
        raise reject(f"it has no {taken} graph")
    outputs = convert_subgraph(ctx, branch.g, n)
    if len(outputs) != len(n.outputs):
        raise reject(f"its {taken} has {len(outputs)} outputs for {len(n.outputs)} node outputs")
    for out, src in zip(n.outputs, outputs):
        if out:
            ctx.emit(n, OpType.IDENTITY, (src,), (out,), suffix=taken)
