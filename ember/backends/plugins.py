"""Plugins: ``@ember.plugin`` and ``@ember.kernel``, and the kernel side of plugin ops.

A plugin is a class; the decorator registers its shape function and lowering with the op side
(``ember.ops.plugin``) and its kernels with the backends' kernel registries, as tactics of
``OpType.PLUGIN`` that apply to that plugin's nodes::

    @ember.plugin("Relu6", domain="com.example", version=1)
    class Relu6:
        def infer(self, inputs, attrs):             # input TensorTypes -> output TensorTypes
            return [inputs[0]]

        @ember.kernel(device="any")                 # PyTorch: runs on the CPU and on CUDA
        def torch(self, inputs, attrs):
            return [inputs[0].clamp(0.0, attrs.get("limit", 6.0))]

        @ember.kernel(device="cuda", needs_triton=True)
        def triton(self, inputs, attrs): ...        # a second CUDA tactic, timed against the first

Tactics per device: a plugin's first CPU kernel (``device="cpu"`` or ``"any"``) is its CPU
``aten`` tactic, the generic one constant folding and ``evaluate`` use; its other CPU kernels are
the tactics ``"<plugin key>/<name>"`` (``"com.example::Relu6@1/fast"``), which a build with
``tactic_tuning`` (and ``tune_cpu``) times against it, as it does for built-in kernels. On CUDA
every ``"cuda"``/``"any"`` kernel is a tactic ``"<plugin key>/<name>"``; their float inputs come
in the layer's precision (fp16 in an fp16 build). A kernel is called as ``fn(inputs, attrs)``
with torch tensors (``None`` for an omitted input) and returns a list of tensors (one per
output) or one tensor. With ``prepare=True`` it is called once per engine load as
``fn(attrs, constants)`` (``constants``: the constant inputs as device tensors, ``None``
elsewhere) and returns the per-call function: where weights are repacked once.

Errors name the plugin, the tactic and the node: a kernel that raises, returns the wrong number
of outputs or a tensor whose shape or dtype differs from what the shape function said.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar, overload

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.registry import ATEN, CPU_KERNELS
from ember.backends.kernel_registry import KernelRegistry
from ember.backends.tensors import compute_dtype, torch_dtype
from ember.errors import BuildError, EmberError, GraphError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.plugin import PluginAttrs, PluginSpec, register_plugin, require_plugin
from ember.plan.records import Records

#: Where a kernel runs: the CPU, CUDA, or both (device-agnostic PyTorch code).
DEVICES = ("cpu", "cuda", "any")
_MARK = "__ember_kernel__"
_C = TypeVar("_C", bound=type)
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PluginKernel:
    """One kernel (tactic) of a plugin."""

    tactic: str
    device: str
    fn: Callable[..., Any]
    prepare: bool = False
    available: Optional[Callable[[], bool]] = None
    needs_triton: bool = False

    def runs_on(self, device: str) -> bool:
        return self.device in (device, "any")


#: plugin key -> its kernels, in declaration order (a re-declared plugin replaces its list)
_KERNELS: dict[str, list[PluginKernel]] = {}
#: registry entries made so far: (id of the registry, entry tactic name)
_ENTRIES: set[tuple[int, str]] = set()
#: the kernel registries plugin tactics go into, by backend. The CPU's is here from the start;
#: the CUDA backend attaches its own when its kernel families load (``attach_registry``), so that
#: this module, which the CPU kernels (and through them constant folding) import, never imports
#: the CUDA backend.
_REGISTRIES: dict[str, KernelRegistry] = {"cpu": CPU_KERNELS}
#: whether Triton can run here (``needs_triton`` kernels): set by the CUDA backend when attached
_TRITON: dict[str, Callable[[], bool]] = {}


def attach_registry(backend: str, registry: KernelRegistry, triton_available: Callable[[], bool]) -> None:
    """Makes ``registry`` (a backend's kernels) serve every plugin's kernels for ``backend``: those
    declared so far and those declared later. Called once by the backend's plugin kernel family."""
    _TRITON[backend] = triton_available
    _REGISTRIES[backend] = registry
    for key, kernels in _KERNELS.items():
        _register_entries(key, backend, kernels)


@overload
def kernel(fn: _F, /) -> _F: ...


@overload
def kernel(*, device: str = "any", tactic: Optional[str] = None, prepare: bool = False,
           available: Optional[Callable[[], bool]] = None,
           needs_triton: bool = False) -> Callable[[_F], _F]: ...


def kernel(fn: Optional[Callable[..., Any]] = None, /, *, device: str = "any", tactic: Optional[str] = None,
           prepare: bool = False, available: Optional[Callable[[], bool]] = None,
           needs_triton: bool = False) -> Any:
    """Marks a method of an ``@ember.plugin`` class as a kernel (see the module docstring).

    ``device``: ``"cpu"``, ``"cuda"`` or ``"any"``; ``tactic``: its name (default: the method's);
    ``prepare``: called once per load, returns the per-call function; ``available()``: whether
    it can run here (``needs_triton=True`` adds "Triton is installed and a GPU is present").
    """
    if device not in DEVICES:
        raise ValueError(f"@ember.kernel(device={device!r}): use one of {', '.join(DEVICES)}")
    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _MARK, {"device": device, "tactic": tactic or f.__name__, "prepare": prepare,
                           "available": available, "needs_triton": needs_triton})
        return f

    return mark(fn) if fn is not None else mark


