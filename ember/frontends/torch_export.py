"""PyTorch modules straight into the IR, through ``torch.export`` (no ONNX file in between).

>>> engine = ember.build(model, ember.BuildConfig(device="cpu"),            # doctest: +SKIP
...                      example_inputs=(torch.randn(1, 3, 224, 224),))
>>> batch = torch.export.Dim("batch", min=1, max=32)                          # doctest: +SKIP
>>> graph = ember.frontends.load(model, example_inputs=(x,),                  # doctest: +SKIP
...                              dynamic_shapes={"x": {0: batch}})

The module is exported (``torch.export.export``, non-strict by default) and decomposed to the
core ATen op set, except ``linear`` and ``matmul``, kept so that each becomes one Gemm or MatMul
as from ONNX (and attention fuses the same way). Each ATen op is written as the IR op(s) an ONNX
export would have given, through ``ember.frontends.network.Network`` (so the shape rules and
their messages are the ONNX frontend's). Parameters and buffers become constants; computations on constants alone
(``arange``, a weight's ``permute``, a mask's arithmetic) are folded by running them in
PyTorch. A module with ops Ember does not map gets one ``UnsupportedOpError`` listing all of
them. Dynamic dims (``dynamic_shapes`` with ``torch.export.Dim("batch")``) become symbolic
dims named after the ``Dim``; give ``BuildConfig(profiles=...)`` for them.

Nothing here imports torch until a model is imported (``import ember.frontends`` stays light).
"""
from __future__ import annotations

import math
import operator
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ember.errors import EmberError, ModelLoadError, UnsupportedOpError
from ember.frontends.graph_builder import ShapeMap, symbolic_dim
from ember.frontends.network import Network, Tensor
from ember.ir.dtype import DType
from ember.ir.graph import Graph, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import Dim
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    CastAttrs,
    ConvAttrs,
    ConvTransposeAttrs,
    GemmAttrs,
    LRNAttrs,
    PadAttrs,
    ReduceAttrs,
    SliceAttrs,
    SoftmaxAttrs,
)

NAME = "torch"
SUFFIXES: tuple[str, ...] = ()
ACCEPTS = ("a torch.nn.Module with example_inputs=(...) (and optionally dynamic_shapes=...), "
           "or a torch.export.ExportedProgram")


