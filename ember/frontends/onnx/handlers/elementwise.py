"""Binary and variadic elementwise ops (numpy broadcasting from opset 7 on): arithmetic,
comparisons, logic and bitwise ops."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import HandlerFn, binary_chain, choice, direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import AxesAttrs, BitShiftAttrs, BitShiftDirection, ModAttrs

for _name, _op, _since in (
    ("Add", OpType.ADD, 7), ("Sub", OpType.SUB, 7), ("Mul", OpType.MUL, 7), ("Div", OpType.DIV, 7),
    ("Pow", OpType.POW, 7), ("Equal", OpType.EQUAL, 7), ("Less", OpType.LESS, 7),
    ("Greater", OpType.GREATER, 7), ("GreaterOrEqual", OpType.GREATER_OR_EQUAL, 12),
    ("LessOrEqual", OpType.LESS_OR_EQUAL, 12), ("And", OpType.AND, 7), ("Or", OpType.OR, 7),
    ("Xor", OpType.XOR, 7), ("BitwiseAnd", OpType.BITWISE_AND, 18),
    ("BitwiseOr", OpType.BITWISE_OR, 18), ("BitwiseXor", OpType.BITWISE_XOR, 18),
):
    onnx_op(_name, since=_since)(direct(_op, nin=2))

onnx_op("BitwiseNot", since=18)(direct(OpType.BITWISE_NOT, nin=1))


def _legacy_binary(op: OpType) -> HandlerFn:
    """The binary op before opset 7: no numpy broadcasting, but ``broadcast=1`` lets B broadcast
    into A aligned at ``axis`` (default: B's dims are A's last), e.g. a per-channel ``[C]`` added to
    ``[N, C, H, W]`` at axis 1; B's dims after it become size-1 axes here."""
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        a, b = n.input(0), n.input(1)
        axis = n.attr("axis")
        if int(n.attr("broadcast", 0)) and axis is not None:
            at, bt = ctx.type(a), ctx.type(b)
            start = int(axis) + at.rank if int(axis) < 0 else int(axis)
            if not 0 <= start <= at.rank - bt.rank:
                raise reject(f"broadcast axis {axis} does not place B {list(bt.shape)} inside A {list(at.shape)}")
            trailing = at.rank - start - bt.rank
            if trailing:
                aligned = ctx.temp(n, "b_aligned")
                ctx.emit(n, OpType.UNSQUEEZE, (b,), (aligned,),
                         AxesAttrs(axes=tuple(range(bt.rank, bt.rank + trailing))), suffix="b_aligned")
                b = aligned
        ctx.emit(n, op, (a, b), n.outputs[:1])

    handler.__name__ = f"import_legacy_{op.name.lower()}"
    return handler


for _name, _op in (("Add", OpType.ADD), ("Sub", OpType.SUB), ("Mul", OpType.MUL), ("Div", OpType.DIV),
                   ("Pow", OpType.POW), ("Equal", OpType.EQUAL), ("Less", OpType.LESS),
                   ("Greater", OpType.GREATER), ("And", OpType.AND), ("Or", OpType.OR), ("Xor", OpType.XOR)):
    onnx_op(_name, since=1)(_legacy_binary(_op))


@onnx_op("BitShift", since=11)
def import_bit_shift(ctx: ImportContext, n: OnnxNode) -> None:
    direction = choice(n, "direction", BitShiftDirection.LEFT)
    ctx.emit(n, OpType.BIT_SHIFT, n.inputs[:2], n.outputs[:1], BitShiftAttrs(direction=direction))
onnx_op("Where", since=9)(direct(OpType.WHERE, nin=3))


@onnx_op("Mod", since=10)
def import_mod(ctx: ImportContext, n: OnnxNode) -> None:
    """fmod=0: the result takes the divisor's sign (integer inputs); fmod=1: C fmod."""
    ctx.emit(n, OpType.MOD, n.inputs[:2], n.outputs[:1], ModAttrs(fmod=bool(n.attr("fmod", 0))))


def _variadic(op: OpType) -> HandlerFn:
    def handler(ctx: ImportContext, n: OnnxNode) -> None:
        """Max/Min of any number of inputs: a chain of binary IR nodes."""
        binary_chain(ctx, n, op, n.outputs[0])

    handler.__name__ = f"import_{op.name.lower()}"
    return handler


onnx_op("Max", since=6)(_variadic(OpType.MAX))
onnx_op("Min", since=6)(_variadic(OpType.MIN))