def plugin(op_type: str, domain: str = "", version: int = 1) -> Callable[[_C], _C]:
    """Registers the decorated class as the plugin serving ``op_type`` of ``domain`` from
    ``version`` on (see the module docstring and docs/PLUGINS.md).

    The class is instantiated once, without arguments. It defines ``infer(inputs, attrs)``
    and one or more ``@ember.kernel`` methods, or ``lower(lowering, attrs)`` (built-in IR ops
    through ``ember.ops.plugin.Lowering``), or both (the lowering wins where it applies).
    """
    if not op_type or not isinstance(op_type, str):
        raise ValueError("@ember.plugin needs the op type it serves, e.g. @ember.plugin('Relu6')")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"@ember.plugin({op_type!r}): version must be an int >= 1, got {version!r}")

    def deco(cls: _C) -> _C:
        if not isinstance(cls, type):
            raise TypeError(f"@ember.plugin({op_type!r}) decorates a class, not {type(cls).__name__}")
        instance = cls()
        infer = getattr(instance, "infer", None)
        lower = getattr(instance, "lower", None)
        kernels = _kernels_of(cls, instance)
        spec = PluginSpec(op_type, domain, int(version), cls.__module__, infer=infer, lower=lower,
                          doc=inspect.getdoc(cls) or "")
        if lower is None and infer is None:
            raise GraphError(f"{spec.label}: class {cls.__qualname__} defines neither infer() nor "
                             f"lower(); a plugin needs a shape function and kernels, or a lowering")
        if lower is None and not kernels:
            raise GraphError(f"{spec.label}: class {cls.__qualname__} has infer() but no kernel; "
                             f"mark a method with @ember.kernel(device='cpu'|'cuda'|'any')")
        for dev in ("cpu", "cuda"):
            spec.tactics[dev] = [k.tactic for k in kernels if k.runs_on(dev)]
        register_plugin(spec)
        _register_kernels(spec, kernels)
        cls.ember_plugin = spec  # type: ignore[attr-defined]
        return cls

    return deco


def _kernels_of(cls: type, instance: object) -> list[PluginKernel]:
    found: list[PluginKernel] = []
    seen: set[str] = set()
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            mark = getattr(value, _MARK, None)
            if mark is None:
                continue
            if mark["tactic"] in seen:
                found = [k for k in found if k.tactic != mark["tactic"]]
            seen.add(mark["tactic"])
            found.append(PluginKernel(mark["tactic"], mark["device"], getattr(instance, attr),
                                      mark["prepare"], mark["available"], mark["needs_triton"]))
    return found


def tactic_name(spec_key: str, tactic: str) -> str:
    """The registry's name of a plugin's named tactic: ``"com.example::Relu6@1/fast"``."""
    return f"{spec_key}/{tactic}"


def _is_plugin(key: str, tactic: str) -> Callable[[Node, Optional[Graph], Optional[Records]], bool]:
    def applies(node: Node, graph: Optional[Graph], records: Optional[Records]) -> bool:
        if node.op is not OpType.PLUGIN or not isinstance(node.attrs, PluginAttrs) or node.attrs.key != key:
            return False
        return any(k.tactic == tactic for k in _KERNELS.get(key, []))

    return applies


def _register_kernels(spec: PluginSpec, kernels: list[PluginKernel]) -> None:
    _KERNELS[spec.key] = kernels
    for backend in _REGISTRIES:
        _register_entries(spec.key, backend, kernels)


def _register_entries(key: str, backend: str, kernels: list[PluginKernel]) -> None:
    """Registry entries for the kernels of plugin ``key`` that run on ``backend`` (the CPU's
    first kernel is its generic ``aten`` tactic, ``_dispatch``, and gets no entry of its own)."""
    ks = [k for k in kernels if k.runs_on(backend)]
    for rank, k in enumerate(ks[1:] if backend == "cpu" else ks, start=10):
        name = tactic_name(key, k.tactic)
        registry = _REGISTRIES[backend]
        if (id(registry), name) in _ENTRIES:
            continue  # re-declared: the entry looks the kernel up by name at compile time
        _ENTRIES.add((id(registry), name))
        registry.register(OpType.PLUGIN, name, rank=rank, when=_is_plugin(key, k.tactic),
                                      available=_available(key, k.tactic, backend))(_factory(backend, k.tactic))


def _available(key: str, tactic: str, backend: str) -> Callable[[], bool]:
    def available() -> bool:
        k = next((k for k in _KERNELS.get(key, []) if k.tactic == tactic), None)
        if k is None or (k.available is not None and not k.available()):
            return False
        if k.needs_triton:
            triton = _TRITON.get(backend)
            return triton is not None and bool(triton())
        return True

    return available