def recognizes(source: object) -> bool:
    """A ``torch.nn.Module`` or ``torch.export.ExportedProgram`` (only once torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(source, torch.nn.Module):
        return True
    export = sys.modules.get("torch.export")
    return export is not None and isinstance(source, export.ExportedProgram)


def sniffs(path: Path) -> bool:
    return False


def load(source: Any, shapes: Optional[ShapeMap] = None, *, example_inputs: Any = None,
         example_kwargs: Optional[dict[str, Any]] = None, dynamic_shapes: Any = None,
         strict: bool = False, output_names: Optional[Sequence[str]] = None) -> Graph:
    """The IR graph of a ``torch.nn.Module`` (exported with ``example_inputs``, a tuple of
    tensors, ``example_kwargs`` and ``dynamic_shapes`` as ``torch.export.export`` takes them) or
    of a ``torch.export.ExportedProgram``. Inputs keep the names of ``forward``'s arguments;
    outputs are ``output`` (one) or ``output_0``, ``output_1``, ... unless ``output_names``.
    ``shapes`` overrides input shapes as for any model."""
    import torch

    if isinstance(source, torch.export.ExportedProgram):
        if example_inputs is not None or example_kwargs or dynamic_shapes is not None:
            raise ModelLoadError("an ExportedProgram is already exported: give no example_inputs, "
                                 "example_kwargs or dynamic_shapes with it")
        program, name = source, "exported_program"
    elif isinstance(source, torch.nn.Module):
        if example_inputs is None and not example_kwargs:
            raise ModelLoadError(
                f"a torch.nn.Module ({type(source).__name__}) is exported with torch.export, which "
                f"needs example inputs: pass example_inputs=(tensor, ...) to ember.build / "
                f"ember.frontends.load (and dynamic_shapes=... for dynamic dims)")
        args = example_inputs if isinstance(example_inputs, tuple) else (
            () if example_inputs is None else tuple(example_inputs)
            if isinstance(example_inputs, list) else (example_inputs,))
        args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
        was_training = source.training
        source.eval()
        try:
            program = torch.export.export(source, args, kwargs=example_kwargs,
                                          dynamic_shapes=dynamic_shapes, strict=strict)
        except Exception as e:  # torch raises many kinds; the user needs torch's own words
            raise ModelLoadError(f"torch.export could not export {type(source).__name__}: "
                                 f"{type(e).__name__}: {e}") from e
        finally:
            source.train(was_training)
        name = type(source).__name__
    else:
        raise ModelLoadError(f"expected a torch.nn.Module or ExportedProgram, got {type(source).__name__}")
    table = torch.export.default_decompositions()
    for kept in _KEPT:  # mapped as they are: one Gemm/MatMul each, as from ONNX
        table.pop(getattr(torch.ops.aten, kept).default, None)  # type: ignore[no-untyped-call]
    program = program.run_decompositions(table)
    net = _Importer(program, name, _dim_names(program, dynamic_shapes)).run(output_names)
    nodes = sum(1 for n in program.graph.nodes if n.op == "call_function")
    info = SourceInfo(format=NAME, producer=f"torch.export {torch.__version__}", nodes=nodes)
    return net.to_graph(shapes, source_info=info)


#: Ops kept out of the core ATen decomposition.
_KEPT = ("linear", "matmul", "hardswish", "hardsigmoid", "silu", "gelu", "hardtanh")


# ---- dynamic dims -------------------------------------------------------------------------
def _dim_names(program: Any, dynamic_shapes: Any) -> dict[str, str]:
    """``{str(symbol): Dim name}`` for the user inputs' dims that ``dynamic_shapes`` names."""
    if dynamic_shapes is None:
        return {}
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    vals = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    specs: list[Any]
    if isinstance(dynamic_shapes, dict):
        specs = [dynamic_shapes.get(u) for u in user]
    else:
        specs = list(dynamic_shapes)
    names: dict[str, str] = {}
    for u, spec in zip(user, specs):
        val = vals.get(u)
        if spec is None or val is None or not hasattr(val, "shape"):
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        for axis, dim in items:
            label = getattr(dim, "__name__", None)
            if label and axis < len(val.shape) and not isinstance(val.shape[axis], int):
                names.setdefault(str(val.shape[axis]), str(label))
    return names


class _Sym:
    """A symbolic int of the exported graph (``sym_size``): only its meta value is known."""

    def __init__(self, expr: Any) -> None:
        self.expr = expr


Handler = Callable[["_Importer", Any, list[Any], dict[str, Any]], Any]
_HANDLERS: dict[str, Handler] = {}
#: ATen ops that only check things at export time, or copy: the value passes through.
_PASS_THROUGH = {"aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.lift_fresh_copy",
                 "aten.dropout", "aten.native_dropout", "aten.feature_dropout"}
_IGNORED = {"aten._assert_tensor_metadata", "aten._assert_scalar", "aten.sym_constrain_range_for_size",
            "aten._assert_async", "aten.sym_constrain_range"}


def _aten(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            _HANDLERS[n if "." in n else f"aten.{n}"] = fn
        return fn
    return register


def _key(target: Any) -> str:
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet)
    if target is operator.getitem:
        return "getitem"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', repr(target))}"


def _supported(key: str) -> bool:
    return key in _HANDLERS or key in _PASS_THROUGH or key in _IGNORED or key in ("getitem", "aten.sym_size")


