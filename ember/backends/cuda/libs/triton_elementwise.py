"""Triton code generation for FusedElementwise layers: one kernel per step program.

``elementwise_program(steps, in_dtypes)`` turns a FusedElementwise node's steps into the body of
a Triton kernel (pure Python, no Triton needed: the CUDA registry asks it whether a layer has a
Triton form). ``run_program(program, inputs, shape, out_dtype, out=None)`` launches it:

- the output is allocated in the memory format of the first 4-D input of the output's full
  shape (channels-last stays channels-last), else contiguous; or given (``out``: any dense
  tensor, ``dense``, since the kernel stores at the linear index in the output's memory order);
- every input is read through its own strides over the output's index space (0 on broadcast
  dims), so broadcasting, channels-last and strided views all work without copies. Dims are
  dropped when of size 1 and merged where every operand is contiguous across them, and the
  kernel source is specialized to the result: inputs laid out like the output are read at the
  linear index, fully broadcast ones once per program (then widened to a block, so every value
  in the body has the block's shape), the rest through the coordinates of the dims they vary
  along;
- float values are computed in fp32 registers whatever their storage dtype, integers (int32,
  int64) and bools in their own type, exactly as each op computes them alone; a Cast to
  fp16/bf16 inside the chain rounds as the unfused Cast would; the result is stored in the
  output dtype.

Kernel sources are built per (program, index layout), written once into a per-user cache folder
(Triton's ``jit`` needs a real source file) and imported; the compiled kernels are cached by
Triton per argument specialization. Triton is imported only when a kernel is first launched.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ember.backends.layout import dense
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    AlphaAttrs,
    CastAttrs,
    ClipAttrs,
    GeluAttrs,
    HardSigmoidAttrs,
    IsInfAttrs,
    LeakyReluAttrs,
    ModAttrs,
    SeluAttrs,
)

BLOCK = 1024
NUM_WARPS = 4
_I32_LIMIT = 2**31 - 1


class NoTritonForm(Exception):
    """A step (or dtype) the Triton generator does not implement; the eager tactic runs it."""


# ---- value kinds ------------------------------------------------------------------------------
F, B, I32, I64 = "f", "b", "i32", "i64"  # fp32 registers, bool (i1), int32, int64


def value_kind(dtype: DType) -> str:
    if dtype.is_float:
        return F
    if dtype is DType.BOOL:
        return B
    if dtype is DType.INT32:
        return I32
    if dtype is DType.INT64:
        return I64
    raise NoTritonForm(f"dtype {dtype.value}")


def _is_int(kind: str) -> bool:
    return kind in (I32, I64)


def _lit(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)


# ---- one step -> one expression ---------------------------------------------------------------
_LIBDEVICE_UNARY = {
    OpType.TANH: "tanh", OpType.ROUND: "rint", OpType.SIN: "sin", OpType.COS: "cos",
    OpType.TAN: "tan", OpType.ASIN: "asin", OpType.ACOS: "acos", OpType.ATAN: "atan",
    OpType.SINH: "sinh", OpType.COSH: "cosh", OpType.ASINH: "asinh", OpType.ACOSH: "acosh",
    OpType.ATANH: "atanh",
}
_TL_UNARY = {
    OpType.ERF: "tl.erf({a})", OpType.SQRT: "tl.sqrt_rn({a})", OpType.EXP: "tl.exp({a})",
    OpType.LOG: "tl.log({a})", OpType.FLOOR: "tl.floor({a})", OpType.CEIL: "tl.ceil({a})",
    OpType.SIGMOID: "1.0 / (1.0 + tl.exp(-{a}))", OpType.RECIPROCAL: "tl.div_rn(1.0, {a})",
    OpType.SOFTSIGN: "{a} / (1.0 + tl.abs({a}))",
    OpType.HARD_SWISH: "{a} * tl.minimum(tl.maximum({a} + 3.0, 0.0), 6.0) / 6.0",
    OpType.SIGN: "tl.where({a} > 0.0, 1.0, tl.where({a} < 0.0, -1.0, {a}))",
}
_COMPARE = {OpType.EQUAL: "==", OpType.LESS: "<", OpType.GREATER: ">", OpType.LESS_OR_EQUAL: "<=",
            OpType.GREATER_OR_EQUAL: ">="}
_LOGICAL = {OpType.AND: "&", OpType.OR: "|", OpType.XOR: "^"}
_BITWISE = {OpType.BITWISE_AND: "&", OpType.BITWISE_OR: "|", OpType.BITWISE_XOR: "^"}
_ARITH = {OpType.ADD: "+", OpType.SUB: "-", OpType.MUL: "*"}
_TL_INT = {I32: "tl.int32", I64: "tl.int64"}
_CAST_FLOAT = {DType.FLOAT16: "tl.float16", DType.BFLOAT16: "tl.bfloat16"}


def _softplus(a: str) -> str:  # torch's: x above 20, else log1p(exp(x))
    return f"tl.where({a} > 20.0, {a}, libdevice.log1p(tl.exp({a})))"


def _float_unary(op: OpType, a: str, attrs) -> Optional[str]:
    if op in _TL_UNARY:
        return _TL_UNARY[op].format(a=a)
    if op in _LIBDEVICE_UNARY:
        return f"libdevice.{_LIBDEVICE_UNARY[op]}({a})"
    if op is OpType.RELU:
        return f"tl.where({a} < 0.0, 0.0, {a})"
    if op is OpType.NEG:
        return f"-{a}"
    if op is OpType.ABS:
        return f"tl.abs({a})"
    if op is OpType.LEAKY_RELU:
        alpha = (attrs or LeakyReluAttrs()).alpha
        return f"tl.where({a} < 0.0, {a} * {_lit(alpha)}, {a})"
    if op is OpType.HARD_SIGMOID:
        h = attrs or HardSigmoidAttrs()
        nan = "propagate_nan=tl.PropagateNan.ALL"  # NaN in, NaN out (Triton's default returns the other)
        return f"tl.minimum(tl.maximum({a} * {_lit(h.alpha)} + {_lit(h.beta)}, 0.0, {nan}), 1.0, {nan})"
    if op is OpType.GELU:
        approximate = (attrs or GeluAttrs()).approximate
        if approximate == "tanh":
            return (f"0.5 * {a} * (1.0 + libdevice.tanh(0.7978845608028654 * "
                    f"({a} + 0.044715 * {a} * {a} * {a})))")
        if approximate == "none":
            return f"0.5 * {a} * (1.0 + tl.erf({a} * 0.7071067811865476))"
        return None
    if op is OpType.IS_NAN:
        return f"{a} != {a}"
    if op is OpType.IS_INF:
        d = attrs or IsInfAttrs()
        pos, neg = f'({a} == float("inf"))', f'({a} == -float("inf"))'
        if d.detect_positive and d.detect_negative:
            return f"{pos} | {neg}"
        return pos if d.detect_positive else neg if d.detect_negative else f"({a} != {a}) & ({a} == {a})"
    if op is OpType.SOFTPLUS:
        return _softplus(a)
    if op is OpType.MISH:
        return f"{a} * libdevice.tanh({_softplus(a)})"
    if op is OpType.ELU:
        alpha = _lit((attrs or AlphaAttrs()).alpha)
        return f"tl.where({a} > 0.0, {a}, {alpha} * libdevice.expm1({a}))"
    if op is OpType.CELU:
        alpha = _lit((attrs or AlphaAttrs()).alpha)
        return f"tl.where({a} > 0.0, {a}, {alpha} * libdevice.expm1({a} / {alpha}))"
    if op is OpType.SELU:
        s = attrs or SeluAttrs()
        return f"{_lit(s.gamma)} * tl.where({a} > 0.0, {a}, {_lit(s.alpha)} * libdevice.expm1({a}))"
    if op is OpType.THRESHOLDED_RELU:
        return f"tl.where({a} > {_lit((attrs or AlphaAttrs()).alpha)}, {a}, 0.0)"
    return None


def _clip(a: str, kind: str, attrs: Optional[ClipAttrs]) -> str:
    c = attrs or ClipAttrs()
    fmt = _lit if kind == F else (lambda v: str(int(v)))
    expr = a
    if c.min is not None:
        expr = f"tl.where({expr} < {fmt(c.min)}, {fmt(c.min)}, {expr})"
    if c.max is not None:
        # NaN stays NaN, as torch.clamp keeps it
        expr = f"tl.where({expr} > {fmt(c.max)}, {fmt(c.max)}, {expr})"
    return expr


def _cast(a: str, kind: str, to: DType) -> str:
    if to.is_float:
        if to in _CAST_FLOAT:  # round as the unfused Cast would, keep computing in fp32
            return f"{a}.to({_CAST_FLOAT[to]}).to(tl.float32)"
        return a if kind == F else f"{a}.to(tl.float32)"
    if to is DType.BOOL:
        return a if kind == B else f"({a} != 0.0)" if kind == F else f"({a} != 0)"
    target = value_kind(to)
    return a if kind == target else f"{a}.to({_TL_INT[target]})"


def step_expr(op: OpType, attrs, args: Sequence[str], kinds: Sequence[str], out: str) -> str:
    """The Triton expression of one step (``args`` are names of values of ``kinds``; ``out`` is
    the result's kind); ``NoTritonForm`` when there is none."""
    k0 = kinds[0] if kinds else None
    if op is OpType.CAST:
        to = DType(attrs.to if isinstance(attrs, CastAttrs) else attrs)
        return _cast(args[0], k0, to)
    if op is OpType.CLIP and k0 in (F, I32, I64):
        return _clip(args[0], k0, attrs)
    if len(args) == 1 and op not in (OpType.MAX, OpType.MIN):
        a = args[0]
        if k0 == F and out in (F, B):
            expr = _float_unary(op, a, attrs)
            if expr is not None:
                return expr
        if _is_int(k0):
            if op is OpType.NEG:
                return f"-{a}"
            if op is OpType.ABS:
                return f"tl.abs({a})"
            if op is OpType.RELU:
                return f"tl.where({a} < 0, 0, {a})"
            if op is OpType.BITWISE_NOT:
                return f"~{a}"
        if k0 == B and op is OpType.NOT:
            return f"{a} == 0"
        if k0 == B and op is OpType.RELU:
            return a
        raise NoTritonForm(f"{op} on {k0}")
    if op in (OpType.MAX, OpType.MIN):
        if len(set(kinds)) != 1 or k0 not in (F, I32, I64):
            raise NoTritonForm(f"{op} on {kinds}")
        fn = "tl.maximum" if op is OpType.MAX else "tl.minimum"
        nan = ", propagate_nan=tl.PropagateNan.ALL" if k0 == F else ""
        expr = args[0]
        for b in args[1:]:
            expr = f"{fn}({expr}, {b}{nan})"
        return expr
    if op is OpType.WHERE:
        c = args[0] if kinds[0] == B else f"({args[0]} != 0)"
        if kinds[1] != kinds[2]:
            raise NoTritonForm(f"Where on {kinds}")
        return f"tl.where({c}, {args[1]}, {args[2]})"
    a, b = args[0], args[1]
    k1 = kinds[1]
    if op is OpType.POW and k0 == F:
        e = b if k1 == F else f"{b}.to(tl.float32)"
        return f"libdevice.pow({a}, {e})"
    if k0 != k1:
        raise NoTritonForm(f"{op} on {kinds}")
    if op in _ARITH and k0 in (F, I32, I64):
        return f"{a} {_ARITH[op]} {b}"
    if op is OpType.DIV and k0 == F:
        return f"tl.div_rn({a}, {b})"
    if op is OpType.MOD and k0 == F and (attrs or ModAttrs()).fmod:
        return f"libdevice.fmod({a}, {b})"
    if op is OpType.PRELU and k0 == F:
        return f"tl.where({a} < 0.0, {a} * {b}, {a})"
    if op in _COMPARE:
        return f"{a} {_COMPARE[op]} {b}"
    if op in _LOGICAL and k0 == B:
        return f"{a} {_LOGICAL[op]} {b}"
    if op in _BITWISE and _is_int(k0):
        return f"{a} {_BITWISE[op]} {b}"
    raise NoTritonForm(f"{op} on {kinds}")


# ---- the program ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElementwiseProgram:
    """The kernel body of one FusedElementwise step list, for inputs of known kinds."""

    n_inputs: int
    in_kinds: tuple[str, ...]
    body: tuple[str, ...]  # lines computing v<n_inputs>.. from v0..v<n_inputs-1>
    result: str
    out_kind: str

    @property
    def uses_libdevice(self) -> bool:
        return any("libdevice." in line for line in self.body)


def step_types(node: Node, in_types: Sequence[TensorType]) -> list[TensorType]:
    """The type of every input and step result of a FusedElementwise ``node``."""
    from ember.ops.registry import infer_node

    types = list(in_types)
    for i, step in enumerate(node.attrs.steps):
        sub = Node(f"{node.name}/step{i}", step.op, tuple(f"%{o}" for o in step.operands),
                   (f"{node.name}/out{i}",), step.attrs)
        types.append(infer_node(sub, [types[o] for o in step.operands], [None] * len(step.operands))[0])
    return types


def elementwise_program(node: Node, in_types: Sequence[TensorType]) -> ElementwiseProgram:
    """The Triton body of ``node``'s steps; ``NoTritonForm`` names the first step without one."""
    types = step_types(node, in_types)
    n = len(in_types)
    kinds = []
    for k, t in enumerate(types):
        try:
            kinds.append(value_kind(t.dtype))
        except NoTritonForm as e:
            what = f"input {k}" if k < n else f"step {k - n} ({node.attrs.steps[k - n].op})"
            raise NoTritonForm(f"{what} of {node.name!r} is {e}") from None
    body = []
    for i, step in enumerate(node.attrs.steps):
        try:
            expr = step_expr(step.op, step.attrs, [f"v{o}" for o in step.operands],
                             [kinds[o] for o in step.operands], kinds[n + i])
        except NoTritonForm as e:
            raise NoTritonForm(f"step {i} of {node.name!r}: {e}") from None
        body.append(f"v{n + i} = {expr}")
    return ElementwiseProgram(n, tuple(kinds[:n]), tuple(body), f"v{n + len(node.attrs.steps) - 1}",
                              kinds[-1])


# ---- index layout -----------------------------------------------------------------------------
DENSE = "dense"


@dataclass(frozen=True)
class Layout:
    """How the output's index space is walked: ``sizes`` (memory order, outermost first) and per
    input its ``strides`` over those dims and its access ``pattern``: ``"dense"`` (same layout as
    the output: read at the linear index) or the tuple of dims it varies along (``()``: one
    value for all)."""

    sizes: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    patterns: tuple[object, ...]
    index64: bool


def output_like(inputs: Sequence[torch.Tensor], shape: Sequence[int], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The output buffer: channels-last when the first full-size 4-D input is, else contiguous."""
    fmt = torch.contiguous_format
    if len(shape) == 4:
        for t in inputs:
            if tuple(t.shape) == tuple(shape):
                if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
                    fmt = torch.channels_last
                break
    return torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=fmt)


def plan_layout(inputs: Sequence[torch.Tensor], out: torch.Tensor) -> Layout:
    """Coalesced sizes and per-input strides over ``out``'s memory order (``out`` is dense)."""
    shape = tuple(out.shape)
    # memory order of the output: dims by decreasing stride (size-1 dims do not matter)
    order = sorted(range(len(shape)), key=lambda d: -out.stride(d))
    views = [t.expand(shape) for t in inputs]
    dims = [d for d in order if shape[d] != 1]
    sizes = [shape[d] for d in dims]
    strides = [[v.stride(d) for d in dims] for v in views]
    out_strides = [out.stride(d) for d in dims]
    # merge an outer dim into the inner one next to it where every operand is contiguous across
    i = len(sizes) - 1
    while i > 0:
        outer, inner = i - 1, i
        ok = out_strides[outer] == out_strides[inner] * sizes[inner] and all(
            s[outer] == s[inner] * sizes[inner] for s in strides)
        if ok:
            sizes[inner] *= sizes[outer]
            out_strides[outer:inner] = []
            for s in strides:
                s[outer:inner] = []
            del sizes[outer]
        i -= 1
    patterns: list[object] = []
    for s in strides:
        if s == out_strides:
            patterns.append(DENSE)
        else:
            patterns.append(tuple(d for d, v in enumerate(s) if v != 0))
    numel = out.numel()
    reach = max([numel + BLOCK] + [sum((n - 1) * abs(v) for n, v in zip(sizes, s)) + 1 for s in strides])
    return Layout(tuple(sizes), tuple(tuple(s) for s in strides), tuple(patterns),
                  reach > _I32_LIMIT)


# ---- kernel source ----------------------------------------------------------------------------
def kernel_source(program: ElementwiseProgram, rank: int, patterns: Sequence[object]) -> str:
    """The Triton source of ``program`` for an index space of ``rank`` dims and input ``patterns``."""
    n = program.n_inputs
    ins = [f"in{i}" for i in range(n)]
    sizes = [f"size{d}" for d in range(rank)]
    strides = [f"st{i}_{d}" for i in range(n) for d in (patterns[i] if patterns[i] != DENSE else ())]
    params = ", ".join(ins + ["out", "numel"] + sizes + strides + ["BLOCK: tl.constexpr", "INDEX64: tl.constexpr"])
    lines = [
        "import triton",
        "import triton.language as tl",
    ]
    if program.uses_libdevice:
        lines.append("from triton.language.extra import libdevice")
    lines += [
        "",
        "",
        "@triton.jit",
        f"def fused_elementwise_kernel({params}):",
        "    if INDEX64:",
        "        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    else:",
        "        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < numel",
    ]
    needed = sorted({d for p in patterns if p != DENSE for d in p})
    if needed:
        # coordinates of the dims some input varies along, innermost first
        lines.append("    rem = offs")
        for d in range(rank - 1, min(needed) - 1, -1):
            if d == min(needed):
                lines.append(f"    c{d} = rem % size{d}" if d > 0 else f"    c{d} = rem")
            else:
                lines.append(f"    c{d} = rem % size{d}")
                lines.append(f"    rem = rem // size{d}")
    for i, p in enumerate(patterns):
        if p == DENSE:
            load = f"tl.load(in{i} + offs, mask=mask, other=0)"
        elif not p:
            load = f"tl.broadcast_to(tl.load(in{i}), [BLOCK])"  # one read, every value a block
        else:
            offset = " + ".join(f"c{d} * st{i}_{d}" for d in p)
            load = f"tl.load(in{i} + ({offset}), mask=mask, other=0)"
        if program.in_kinds[i] == F:
            load += ".to(tl.float32)"
        lines.append(f"    v{i} = {load}")
    lines += [f"    {line}" for line in program.body]
    lines.append(f"    tl.store(out + offs, {program.result}.to(out.dtype.element_ty), mask=mask)")
    return "\n".join(lines) + "\n"


_CACHE: dict[str, Callable] = {}
_LOCK = threading.Lock()


def _cache_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"ember-triton-{uid}")
    os.makedirs(path, exist_ok=True)
    return path


def load_kernel(source: str) -> Callable:
    """The ``triton.jit`` kernel of ``source`` (written once to the cache folder, imported once)."""
    with _LOCK:
        fn = _CACHE.get(source)
        if fn is not None:
            return fn
        digest = hashlib.sha256(source.encode()).hexdigest()[:24]
        path = os.path.join(_cache_dir(), f"ember_ew_{digest}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(f"ember_ew_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        fn = module.fused_elementwise_kernel
        _CACHE[source] = fn
        return fn


@functools.lru_cache(maxsize=256)
def _kernel_for(program: ElementwiseProgram, rank: int, patterns: tuple) -> Callable:
    """The kernel of ``program`` for one index layout, generated and loaded once (not per call:
    eager runs and tactic timing call ``run_program`` in a loop)."""
    return load_kernel(kernel_source(program, rank, patterns))


def run_program(program: ElementwiseProgram, inputs: Sequence[torch.Tensor], shape: Sequence[int],
                out_dtype: torch.dtype, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Runs ``program`` on ``inputs`` (broadcast to ``shape``); a fresh output of ``out_dtype``, or
    ``out`` (``shape``, ``out_dtype``, ``dense``; ``ValueError`` before any launch otherwise).
    Every element is computed alone, so the values do not depend on the output's layout."""
    if len(inputs) != program.n_inputs:
        raise ValueError(f"FusedElementwise kernel takes {program.n_inputs} inputs, got {len(inputs)}")
    device = inputs[0].device if inputs else torch.device("cuda")
    if out is None:
        out = output_like(inputs, shape, out_dtype, device)
    elif tuple(out.shape) != tuple(shape) or out.dtype != out_dtype or out.device != device or not dense(out):
        raise ValueError(f"out ({tuple(out.shape)}, {out.dtype}, strides {out.stride()}, {out.device}) cannot "
                         f"take the {tuple(shape)} {out_dtype} result on {device}: it must be dense")
    numel = out.numel()
    if numel == 0:
        return out
    layout = plan_layout(inputs, out)
    kernel = _kernel_for(program, len(layout.sizes), tuple(layout.patterns))
    strides = [v for s, p in zip(layout.strides, layout.patterns) if p != DENSE for v in (s[d] for d in p)]
    grid = ((numel + BLOCK - 1) // BLOCK,)
    kernel[grid](*inputs, out, numel, *layout.sizes, *strides, BLOCK=BLOCK, INDEX64=layout.index64,
                 num_warps=NUM_WARPS)
    return out
