"""Binary and variadic elementwise ops (numpy broadcasting from opset 7 on)."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType

for _name, _op in (
    ("Add", OpType.ADD), ("Sub", OpType.SUB), ("Mul", OpType.MUL), ("Div", OpType.DIV),
    ("Pow", OpType.POW), ("Equal", OpType.EQUAL), ("Less", OpType.LESS),
    ("Greater", OpType.GREATER),
):
    onnx_op(_name, since=7)(direct(_op, nin=2))

onnx_op("Where", since=9)(direct(OpType.WHERE, nin=3))


def _variadic(op: OpType):
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Max/Min of any number of inputs: a chain of binary IR nodes."""
        inputs = [i for i in n.inputs if i]
        if not inputs:
            raise reject("it has no inputs")
        if len(inputs) == 1:
            ctx.emit(n, OpType.IDENTITY, inputs, n.outputs[:1])
            return
        acc = inputs[0]
        for k, other in enumerate(inputs[1:]):
            last = k == len(inputs) - 2
            out = n.outputs[0] if last else ctx.temp(n, f"partial{k}")
            ctx.emit(n, op, (acc, other), (out,), suffix="" if last else f"part{k}")
            acc = out

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("Max", since=8)(_variadic(OpType.MAX))
onnx_op("Min", since=8)(_variadic(OpType.MIN))