class _Importer:
    def __init__(self, program: Any, name: str, dim_names: dict[str, str]) -> None:
        self.program = program
        self.net = Network(name)
        self.dim_names = dim_names
        self.env: dict[str, Any] = {}
        self.consts: dict[int, tuple[Any, Tensor]] = {}  # id(torch tensor) -> (it, its constant)
        self.const_names: dict[int, str] = {}  # id(parameter / buffer) -> its name in the module
        self.node: Any = None
        self.ops_in: dict[str, int] = {}  # module path -> how many ops it holds

    # ---- values ---------------------------------------------------------------------------
    def symbol(self, d: Any) -> Dim:
        if isinstance(d, int):
            return d
        text = str(d)
        return symbolic_dim(self.dim_names.get(text, text))

    def meta_shape(self, node: Any) -> tuple[Dim, ...]:
        return tuple(self.symbol(d) for d in node.meta["val"].shape)

    def _path(self, node: Any) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = str(list(stack.values())[-1][0])
        return "" if path.startswith("_empty") else path.replace(".", "/")

    def name(self, node: Any) -> str:
        """The IR node name: the module path (``layer1/0/conv1``) for the one op of a module,
        ``path/op`` where a module has several."""
        path = self._path(node)
        if path and self.ops_in.get(path, 0) == 1:
            return path
        return f"{path}/{node.name}" if path else str(node.name)

    # ---- the walk -------------------------------------------------------------------------
    def run(self, output_names: Optional[Sequence[str]]) -> Network:
        import torch

        program = self.program
        sig = program.graph_signature
        state = program.state_dict
        constants = program.constants
        lifted: dict[str, Any] = {}
        for spec in sig.input_specs:
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER"):
                value = state[spec.target] if spec.target in state else constants[spec.target]
                lifted[spec.arg.name] = value
                self.const_names[id(value)] = spec.target
            elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                lifted[spec.arg.name] = constants[spec.target]
                self.const_names[id(constants[spec.target])] = spec.target
        nodes = list(program.graph.nodes)
        for n in nodes:
            if n.op == "call_function" and _key(n.target) not in _IGNORED | {"getitem", "aten.sym_size"}:
                path = self._path(n)
                self.ops_in[path] = self.ops_in.get(path, 0) + 1
        self._check_supported(nodes, set(lifted))
        outputs: list[Any] = []
        for node in nodes:
            self.node = node
            if node.op == "placeholder":
                if node.name in lifted:
                    self.env[node.name] = lifted[node.name]
                else:
                    val = node.meta["val"]
                    if not isinstance(val, torch.Tensor):
                        raise ModelLoadError(f"input {node.name!r} is not a tensor ({val!r}); "
                                             f"Ember takes tensor inputs only")
                    self.env[node.name] = self.net.input(
                        node.name, self.meta_shape(node), _dtype(val.dtype))
            elif node.op == "call_function":
                self.env[node.name] = self.call(node)
            elif node.op == "output":
                outputs = list(node.args[0]) if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            elif node.op != "get_attr":
                raise ModelLoadError(f"unexpected node {node.format_node()} in the exported graph")
        values = [self.env[o.name] if hasattr(o, "name") else o for o in outputs]
        if output_names is not None and len(output_names) != len(values):
            raise ModelLoadError(f"output_names has {len(output_names)} names but the module has "
                                 f"{len(values)} outputs")
        for i, v in enumerate(values):
            name = (output_names[i] if output_names is not None else
                    "output" if len(values) == 1 else f"output_{i}")
            t = _t(self, v)
            if any(t.name == o.name for o in self.net.inputs + self.net.outputs):
                t = self.net.op(OpType.IDENTITY, [t], name=name)[0]
            self.net.output(t, name)
        return self.net

    def _check_supported(self, nodes: list[Any], lifted: set[str]) -> None:
        """One UnsupportedOpError for every unmapped op that is not folded at import."""
        const = set(lifted)
        missing: dict[str, list[str]] = {}
        for node in nodes:
            if node.op != "call_function":
                continue
            inputs = [a.name for a in node.all_input_nodes]
            if all(i in const for i in inputs) and _key(node.target) != "aten.sym_size":
                const.add(node.name)  # folded in PyTorch
                continue
            key = _key(node.target)
            if not _supported(key):
                missing.setdefault(str(node.target), []).append(self.name(node))
        if missing:
            lines = "; ".join(f"{op} ({len(ns)}x: {', '.join(ns[:3])}{', ...' if len(ns) > 3 else ''})"
                              for op, ns in sorted(missing.items()))
            raise UnsupportedOpError(
                f"the exported {self.net.name} uses {len(missing)} ATen op(s) Ember does not map: "
                f"{lines}. Rewrite those parts of the module, or export it to ONNX "
                f"(torch.onnx.export) and build the .onnx file")

    def call(self, node: Any) -> Any:
        import torch

        def value(a: Any) -> Any:
            if hasattr(a, "op") and hasattr(a, "name") and a.name in self.env:
                return self.env[a.name]
            if isinstance(a, (list, tuple)):
                return type(a)(value(x) for x in a)
            return a

        args = [value(a) for a in node.args]
        kwargs = {k: value(v) for k, v in node.kwargs.items()}
        key = _key(node.target)
        if key == "getitem":
            return args[0][args[1]]
        if key == "aten.sym_size":
            return _Sym(node.meta["val"])
        if key in _IGNORED:
            return None
        flat = _flatten(args) + _flatten(list(kwargs.values()))
        if not any(isinstance(a, (Tensor, _Sym)) for a in flat):
            with torch.no_grad():
                return node.target(*args, **kwargs)  # constants only: fold in PyTorch
        if key in _PASS_THROUGH:
            return args[0]
        try:
            return _HANDLERS[key](self, node, args, kwargs)
        except EmberError as e:
            raise type(e)(f"{node.target} ({self.name(node)}): {e}") from None