def _describe(inputs: Sequence[Optional[torch.Tensor]]) -> str:
    return ", ".join("-" if t is None else f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"
                     for t in inputs)


def _factory(backend: str, tactic: str) -> Callable[[Node, CompileContext], Kernel]:
    def make(node: Node, ctx: CompileContext) -> Kernel:
        spec = require_plugin(node.attrs, node.name)
        k = next((k for k in _KERNELS.get(spec.key, []) if k.tactic == tactic), None)
        if k is None:
            raise BuildError(f"node {node.name!r}: {spec.label} has no kernel {tactic!r} any more; "
                             f"rebuild the engine")
        return _compile(spec, k, node, ctx, cast=backend == "cuda")

    return make


def _dispatch(node: Node, ctx: CompileContext) -> Kernel:
    """The CPU ``aten`` tactic of a Plugin node: the plugin's first CPU kernel."""
    if not isinstance(node.attrs, PluginAttrs):
        raise BuildError(f"node {node.name!r} (Plugin) has no PluginAttrs; the graph is malformed")
    spec = require_plugin(node.attrs, node.name)
    device = ctx.device.type
    k = next((k for k in _KERNELS.get(spec.key, []) if k.runs_on(device)), None)
    if k is None:
        have = ", ".join(f"{k.tactic} ({k.device})" for k in _KERNELS.get(spec.key, [])) or "none"
        raise BuildError(f"node {node.name!r}: {spec.label} has no {device.upper()} kernel (its "
                         f"kernels: {have}); add one with @ember.kernel(device={device!r}) or "
                         f"'any', or build for another device")
    return _compile(spec, k, node, ctx, cast=False)


def _compile(spec: PluginSpec, k: PluginKernel, node: Node, ctx: CompileContext, cast: bool) -> Kernel:
    where = f"node {node.name!r}: {spec.label}, kernel {k.tactic!r}"
    attrs: PluginAttrs = node.attrs
    if k.prepare:
        try:
            fn = k.fn(attrs, [ctx.const(i) for i in node.inputs])
        except EmberError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's function may raise anything
            raise BuildError(f"{where}: prepare raised {type(e).__name__}: {e}") from e
        if not callable(fn):
            raise BuildError(f"{where}: prepare returned {type(fn).__name__}, not the per-call function")
    else:
        def fn(inputs: list[Optional[torch.Tensor]]) -> Any:
            return k.fn(inputs, attrs)

    types = [ctx.graph.types.get(o) if o else None for o in node.outputs]
    dtype = compute_dtype(ctx.precision) if cast else None

    def run(inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        args = list(inputs)
        if dtype is not None:
            args = [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t
                    for t in args]
        try:
            out = fn(args)
        except EmberError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's kernel may raise anything
            raise GraphError(f"{where}: failed on inputs ({_describe(inputs)}): "
                             f"{type(e).__name__}: {e}") from e
        return _checked_outputs(out, types, where, dtype)

    return run


def _checked_outputs(out: Any, types: Sequence[Optional[TensorType]], where: str,
                     half: Optional[torch.dtype]) -> list[Optional[torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        out = [out]
    if not isinstance(out, (list, tuple)) or len(out) < len(types):
        n = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
        raise GraphError(f"{where}: returned {n} output(s) for {len(types)}; return a list of "
                         f"torch tensors, one per output")
    result: list[Optional[torch.Tensor]] = []
    for i, (t, want) in enumerate(zip(out, types)):
        if want is None:
            result.append(t if isinstance(t, torch.Tensor) else None)
            continue
        if not isinstance(t, torch.Tensor):
            raise GraphError(f"{where}: output {i} is {type(t).__name__}, not a torch tensor")
        fixed = [d for d in want.shape]
        if len(t.shape) != len(fixed) or any(isinstance(d, int) and d != s for d, s in zip(fixed, t.shape)):
            raise GraphError(f"{where}: output {i} has shape {list(t.shape)} but the plugin's "
                             f"shape function said {want}")
        expected = half if half is not None and want.dtype.is_float else torch_dtype(want.dtype)
        if t.dtype != expected:
            if half is not None and t.is_floating_point() and want.dtype.is_float:
                t = t.to(half)
            else:
                raise GraphError(f"{where}: output {i} is {str(t.dtype).replace('torch.', '')} but "
                                 f"the plugin's shape function said {want.dtype.value}")
        result.append(t)
    return result


def plugin_kernels(key: str) -> list[PluginKernel]:
    """The kernels of the plugin with this key, in declaration order."""
    return list(_KERNELS.get(key, []))


CPU_KERNELS.register(OpType.PLUGIN, ATEN, rank=0)(_dispatch)

__all__ = ["DEVICES", "PluginKernel", "kernel", "plugin", "plugin_kernels", "register_plugin",
           "tactic_name"]
