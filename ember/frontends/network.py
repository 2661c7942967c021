"""The network-definition API: an Ember network written in code, as TensorRT's ``INetworkDefinition``.

>>> import numpy as np, ember
>>> net = ember.Network("tiny")
>>> x = net.input("x", (1, 3, 8, 8))
>>> w = np.ones((4, 3, 3, 3), np.float32)
>>> y = net.conv2d(x, w, np.zeros(4, np.float32), stride=2, padding=1).relu()
>>> y.shape
(1, 4, 4, 4)
>>> net.output(y, "y")
>>> net.to_graph().outputs
['y']

Every call adds IR nodes through ``ember.frontends.GraphBuilder``, whose type inference is the
one every frontend uses: a shape or type error is raised by the call that causes it, with the
same rules (and messages) as an ONNX model's. Tensors are ``Tensor`` handles (``.name``,
``.shape``, ``.dtype``); names are optional (generated and unique when left out); weights are
numpy arrays or torch tensors (floating weights take the dtype of the tensor they meet, so
numpy's float64 default is not a trap). ``ember.build(net, config)`` and
``ember.frontends.load(net)`` take a ``Network`` like any model: the graph is the same IR an
ONNX import makes, so every pass (conv + BatchNorm + ReLU into one ``FusedConv``, ...) applies.

Dynamic dims are strings: ``net.input("x", ("batch", 3, 224, 224))`` with
``BuildConfig(profiles={"x": (min, opt, max)})``. ``net.op(OpType.X, inputs, attrs)`` adds any
IR op the named methods do not cover; ``net.plugin(op_type, inputs, attrs, domain=...)`` a custom
op served by a plugin.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ember.errors import EmberError, GraphError, ModelLoadError, ShapeError
from ember.frontends.graph_builder import GraphBuilder, ShapeMap, symbolic_dim
from ember.ir.dtype import DType
from ember.ir.graph import Graph, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import (
    AxesAttrs,
    AxisAttrs,
    BatchNormAttrs,
    CastAttrs,
    ClipAttrs,
    ConvAttrs,
    GeluApproximate,
    GeluAttrs,
    GemmAttrs,
    HardSigmoidAttrs,
    LayerNormAttrs,
    LeakyReluAttrs,
    LRNAttrs,
    PoolAttrs,
    ReduceAttrs,
    ReshapeAttrs,
    SliceAttrs,
    SoftmaxAttrs,
    SplitAttrs,
    TransposeAttrs,
)

NAME = "network"
SUFFIXES: tuple[str, ...] = ()
ACCEPTS = "an ember.Network built in code"

#: What a weight or operand may be: an array, a torch tensor, or a Python number.
ArrayLike = Any
#: An operand of an elementwise op: a tensor of the network, or a constant.
Operand = Union["Tensor", ArrayLike]
IntOrPair = Union[int, Sequence[int]]


class Tensor:
    """A tensor of a ``Network``: the handle its methods take and return.

    ``shape`` and ``dtype`` are known as soon as the tensor is made. The methods here are
    shortcuts for the network's (``x.relu()`` is ``net.relu(x)``); ``+ - * / @`` work with
    tensors and constants.
    """

    __slots__ = ("network", "name")

    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name

    @property
    def type(self) -> TensorType:
        return self.network._builder.types[self.name]

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.type})"

    # activations
    def relu(self) -> Tensor:
        return self.network.relu(self)

    def relu6(self) -> Tensor:
        return self.network.relu6(self)

    def gelu(self, approximate: str = "none") -> Tensor:
        return self.network.gelu(self, approximate)

    def sigmoid(self) -> Tensor:
        return self.network.sigmoid(self)

    def tanh(self) -> Tensor:
        return self.network.tanh(self)

    def silu(self) -> Tensor:
        return self.network.silu(self)

    # shapes
    def reshape(self, *shape: Any) -> Tensor:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self.network.reshape(self, dims)

    def flatten(self, axis: int = 1) -> Tensor:
        return self.network.flatten(self, axis)

    def transpose(self, perm: Sequence[int]) -> Tensor:
        return self.network.transpose(self, perm)

    def softmax(self, axis: int = -1) -> Tensor:
        return self.network.softmax(self, axis)

    # arithmetic
    def __add__(self, other: Operand) -> Tensor:
        return self.network.add(self, other)

    def __radd__(self, other: Operand) -> Tensor:
        return self.network.add(other, self)

    def __sub__(self, other: Operand) -> Tensor:
        return self.network.sub(self, other)

    def __rsub__(self, other: Operand) -> Tensor:
        return self.network.sub(other, self)

    def __mul__(self, other: Operand) -> Tensor:
        return self.network.mul(self, other)

    def __rmul__(self, other: Operand) -> Tensor:
        return self.network.mul(other, self)

    def __truediv__(self, other: Operand) -> Tensor:
        return self.network.div(self, other)

    def __rtruediv__(self, other: Operand) -> Tensor:
        return self.network.div(other, self)

    def __matmul__(self, other: Operand) -> Tensor:
        return self.network.matmul(self, other)


def _pair(v: IntOrPair, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ShapeError(f"{what} must be an int or 2 ints, got {tuple(v)}")
    return t[0], t[1]


def _pads(padding: IntOrPair) -> tuple[int, int, int, int]:
    """Torch-style padding (one int, or (h, w), or ONNX's (top, left, bottom, right))."""
    if not isinstance(padding, (int, np.integer)) and len(padding) == 4:
        t = tuple(int(p) for p in padding)
        return t[0], t[1], t[2], t[3]
    ph, pw = _pair(padding, "padding")
    return ph, pw, ph, pw


def to_numpy(value: ArrayLike) -> np.ndarray:
    """A numpy copy of an array, a torch tensor (any device) or a number."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return np.array(value.detach().cpu().numpy())
    return np.array(value)


class Network:
    """A network under construction. See the module's docstring."""

    def __init__(self, name: str = "network") -> None:
        self.name = name
        self._builder = GraphBuilder(f"ember.Network {name!r}")
        self._outputs: list[tuple[str, str]] = []  # (tensor, output name)
        self._renamed: dict[str, str] = {}

    def __repr__(self) -> str:
        b = self._builder
        return (f"Network({self.name!r}: {len(b.inputs)} inputs, {len(b.nodes)} nodes, "
                f"{len(self._outputs)} outputs)")

    # ---- inputs, constants, outputs --------------------------------------------------------
    @property
    def inputs(self) -> list[Tensor]:
        return [Tensor(self, n) for n in self._builder.inputs]

    @property
    def outputs(self) -> list[Tensor]:
        return [Tensor(self, t) for t, _ in self._outputs]

    def has_name(self, name: str) -> bool:
        """True when a tensor (or an output) of the network is called ``name``."""
        return name in self._builder.types or name in self._renamed.values()

    def _check_new_name(self, name: str, what: str) -> None:
        b = self._builder
        if not name:
            raise GraphError(f"{b.source}: {what} needs a non-empty name")
        if self.has_name(name):
            raise GraphError(f"{b.source}: the name {name!r} of {what} is already used; choose "
                             f"another")

    def input(self, name: str, shape: Sequence[Dim], dtype: Union[DType, str, Any] = DType.FLOAT32) -> Tensor:
        """A graph input; string dims are symbolic (``("batch", 3, 224, 224)``) and need a
        profile (``BuildConfig(profiles=...)``) or fixed shapes at build time."""
        self._check_new_name(name, "an input")
        dims = tuple(symbolic_dim(d) if isinstance(d, str) else int(d) for d in shape)
        if any(isinstance(d, int) and d < 0 for d in dims):
            raise ShapeError(f"{self._builder.source}: input {name!r} has a negative dim in "
                             f"{tuple(shape)}; use a string for a dynamic dim")
        self._builder.add_input(name, _dtype(dtype), dims)
        return Tensor(self, name)

    def constant(self, value: ArrayLike, name: Optional[str] = None,
                 dtype: Union[DType, str, None] = None) -> Tensor:
        """A constant tensor (weights); ``dtype`` converts it."""
        array = to_numpy(value)
        if dtype is not None:
            array = array.astype(_dtype(dtype).to_numpy())
        try:
            DType.from_numpy(array.dtype)
        except TypeError as e:
            raise ShapeError(f"{self._builder.source}: constant {name or ''!r}: {e}") from None
        if name is not None:
            self._check_new_name(name, "a constant")
        return Tensor(self, self._builder.add_constant(self._builder.fresh(name or "const"), array))

    def output(self, tensor: Tensor, name: Optional[str] = None) -> None:
        """Marks ``tensor`` as a graph output, optionally under ``name``."""
        self._own(tensor, "output")
        if any(t == tensor.name for t, _ in self._outputs):
            raise GraphError(f"{self._builder.source}: {tensor.name!r} is already an output")
        out = name or tensor.name
        if out != tensor.name:
            self._check_new_name(out, "an output")
            if tensor.name in self._builder.inputs:
                raise GraphError(f"{self._builder.source}: input {tensor.name!r} cannot be an "
                                 f"output under another name ({out!r})")
            self._builder.reserve([out])
            self._renamed[tensor.name] = out
        self._outputs.append((tensor.name, out))

    mark_output = output

    # ---- the general op -------------------------------------------------------------------
    def op(self, op: OpType, inputs: Sequence[Union[Tensor, ArrayLike, None]], attrs: Any = None,
           *, name: Optional[str] = None, num_outputs: int = 1) -> list[Tensor]:
        """Adds one IR node of any kind (``ember.ir.OpType``, attrs from ``ember.ops.attrs``);
        inputs may be tensors, constants or None (an omitted optional input)."""
        like = next((t for t in inputs if isinstance(t, Tensor)), None)
        names = ["" if i is None else self._operand(i, like) for i in inputs]
        return self._add(op, names, attrs, name or op.value.lower(), num_outputs=num_outputs)

    def plugin(self, op_type: str, inputs: Sequence[Union[Tensor, ArrayLike, None]],
               attrs: Optional[Mapping[str, Any]] = None, *, domain: str = "",
               version: Optional[int] = None, name: Optional[str] = None,
               num_outputs: Optional[int] = None) -> list[Tensor]:
        """A custom op served by a registered plugin (``@ember.plugin``, docs/PLUGINS.md):
        ``net.plugin("Relu6", [x], {"limit": 6.0}, domain="com.example")``. The plugin lowers it
        into built-in ops or it becomes one Plugin node; returns its outputs (``num_outputs``:
        default, what the plugin's shape function gives)."""
        from ember.frontends.plugins import network_plugin

        like = next((t for t in inputs if isinstance(t, Tensor)), None)
        names = ["" if i is None else self._operand(i, like) for i in inputs]
        outs = network_plugin(self._builder, op_type, names, attrs, domain=domain, version=version,
                              name=name, num_outputs=num_outputs)
        return [Tensor(self, o) for o in outs]

    def _own(self, t: Tensor, what: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected an ember Network Tensor, got {type(t).__name__}")
        if t.network is not self:
            raise GraphError(f"{what}: tensor {t.name!r} belongs to another Network "
                             f"({t.network.name!r})")

    def _operand(self, v: Operand, like: Optional[Tensor], name: Optional[str] = None) -> str:
        """A tensor's name, or a new constant's (floating constants take ``like``'s dtype)."""
        if isinstance(v, Tensor):
            self._own(v, "operand")
            return v.name
        array = to_numpy(v)
        if like is not None and like.dtype.is_float and (array.dtype.kind == "f" or array.ndim == 0):
            array = array.astype(like.dtype.to_numpy())
        elif array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype == np.int64 and like is not None and like.dtype is DType.INT32:
            array = array.astype(np.int32)
        return self._builder.add_constant(self._builder.fresh(name or "const"), array)

    def _weight(self, v: ArrayLike, like: Tensor, name: str) -> str:
        if isinstance(v, Tensor):
            self._own(v, "weight")
            return v.name
        return self._operand(v, like, name)

    def _add(self, op: OpType, inputs: Sequence[str], attrs: Any, base: str, *,
             num_outputs: int = 1, name: Optional[str] = None) -> list[Tensor]:
        b = self._builder
        node_name = name or base
        outs = [b.fresh(node_name if i == 0 else f"{node_name}:{i}") for i in range(num_outputs)]
        mark = len(b.nodes)
        try:
            b.add_node(op, inputs, outs, attrs, name=node_name, origin=(node_name,))
        except EmberError as e:
            del b.nodes[mark:]
            raise type(e)(f"{b.source}: {base}() on "
                          f"{', '.join(f'{i} {b.types[i]}' for i in inputs if i in b.types)}: {e}") from None
        return [Tensor(self, o) for o in outs]

    def _one(self, op: OpType, inputs: Sequence[str], attrs: Any, base: str,
             name: Optional[str]) -> Tensor:
        return self._add(op, inputs, attrs, base, name=name)[0]

    def _unary(self, op: OpType, x: Tensor, attrs: Any, base: str, name: Optional[str]) -> Tensor:
        self._own(x, base)
        return self._one(op, [x.name], attrs, base, name)

    def _binary(self, op: OpType, a: Operand, b: Operand, base: str, name: Optional[str]) -> Tensor:
        like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
        if like is None:
            raise TypeError(f"{base}: at least one operand must be a Tensor of the network")
        return self._one(op, [self._operand(a, like), self._operand(b, like)], None, base, name)

    # ---- convolution and normalization ------------------------------------------------------
    def conv2d(self, x: Tensor, weight: ArrayLike, bias: Optional[ArrayLike] = None, *,
               stride: IntOrPair = 1, padding: IntOrPair = 0, dilation: IntOrPair = 1,
               groups: int = 1, name: Optional[str] = None) -> Tensor:
        """2-D convolution, torch's conventions: ``weight`` is (out, in / groups, kh, kw);
        ``padding`` one int, (h, w), or (top, left, bottom, right)."""
        self._own(x, "conv2d")
        base = name or "conv2d"
        w = self._weight(weight, x, f"{base}.weight")
        wt = self._builder.types[w]
        if len(wt.shape) != 4 or not all(isinstance(d, int) for d in wt.shape):
            raise ShapeError(f"{self._builder.source}: conv2d {base!r}: the weight must be a 4-D "
                             f"(out, in / groups, kh, kw) array, got {wt}")
        kernel = (int(wt.shape[2]), int(wt.shape[3]))
        attrs = ConvAttrs(kernel_shape=kernel, strides=_pair(stride, "stride"), pads=_pads(padding),
                          dilations=_pair(dilation, "dilation"), group=int(groups))
        inputs = [x.name, w] + ([self._weight(bias, x, f"{base}.bias")] if bias is not None else [])
        return self._one(OpType.CONV, inputs, attrs, "conv2d", name)

    def batch_norm(self, x: Tensor, weight: ArrayLike, bias: ArrayLike, running_mean: ArrayLike,
                   running_var: ArrayLike, *, eps: float = 1e-5, name: Optional[str] = None) -> Tensor:
        """Inference BatchNorm over dim 1: ``(x - mean) / sqrt(var + eps) * weight + bias``."""
        self._own(x, "batch_norm")
        base = name or "batch_norm"
        inputs = [x.name] + [self._weight(v, x, f"{base}.{what}") for v, what in
                             ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                              (running_var, "running_var"))]
        return self._one(OpType.BATCH_NORM, inputs, BatchNormAttrs(epsilon=float(eps)), "batch_norm", name)

    def layer_norm(self, x: Tensor, weight: ArrayLike, bias: Optional[ArrayLike] = None, *,
                   eps: float = 1e-5, name: Optional[str] = None) -> Tensor:
        """LayerNorm over the last ``weight.ndim`` dims (torch's ``normalized_shape``)."""
        self._own(x, "layer_norm")
        base = name or "layer_norm"
        w = self._weight(weight, x, f"{base}.weight")
        inputs = [x.name, w] + ([self._weight(bias, x, f"{base}.bias")] if bias is not None else [])
        axis = -max(1, len(self._builder.types[w].shape))
        return self._one(OpType.LAYER_NORM, inputs, LayerNormAttrs(axis=axis, epsilon=float(eps)),
                         "layer_norm", name)

    def lrn(self, x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0, *,
            name: Optional[str] = None) -> Tensor:
        """Cross-channel local response normalization (ONNX LRN, Caffe's ACROSS_CHANNELS)."""
        return self._unary(OpType.LRN, x, LRNAttrs(size=int(size), alpha=float(alpha), beta=float(beta),
                                                   bias=float(bias)), "lrn", name)

    # ---- activations ----------------------------------------------------------------------
    def relu(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.RELU, x, None, "relu", name)

    def relu6(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        return self.clip(x, 0.0, 6.0, name=name or "relu6")

    def clip(self, x: Tensor, min: Optional[float] = None, max: Optional[float] = None, *,
             name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.CLIP, x, ClipAttrs(min=None if min is None else float(min),
                                                     max=None if max is None else float(max)),
                           "clip", name)

    def leaky_relu(self, x: Tensor, negative_slope: float = 0.01, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.LEAKY_RELU, x, LeakyReluAttrs(alpha=float(negative_slope)),
                           "leaky_relu", name)

    def gelu(self, x: Tensor, approximate: str = "none", *, name: Optional[str] = None) -> Tensor:
        """GELU; ``approximate="tanh"`` for the tanh form (torch's spelling)."""
        try:
            mode = GeluApproximate(approximate)
        except ValueError:
            raise ShapeError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}") from None
        return self._unary(OpType.GELU, x, GeluAttrs(approximate=mode), "gelu", name)

    def sigmoid(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.SIGMOID, x, None, "sigmoid", name)

    def tanh(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.TANH, x, None, "tanh", name)

    def silu(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        """``x * sigmoid(x)`` (the optimizer fuses the pair into its producer as SiLU)."""
        base = name or "silu"
        gate = self._unary(OpType.SIGMOID, x, None, f"{base}/sigmoid", None)
        return self._one(OpType.MUL, [x.name, gate.name], None, base, None)

    def hard_sigmoid(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        """torch's ``hardsigmoid``: ``clip(x / 6 + 1 / 2, 0, 1)``."""
        return self._unary(OpType.HARD_SIGMOID, x, HardSigmoidAttrs(alpha=1.0 / 6, beta=0.5),
                           "hard_sigmoid", name)

    def hard_swish(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.HARD_SWISH, x, None, "hard_swish", name)

    def unary(self, op: OpType, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        """Any attribute-less one-input op (``OpType.EXP``, ``OpType.SQRT``, ``OpType.ERF``, ...)."""
        return self._unary(op, x, None, op.value.lower(), name)

    # ---- elementwise (numpy broadcasting) ---------------------------------------------------
    def add(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.ADD, a, b, "add", name)

    def sub(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.SUB, a, b, "sub", name)

    def mul(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.MUL, a, b, "mul", name)

    def div(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.DIV, a, b, "div", name)

    def pow(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.POW, a, b, "pow", name)

    def maximum(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.MAX, a, b, "maximum", name)

    def minimum(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        return self._binary(OpType.MIN, a, b, "minimum", name)

    # ---- pooling --------------------------------------------------------------------------
    def _pool(self, op: OpType, x: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair],
              padding: IntOrPair, dilation: IntOrPair, ceil_mode: bool, count_include_pad: bool,
              base: str, name: Optional[str]) -> Tensor:
        kernel = _pair(kernel_size, "kernel_size")
        attrs = PoolAttrs(kernel_shape=kernel,
                          strides=kernel if stride is None else _pair(stride, "stride"),
                          pads=_pads(padding), dilations=_pair(dilation, "dilation"),
                          ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))
        return self._unary(op, x, attrs, base, name)

    def max_pool2d(self, x: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                   padding: IntOrPair = 0, dilation: IntOrPair = 1, *, ceil_mode: bool = False,
                   name: Optional[str] = None) -> Tensor:
        """torch's ``max_pool2d`` (stride defaults to the kernel size)."""
        return self._pool(OpType.MAX_POOL, x, kernel_size, stride, padding, dilation, ceil_mode,
                          False, "max_pool2d", name)

    def avg_pool2d(self, x: Tensor, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                   padding: IntOrPair = 0, *, ceil_mode: bool = False, count_include_pad: bool = True,
                   name: Optional[str] = None) -> Tensor:
        """torch's ``avg_pool2d`` (``count_include_pad`` defaults to True, as in torch)."""
        return self._pool(OpType.AVERAGE_POOL, x, kernel_size, stride, padding, 1, ceil_mode,
                          count_include_pad, "avg_pool2d", name)

    def global_avg_pool(self, x: Tensor, *, name: Optional[str] = None) -> Tensor:
        """Mean over the spatial dims, kept as size 1: (N, C, H, W) -> (N, C, 1, 1)."""
        return self._unary(OpType.GLOBAL_AVERAGE_POOL, x, None, "global_avg_pool", name)

    # ---- linear algebra -------------------------------------------------------------------
    def linear(self, x: Tensor, weight: ArrayLike, bias: Optional[ArrayLike] = None, *,
               name: Optional[str] = None) -> Tensor:
        """torch's ``linear``: ``x @ weight.T + bias``, ``weight`` (out, in). A 2-D ``x`` makes one
        Gemm; higher ranks a MatMul with the transposed weight and an Add (as ONNX exports)."""
        self._own(x, "linear")
        base = name or "linear"
        if x.ndim == 2 or isinstance(weight, Tensor):
            w = self._weight(weight, x, f"{base}.weight")
            if x.ndim == 2:
                inputs = [x.name, w] + ([self._weight(bias, x, f"{base}.bias")] if bias is not None else [])
                return self._one(OpType.GEMM, inputs, GemmAttrs(trans_b=True), "linear", name)
            wt = self.transpose(Tensor(self, w), (1, 0), name=f"{base}/weight_t")
        else:
            wt = Tensor(self, self._operand(to_numpy(weight).T, x, f"{base}.weight_t"))
        if bias is None:
            return self._one(OpType.MATMUL, [x.name, wt.name], None, "linear", name)
        y = self._one(OpType.MATMUL, [x.name, wt.name], None, f"{base}/matmul", None)
        return self._one(OpType.ADD, [y.name, self._weight(bias, x, f"{base}.bias")], None, "linear", name)

    def matmul(self, a: Operand, b: Operand, *, name: Optional[str] = None) -> Tensor:
        """numpy's ``matmul`` (batched, broadcasting)."""
        return self._binary(OpType.MATMUL, a, b, "matmul", name)

    def gemm(self, a: Tensor, b: Operand, c: Optional[Operand] = None, *, alpha: float = 1.0,
             beta: float = 1.0, trans_a: bool = False, trans_b: bool = False,
             name: Optional[str] = None) -> Tensor:
        """ONNX Gemm: ``alpha * op(a) @ op(b) + beta * c`` on 2-D ``a``, ``b``."""
        self._own(a, "gemm")
        base = name or "gemm"
        inputs = [a.name, self._weight(b, a, f"{base}.b")]
        if c is not None:
            inputs.append(self._weight(c, a, f"{base}.c"))
        return self._one(OpType.GEMM, inputs, GemmAttrs(alpha=float(alpha), beta=float(beta),
                                                        trans_a=bool(trans_a), trans_b=bool(trans_b)),
                         "gemm", name)

    def softmax(self, x: Tensor, axis: int = -1, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.SOFTMAX, x, SoftmaxAttrs(axis=int(axis)), "softmax", name)

    def log_softmax(self, x: Tensor, axis: int = -1, *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.LOG_SOFTMAX, x, SoftmaxAttrs(axis=int(axis)), "log_softmax", name)

    # ---- reductions -----------------------------------------------------------------------
    def mean(self, x: Tensor, axes: Union[int, Sequence[int], None] = None, keepdims: bool = False, *,
             name: Optional[str] = None) -> Tensor:
        """Mean over ``axes`` (all when None)."""
        ax = None if axes is None else (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        return self._unary(OpType.REDUCE_MEAN, x, ReduceAttrs(axes=ax, keepdims=bool(keepdims)), "mean", name)

    def sum(self, x: Tensor, axes: Union[int, Sequence[int], None] = None, keepdims: bool = False, *,
            name: Optional[str] = None) -> Tensor:
        if axes is None:
            return self._unary(OpType.REDUCE_SUM, x, ReduceAttrs(keepdims=bool(keepdims)), "sum", name)
        ax = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        axes_t = self._operand(np.array(ax, np.int64), None, "sum.axes")
        return self._one(OpType.REDUCE_SUM, [x.name, axes_t], ReduceAttrs(keepdims=bool(keepdims)), "sum", name)

    # ---- shape and data movement ------------------------------------------------------------
    def concat(self, tensors: Sequence[Tensor], axis: int = 1, *, name: Optional[str] = None) -> Tensor:
        if not tensors:
            raise ShapeError(f"{self._builder.source}: concat needs at least one tensor")
        for t in tensors:
            self._own(t, "concat")
        return self._one(OpType.CONCAT, [t.name for t in tensors], AxisAttrs(axis=int(axis)), "concat", name)

    def split(self, x: Tensor, sizes: Sequence[int], axis: int = 0, *,
              name: Optional[str] = None) -> list[Tensor]:
        self._own(x, "split")
        return self._add(OpType.SPLIT, [x.name], SplitAttrs(axis=int(axis), split=tuple(int(s) for s in sizes)),
                         "split", num_outputs=len(sizes), name=name)

    def reshape(self, x: Tensor, shape: Sequence[int], *, name: Optional[str] = None) -> Tensor:
        """ONNX Reshape: ``0`` copies the input's dim, ``-1`` is inferred."""
        self._own(x, "reshape")
        s = self._operand(np.array([int(d) for d in shape], np.int64), None, f"{name or 'reshape'}.shape")
        return self._one(OpType.RESHAPE, [x.name, s], ReshapeAttrs(), "reshape", name)

    def flatten(self, x: Tensor, axis: int = 1, *, name: Optional[str] = None) -> Tensor:
        """ONNX Flatten: 2-D, dims before ``axis`` into the first (torch's ``flatten(1)``)."""
        return self._unary(OpType.FLATTEN, x, AxisAttrs(axis=int(axis)), "flatten", name)

    def transpose(self, x: Tensor, perm: Sequence[int], *, name: Optional[str] = None) -> Tensor:
        """A permutation of the dims (torch's ``permute``)."""
        return self._unary(OpType.TRANSPOSE, x, TransposeAttrs(perm=tuple(int(p) for p in perm)),
                           "transpose", name)

    def unsqueeze(self, x: Tensor, axes: Union[int, Sequence[int]], *, name: Optional[str] = None) -> Tensor:
        ax = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        return self._unary(OpType.UNSQUEEZE, x, AxesAttrs(axes=ax), "unsqueeze", name)

    def squeeze(self, x: Tensor, axes: Union[int, Sequence[int]], *, name: Optional[str] = None) -> Tensor:
        ax = (int(axes),) if isinstance(axes, int) else tuple(int(a) for a in axes)
        return self._unary(OpType.SQUEEZE, x, AxesAttrs(axes=ax), "squeeze", name)

    def slice(self, x: Tensor, starts: Sequence[int], ends: Sequence[int],
              axes: Optional[Sequence[int]] = None, steps: Optional[Sequence[int]] = None, *,
              name: Optional[str] = None) -> Tensor:
        attrs = SliceAttrs(starts=tuple(int(v) for v in starts), ends=tuple(int(v) for v in ends),
                           axes=None if axes is None else tuple(int(v) for v in axes),
                           steps=None if steps is None else tuple(int(v) for v in steps))
        return self._unary(OpType.SLICE, x, attrs, "slice", name)

    def gather(self, x: Operand, indices: Operand, axis: int = 0, *, name: Optional[str] = None) -> Tensor:
        like = x if isinstance(x, Tensor) else None
        return self._one(OpType.GATHER, [self._operand(x, like, f"{name or 'gather'}.data"),
                                         self._operand(indices, None, f"{name or 'gather'}.indices")],
                         AxisAttrs(axis=int(axis)), "gather", name)

    def embedding(self, ids: Tensor, table: ArrayLike, *, name: Optional[str] = None) -> Tensor:
        """Rows of ``table`` (vocab, dim) picked by the integer tensor ``ids``."""
        self._own(ids, "embedding")
        t = self._operand(table, None, f"{name or 'embedding'}.weight")
        return self._one(OpType.GATHER, [t, ids.name], AxisAttrs(axis=0), "embedding", name)

    def cast(self, x: Tensor, dtype: Union[DType, str, Any], *, name: Optional[str] = None) -> Tensor:
        return self._unary(OpType.CAST, x, CastAttrs(to=_dtype(dtype)), "cast", name)

    # ---- the graph ------------------------------------------------------------------------
    def to_graph(self, shapes: Optional[ShapeMap] = None, *,
                 source_info: Optional[SourceInfo] = None) -> Graph:
        """The network as a verified ``ember.ir.Graph``; ``shapes`` overrides input shapes (it must
        keep their ranks and fixed dims). Outputs take the names ``output`` gave them; nodes no
        output depends on are left out."""
        if not self._outputs:
            raise ModelLoadError(f"{self._builder.source} has no outputs; mark them with "
                                 f"net.output(tensor, name)")
        src, r = self._builder, self._renamed
        b = GraphBuilder(src.source)
        b.reserve(r.values())
        shapes = dict(shapes or {})
        for name in src.inputs:
            t = src.types[name]
            given = shapes.get(name)
            b.add_input(name, t.dtype, t.shape, None if given is None else
                        tuple(symbolic_dim(d) if isinstance(d, str) else int(d) for d in given))
        b.check_shapes(shapes)
        for name, value in src.constants.items():
            b.add_constant(name, value)
        live = {t for t, _ in self._outputs}
        kept = []
        for n in reversed(src.nodes):  # nodes no output depends on are left out
            if any(o in live for o in n.outputs):
                kept.append(n)
                live.update(i for i in n.inputs if i)
        for n in reversed(kept):
            b.add_node(n.op, [r.get(i, i) for i in n.inputs], [r.get(o, o) for o in n.outputs],
                       n.attrs, name=n.name, origin=n.origin)
        info = source_info or SourceInfo(format=NAME, producer="ember.Network", nodes=len(src.nodes))
        return b.finish(self.name, [out for _, out in self._outputs], source_info=info)


def _dtype(dtype: Union[DType, str, Any]) -> DType:
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        return DType.parse(dtype)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return DType.from_numpy(torch.empty(0, dtype=dtype).numpy().dtype)
    return DType.from_numpy(dtype)


def recognizes(source: object) -> bool:
    return isinstance(source, Network)


def sniffs(path: object) -> bool:
    return False


def load(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """``source.to_graph(shapes)``; a Network takes no other options."""
    if options:
        raise ModelLoadError(f"an ember.Network takes no option(s) {', '.join(sorted(options))}; "
                             f"its only option is shapes={{input: dims}}")
    if not isinstance(source, Network):
        raise ModelLoadError(f"expected an ember.Network, got {type(source).__name__}")
    return source.to_graph(shapes)