def _flatten(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [x for i in v for x in _flatten(i)]
    return [v]


def _dtype(dtype: Any) -> DType:
    import torch

    return DType.from_numpy(torch.empty(0, dtype=dtype).numpy().dtype)


def _arg(args: list[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if i < len(args):
        return args[i]
    return kwargs.get(name, default)


def _ints(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(x) for x in v)
    return t * n if len(t) == 1 and n > 1 else t


# ---- handlers -----------------------------------------------------------------------------
def _t(imp: _Importer, v: Any, like: Optional[Tensor] = None) -> Tensor:
    """A network tensor for ``v`` (a handle, a torch constant or a number)."""
    import torch

    if isinstance(v, Tensor):
        return v
    net = imp.net
    if isinstance(v, torch.Tensor):
        hit = imp.consts.get(id(v))
        if hit is None:
            name = imp.const_names.get(id(v))
            taken = name is not None and net.has_name(name)
            hit = (v, net.constant(v.detach().cpu(), name=None if taken else name))
            imp.consts[id(v)] = hit
        return hit[1]
    array = np.array(v)
    if like is not None and (array.dtype.kind == "f" or like.dtype.is_float):
        array = array.astype(like.dtype.to_numpy()) if like.dtype.is_float else array
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return net.constant(array)


def _one(imp: _Importer, node: Any, op: OpType, inputs: Sequence[Any], attrs: Any = None) -> Tensor:
    like = next((v for v in inputs if isinstance(v, Tensor)), None)
    ins = [None if v is None else _t(imp, v, like) for v in inputs]
    return imp.net.op(op, ins, attrs, name=imp.name(node))[0]


def _unary(op: OpType) -> Handler:
    def handler(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return _one(imp, node, op, args[:1])
    return handler


for _name, _op in (("relu", OpType.RELU), ("sigmoid", OpType.SIGMOID), ("tanh", OpType.TANH),
                   ("exp", OpType.EXP), ("log", OpType.LOG), ("sqrt", OpType.SQRT), ("neg", OpType.NEG),
                   ("abs", OpType.ABS), ("erf", OpType.ERF), ("reciprocal", OpType.RECIPROCAL),
                   ("hardswish", OpType.HARD_SWISH), ("sin", OpType.SIN), ("cos", OpType.COS),
                   ("floor", OpType.FLOOR), ("ceil", OpType.CEIL), ("logical_not", OpType.NOT),
                   ("sign", OpType.SIGN)):
    _aten(_name)(_unary(_op))


def _binary(op: OpType) -> Handler:
    def handler(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return _one(imp, node, op, args[:2])
    return handler


for _name, _op in (("mul", OpType.MUL), ("pow", OpType.POW), ("maximum", OpType.MAX),
                   ("minimum", OpType.MIN), ("eq", OpType.EQUAL), ("lt", OpType.LESS),
                   ("gt", OpType.GREATER), ("le", OpType.LESS_OR_EQUAL), ("ge", OpType.GREATER_OR_EQUAL),
                   ("bmm", OpType.MATMUL), ("mm", OpType.MATMUL), ("matmul", OpType.MATMUL),
                   ("logical_and", OpType.AND), ("logical_or", OpType.OR), ("fmod", OpType.MOD)):
    _aten(_name)(_binary(_op))


@_aten("add", "sub")
def _add_sub(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    a, b = args[0], args[1]
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    if alpha != 1:
        b = b * alpha if not isinstance(b, Tensor) else _one(imp, node, OpType.MUL, [b, alpha])
    op = OpType.ADD if _key(node.target) == "aten.add" else OpType.SUB
    return _one(imp, node, op, [a, b])


@_aten("rsub")
def _rsub(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    a, b = args[0], args[1]
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    if alpha != 1:
        a = _one(imp, node, OpType.MUL, [a, alpha])
    return _one(imp, node, OpType.SUB, [b, a])


@_aten("div")
def _div(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    mode = _arg(args, kwargs, 2, "rounding_mode")
    want = _dtype(node.meta["val"].dtype)
    a, b = ([_cast(imp, node, v, want) for v in args[:2]] if want.is_float and mode is None
            else args[:2])  # true division of integers gives floats
    out = _one(imp, node, OpType.DIV, [a, b])
    if mode == "floor" and out.dtype.is_float:
        return _one(imp, node, OpType.FLOOR, [out])
    if mode is not None and out.dtype.is_float:
        raise UnsupportedOpError(f"div with rounding_mode={mode!r} is not mapped")
    return out


def _cast(imp: _Importer, node: Any, v: Any, want: DType) -> Any:
    if isinstance(v, Tensor) and v.dtype != want:
        return _one(imp, node, OpType.CAST, [v], CastAttrs(to=want))
    return v


@_aten("rsqrt")
def _rsqrt(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return _one(imp, node, OpType.RECIPROCAL, [_one(imp, node, OpType.SQRT, args[:1])])


@_aten("gelu")
def _gelu(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return imp.net.gelu(args[0], str(_arg(args, kwargs, 1, "approximate", "none")), name=imp.name(node))


@_aten("silu")
def _silu(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return imp.net.silu(args[0], name=imp.name(node))


@_aten("hardsigmoid")
def _hardsigmoid(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return imp.net.hard_sigmoid(args[0], name=imp.name(node))


@_aten("hardtanh", "clamp")
def _clamp(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    hard = _key(node.target) == "aten.hardtanh"
    lo = _arg(args, kwargs, 1, "min_val" if hard else "min", -1.0 if hard else None)
    hi = _arg(args, kwargs, 2, "max_val" if hard else "max", 1.0 if hard else None)
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        out = args[0]
        if lo is not None:
            out = _one(imp, node, OpType.MAX, [out, lo])
        return out if hi is None else _one(imp, node, OpType.MIN, [out, hi])
    return imp.net.clip(args[0], None if lo is None else float(lo), None if hi is None else float(hi),
                        name=imp.name(node))


@_aten("leaky_relu")
def _leaky_relu(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return imp.net.leaky_relu(args[0], float(_arg(args, kwargs, 1, "negative_slope", 0.01)),
                              name=imp.name(node))


@_aten("where")
def _where(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    like = next((v for v in args[1:3] if isinstance(v, Tensor)), None)
    return imp.net.op(OpType.WHERE, [_t(imp, args[0]), _t(imp, args[1], like), _t(imp, args[2], like)],
                      name=imp.name(node))[0]


@_aten("convolution")
def _convolution(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    wt = _t(imp, w, x)
    k = len(wt.shape) - 2
    kernel = tuple(int(d) for d in wt.shape[2:])
    pads = _ints(padding, k) * 2
    inputs = [x, wt] + ([_t(imp, b, x)] if b is not None else [])
    if transposed:
        attrs: Any = ConvTransposeAttrs(kernel_shape=kernel, strides=_ints(stride, k), pads=pads,
                                        dilations=_ints(dilation, k),
                                        output_padding=_ints(output_padding, k), group=int(groups))
        return _one(imp, node, OpType.CONV_TRANSPOSE, inputs, attrs)
    attrs = ConvAttrs(kernel_shape=kernel, strides=_ints(stride, k), pads=pads,
                      dilations=_ints(dilation, k), group=int(groups))
    return _one(imp, node, OpType.CONV, inputs, attrs)


def _bn(imp: _Importer, node: Any, x: Tensor, w: Any, b: Any, mean: Any, var: Any, eps: float) -> Tensor:
    import torch

    c = int(x.shape[1])
    w = torch.ones(c) if w is None else w
    b = torch.zeros(c) if b is None else b
    return imp.net.batch_norm(x, _t(imp, w, x), _t(imp, b, x), _t(imp, mean, x), _t(imp, var, x),
                              eps=float(eps), name=imp.name(node))


@_aten("_native_batch_norm_legit_no_training")
def _bn_no_training(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, w, b, mean, var, _momentum, eps = args[:7]
    return (_bn(imp, node, x, w, b, mean, var, eps), None, None)


@_aten("native_batch_norm", "_native_batch_norm_legit", "batch_norm")
def _bn_any(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, w, b, mean, var, training, _momentum, eps = args[:8]
    if training or mean is None:
        raise UnsupportedOpError("batch_norm in training mode (batch statistics): call "
                                 "module.eval() before exporting")
    y = _bn(imp, node, x, w, b, mean, var, eps)
    return y if _key(node.target) == "aten.batch_norm" else (y, None, None)


@_aten("native_layer_norm", "layer_norm")
def _layer_norm(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    x, shape = args[0], tuple(args[1])
    w = _arg(args, kwargs, 2, "weight")
    b = _arg(args, kwargs, 3, "bias")
    eps = float(_arg(args, kwargs, 4, "eps", 1e-5))
    y = imp.net.layer_norm(x, torch.ones(shape) if w is None else _t(imp, w, x),
                           None if b is None else _t(imp, b, x), eps=eps, name=imp.name(node))
    return y if _key(node.target) == "aten.layer_norm" else (y, None, None)


@_aten("linear")
def _linear(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, w = args[0], args[1]
    b = _arg(args, kwargs, 2, "bias")
    weight = w.detach().cpu().numpy() if not isinstance(w, Tensor) else w
    bias = b.detach().cpu().numpy() if b is not None and not isinstance(b, Tensor) else b
    return imp.net.linear(x, weight, bias, name=imp.name(node))


@_aten("addmm")
def _addmm(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    c, a, b = args[:3]
    beta = float(_arg(args, kwargs, 3, "beta", 1))
    alpha = float(_arg(args, kwargs, 4, "alpha", 1))
    return _one(imp, node, OpType.GEMM, [a, b, c], GemmAttrs(alpha=alpha, beta=beta))


@_aten("_softmax", "softmax", "_log_softmax", "log_softmax")
def _softmax(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    op = OpType.LOG_SOFTMAX if "log" in _key(node.target) else OpType.SOFTMAX
    return _one(imp, node, op, args[:1], SoftmaxAttrs(axis=int(args[1])))


@_aten("max_pool2d_with_indices", "max_pool2d")
def _max_pool(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    kernel = _ints(args[1], 2)
    stride = _arg(args, kwargs, 2, "stride", ())
    y = imp.net.max_pool2d(args[0], kernel, _ints(stride, 2) if stride else None,
                           _ints(_arg(args, kwargs, 3, "padding", 0), 2),
                           _ints(_arg(args, kwargs, 4, "dilation", 1), 2),
                           ceil_mode=bool(_arg(args, kwargs, 5, "ceil_mode", False)), name=imp.name(node))
    return (y, None) if _key(node.target) == "aten.max_pool2d_with_indices" else y


@_aten("avg_pool2d")
def _avg_pool(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if _arg(args, kwargs, 6, "divisor_override") is not None:
        raise UnsupportedOpError("avg_pool2d with divisor_override is not mapped")
    stride = _arg(args, kwargs, 2, "stride", ())
    return imp.net.avg_pool2d(args[0], _ints(args[1], 2), _ints(stride, 2) if stride else None,
                              _ints(_arg(args, kwargs, 3, "padding", 0), 2),
                              ceil_mode=bool(_arg(args, kwargs, 4, "ceil_mode", False)),
                              count_include_pad=bool(_arg(args, kwargs, 5, "count_include_pad", True)),
                              name=imp.name(node))


@_aten("_adaptive_avg_pool2d", "adaptive_avg_pool2d")
def _adaptive_avg_pool(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, out = args[0], _ints(args[1], 2)
    if out == (1, 1):
        return imp.net.global_avg_pool(x, name=imp.name(node))
    h, w = x.shape[2:]
    if not (isinstance(h, int) and isinstance(w, int) and h % out[0] == 0 and w % out[1] == 0):
        raise UnsupportedOpError(f"adaptive_avg_pool2d from {x.shape[2:]} to {out} (only whole "
                                 f"windows are mapped)")
    k = (h // out[0], w // out[1])
    return imp.net.avg_pool2d(x, k, k, name=imp.name(node))


def _axes(dims: Any, rank: int) -> tuple[int, ...]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(rank))
    return tuple(sorted(int(d) % rank for d in ([dims] if isinstance(dims, int) else dims)))


@_aten("mean", "sum", "amax", "amin")
def _reduce(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    axes = _axes(_arg(args, kwargs, 1, "dim"), x.ndim)
    keep = bool(_arg(args, kwargs, 2, "keepdim", False))
    key = _key(node.target)
    if key == "aten.mean" and x.ndim == 4 and axes == (2, 3) and keep:
        return imp.net.global_avg_pool(x, name=imp.name(node))
    if key == "aten.sum":
        return imp.net.sum(x, axes, keep, name=imp.name(node))
    op = {"aten.mean": OpType.REDUCE_MEAN, "aten.amax": OpType.REDUCE_MAX, "aten.amin": OpType.REDUCE_MIN}[key]
    return _one(imp, node, op, [x], ReduceAttrs(axes=axes, keepdims=keep))


@_aten("cat", "concat")
def _cat(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    parts = list(args[0])
    like = next((v for v in parts if isinstance(v, Tensor)), None)
    return imp.net.concat([_t(imp, p, like) for p in parts], int(_arg(args, kwargs, 1, "dim", 0)),
                          name=imp.name(node))


def _target_shape(imp: _Importer, node: Any, x: Tensor, copy: int) -> list[int]:
    """The output shape of a view/expand from its meta value, static where the dims are: a
    symbolic dim equal to the input's at the same place becomes ``copy`` (Reshape's 0,
    Expand's 1), at most one other becomes -1."""
    out = imp.meta_shape(node)
    dims: list[int] = []
    for i, d in enumerate(out):
        if isinstance(d, int):
            dims.append(d)
        elif i < x.ndim and x.shape[i] == d:
            dims.append(copy)
        elif copy == 0 and -1 not in dims:
            dims.append(-1)
        else:
            raise UnsupportedOpError(f"cannot express the symbolic shape {out} of {node.name} "
                                     f"from its input {x.shape}")
    return dims


@_aten("view", "_unsafe_view", "reshape")
def _view(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return imp.net.reshape(x, _target_shape(imp, node, x, 0), name=imp.name(node))


@_aten("flatten")
def _flatten_op(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    start, end = int(_arg(args, kwargs, 1, "start_dim", 0)), int(_arg(args, kwargs, 2, "end_dim", -1))
    if end % max(x.ndim, 1) == x.ndim - 1 and start % max(x.ndim, 1) == 1:
        return imp.net.flatten(x, 1, name=imp.name(node))
    return imp.net.reshape(x, _target_shape(imp, node, x, 0), name=imp.name(node))


@_aten("expand")
def _expand(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    if tuple(imp.meta_shape(node)) == tuple(x.shape):
        return x
    shape = np.array(_target_shape(imp, node, x, 1), np.int64)
    return imp.net.op(OpType.EXPAND, [x, shape], name=imp.name(node))[0]


@_aten("permute")
def _permute(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return imp.net.transpose(x, [int(d) % x.ndim for d in args[1]], name=imp.name(node))


@_aten("transpose", "t", "numpy_T")
def _transpose(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    perm = list(range(x.ndim))
    if len(args) >= 3:
        a, b = int(args[1]) % x.ndim, int(args[2]) % x.ndim
        perm[a], perm[b] = perm[b], perm[a]
    else:
        perm.reverse()
    return imp.net.transpose(x, perm, name=imp.name(node))


@_aten("unsqueeze")
def _unsqueeze(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return imp.net.unsqueeze(x, int(args[1]) % (x.ndim + 1), name=imp.name(node))


@_aten("squeeze")
def _squeeze(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    dims = _arg(args, kwargs, 1, "dim")
    axes = ([i for i, d in enumerate(x.shape) if d == 1] if dims is None else
            [int(d) % x.ndim for d in ([dims] if isinstance(dims, int) else dims) if x.shape[int(d) % x.ndim] == 1])
    if not axes:
        return x
    return _one(imp, node, OpType.SQUEEZE, [x], AxesAttrs(axes=tuple(axes)))


@_aten("embedding")
def _embedding(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    w, ids = args[0], args[1]
    return _one(imp, node, OpType.GATHER, [w, ids], AxisAttrs(axis=0))


@_aten("slice")
def _slice(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    dim = int(_arg(args, kwargs, 1, "dim", 0)) % x.ndim
    start = _arg(args, kwargs, 2, "start")
    end = _arg(args, kwargs, 3, "end")
    step = int(_arg(args, kwargs, 4, "step", 1))
    if isinstance(start, _Sym) or isinstance(end, _Sym):
        raise UnsupportedOpError("slice with symbolic bounds is not mapped")
    start = 0 if start is None else int(start)
    end = sys.maxsize if end is None else min(int(end), sys.maxsize)
    if start == 0 and end >= (x.shape[dim] if isinstance(x.shape[dim], int) else math.inf) and step == 1:
        return x
    return _one(imp, node, OpType.SLICE, [x], SliceAttrs(starts=(start,), ends=(end,), axes=(dim,),
                                                          steps=(step,)))


@_aten("select")
def _select(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, dim, index = args[0], int(args[1]), int(args[2])
    return _one(imp, node, OpType.GATHER, [x, np.array(index, np.int64)], AxisAttrs(axis=dim % x.ndim))


@_aten("split_with_sizes", "split")
def _split(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, sizes = args[0], args[1]
    dim = int(_arg(args, kwargs, 2, "dim", 0)) % x.ndim
    if isinstance(sizes, int):
        total = x.shape[dim]
        if not isinstance(total, int):
            raise UnsupportedOpError("split of a symbolic dim into equal parts is not mapped")
        sizes = [min(sizes, total - i) for i in range(0, total, sizes)]
    return tuple(imp.net.split(x, [int(s) for s in sizes], dim, name=imp.name(node)))


@_aten("_to_copy", "to", "type_as")
def _to_copy(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    val = node.meta.get("val")
    want = _dtype(val.dtype) if val is not None and hasattr(val, "dtype") else x.dtype
    if want == x.dtype:
        return x
    return _one(imp, node, OpType.CAST, [x], CastAttrs(to=want))


@_aten("constant_pad_nd")
def _pad(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, pad = args[0], [int(p) for p in args[1]]
    value = float(_arg(args, kwargs, 2, "value", 0.0))
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i in range(len(pad) // 2):
        axis = x.ndim - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    return _one(imp, node, OpType.PAD, [x], PadAttrs(pads=tuple(begins + ends), value=value))


@_aten("ember_zoo.lrn")
def _zoo_lrn(imp: _Importer, node: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The zoo's GoogLeNet LRN (``ember.zoo.layers``: a custom op that ONNX exports as one LRN)."""
    x, size, alpha, beta, bias = args[:5]
    return _one(imp, node, OpType.LRN, [x], LRNAttrs(size=int(size), alpha=float(alpha),
                                                       beta=float(beta), bias=float(bias)))


#: The ATen ops the importer maps (their overload packets), for documentation and tests.
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(set(_HANDLERS) | _PASS_THROUGH))
