"""Binary and variadic elementwise kernels with ONNX (numpy) broadcasting and integer rules:
arithmetic, Mod, comparisons, logical and bitwise ops, Max/Min, Where."""
from __future__ import annotations

from typing import Callable

import torch

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.chain_steps import scale_link
from ember.backends.cpu.kernels.common import Inputs, Tensor, broadcast_shape
from ember.backends.cpu.registry import register_kernel
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import BitShiftAttrs, ModAttrs


def _div(a: Tensor, b: Tensor) -> Tensor:
    # ONNX integer Div truncates toward zero, as C does (numpy's // floors instead).
    if a.is_floating_point():
        return torch.div(a, b)
    if a.dtype is torch.bool:
        raise TypeError("Div is not defined on bool tensors")
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    # ONNX Pow: the output has the base's dtype, whatever the exponent's type.
    out = torch.pow(a, b)
    return out if out.dtype is a.dtype else out.to(a.dtype)


#: Binary ops whose kernel is one broadcasting torch function.
_BINARY: dict[OpType, Callable[[Tensor, Tensor], Tensor]] = {
    OpType.ADD: torch.add,
    OpType.SUB: torch.sub,
    OpType.MUL: torch.mul,
    OpType.DIV: _div,
    OpType.POW: _pow,
    OpType.EQUAL: torch.eq,
    OpType.LESS: torch.lt,
    OpType.GREATER: torch.gt,
    OpType.GREATER_OR_EQUAL: torch.ge,
    OpType.LESS_OR_EQUAL: torch.le,
    OpType.AND: torch.logical_and,
    OpType.OR: torch.logical_or,
    OpType.XOR: torch.logical_xor,
    OpType.BITWISE_AND: torch.bitwise_and,
    OpType.BITWISE_OR: torch.bitwise_or,
    OpType.BITWISE_XOR: torch.bitwise_xor,
}


#: ``out=`` forms of the float binary ops (TensorIterator: they write any strided view directly).
_OUT_FORMS: dict[OpType, Callable[[Tensor, Tensor, Tensor], object]] = {
    OpType.ADD: lambda a, b, out: torch.add(a, b, out=out),
    OpType.SUB: lambda a, b, out: torch.sub(a, b, out=out),
    OpType.MUL: lambda a, b, out: torch.mul(a, b, out=out),
    OpType.DIV: lambda a, b, out: torch.div(a, b, out=out),
}


def binary_write_into(out_fn: Callable[[Tensor, Tensor, Tensor], object]) -> WriteInto:
    """Writing a float binary op's broadcast result into a given tensor (a Concat's slice)."""

    def write(inputs: Inputs, out: Tensor) -> bool:
        a, b = inputs[0], inputs[1]
        if a is None or b is None or not a.is_floating_point() or not (a.dtype == b.dtype == out.dtype):
            return False
        if broadcast_shape(a.shape, b.shape) != tuple(out.shape) or a.device != out.device:
            return False
        out_fn(a, b, out)
        return True

    return WriteInto(write, lambda out: out.is_floating_point())


def register_binary(op: OpType, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Registers the kernel of a two-input elementwise op computed by ``fn``."""
    out_fn = _OUT_FORMS.get(op)

    @register_kernel(op)
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        def run(inputs: Inputs) -> list:
            return [fn(inputs[0], inputs[1])]

        kernel = with_write_into(run, binary_write_into(out_fn)) if out_fn is not None else run
        link = scale_link(node, ctx) if op is OpType.MUL else None
        if link is not None:  # a squeeze-excite block's scale may run inside a chain
            kernel.chain_link = link  # type: ignore[attr-defined]
        return kernel


for _op, _fn in _BINARY.items():
    register_binary(_op, _fn)


@register_kernel(OpType.BIT_SHIFT)
def bit_shift(node: Node, ctx: CompileContext) -> Kernel:
    """BitShift LEFT/RIGHT as ONNX's reference does it: a shift outside [0, width) gives 0 (and
    -1 for a right shift of a negative signed value); a left shift wraps in the width. Computed
    in int64 (torch has few unsigned kernels), then wrapped back to the input's type."""
    left = (node.attrs or BitShiftAttrs()).direction == "LEFT"

    def run(inputs: Inputs) -> list:
        x, s = torch.broadcast_tensors(inputs[0], inputs[1])
        bits = x.element_size() * 8
        signed = x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
        wide, shift = x.to(torch.int64), s.to(torch.int64)
        out_of_range = (shift < 0) | (shift >= bits)
        safe = torch.where(out_of_range, torch.zeros_like(shift), shift)
        if left:
            y = torch.bitwise_left_shift(wide, safe)
            fill = torch.zeros_like(y)
        else:
            if not signed and bits < 64:
                wide = torch.bitwise_and(wide, (1 << bits) - 1)
            y = torch.bitwise_right_shift(wide, safe)
            fill = torch.where(wide < 0, -torch.ones_like(y), torch.zeros_like(y)) if signed else torch.zeros_like(y)
        y = torch.where(out_of_range, fill, y)
        if bits < 64:  # wrap into the width (two's complement for the signed types)
            y = torch.bitwise_and(y, (1 << bits) - 1)
            if signed:
                y = torch.where(y >= (1 << (bits - 1)), y - (1 << bits), y)
        return [y.to(x.dtype)]

    return run


@register_kernel(OpType.MOD)
def mod(node: Node, ctx: CompileContext) -> Kernel:
    """fmod: C's fmod (sign of the dividend); else Python's % (sign of the divisor)."""
    fn = torch.fmod if (node.attrs or ModAttrs()).fmod else torch.remainder

    def run(inputs: Inputs) -> list:
        return [fn(inputs[0], inputs[1])]

    return run


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Kernel:
    def run(inputs: Inputs) -> list:
        xs = [t for t in inputs if t is not None]
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        if len(xs) == 1:
            out = out.clone()
        return [out]

    return run


@register_kernel(OpType.MAX)
def maximum(node: Node, ctx: CompileContext) -> Kernel:
    """Max over any number of inputs, broadcast together (NaN propagates, as in numpy)."""
    return _variadic(torch.maximum)


@register_kernel(OpType.MIN)
def minimum(node: Node, ctx: CompileContext) -> Kernel:
    return _variadic(torch.minimum)


@register_kernel(OpType.WHERE)
def where(node: Node, ctx: CompileContext) -> Kernel:
    def run(inputs: Inputs) -> list:
        cond, x, y = inputs[0], inputs[1], inputs[2]
        if cond.dtype is not torch.bool:
            cond = cond.to(torch.bool)
        return [torch.where(cond, x, y)]

    return run
