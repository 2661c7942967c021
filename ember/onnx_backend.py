"""Ember as an ONNX backend (``onnx.backend.base.Backend``), over Ember's public API.

ONNX's own backend test suite (``onnx.backend.test.BackendTest``) and any tool written against
the ONNX backend interface drive Ember through this module::

    >>> from ember.onnx_backend import EmberBackend
    >>> rep = EmberBackend.prepare(model, "CPU")           # doctest: +SKIP
    >>> outputs = rep.run([x])                               # doctest: +SKIP
    >>> EmberBackend.run_node(node, [x, y])                  # doctest: +SKIP

``prepare`` is ``ember.build(model, ember.BuildConfig(device=...))``; ``BackendRep.run`` is one
execution context's ``infer``. What Ember cannot run is refused with Ember's own errors: an
``UnsupportedOpError`` that lists the ops or forms, or another ``EmberError`` naming the fault.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

import ember
from ember.backends.tensors import FLOAT8_TORCH, torch_to_numpy
from ember.errors import DeviceError, EmberError

#: ONNX device types -> Ember devices.
_DEVICES = {DeviceType.CPU: ember.Device.CPU, DeviceType.CUDA: ember.Device.CUDA}


def ember_device(device: str) -> ember.Device:
    """``"CPU"`` / ``"CUDA"`` (ONNX's spelling) as Ember's device; Ember builds for the first GPU
    only, so ``"CUDA:1"`` is refused."""
    try:
        parsed = Device(device)
    except (AttributeError, ValueError):
        raise DeviceError(f"unknown ONNX backend device {device!r}; Ember runs on 'CPU' and 'CUDA'") from None
    if parsed.device_id != 0:
        raise DeviceError(f"ONNX backend device {device!r}: Ember builds for the current CUDA device "
                          f"only; select it with CUDA_VISIBLE_DEVICES and ask for 'CUDA'")
    return _DEVICES[parsed.type]


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    """The model's run-time inputs in order (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


class EmberRep(BackendRep):
    """A built Ember engine and one execution context on it; ``run`` takes the inputs as a
    list (graph-input order) or a dict, and returns the outputs in graph-output order."""

    def __init__(self, engine: Any, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        self.engine = engine
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._ctx: Any = None

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        feeds = self._feeds(inputs)
        if self._ctx is None:
            self._ctx = self.engine.create_context()
        out = self._ctx.infer(feeds)
        values = [_numpy(out[name]) for name in self.output_names]
        return namedtupledict("Outputs", self.output_names)(*values)  # type: ignore[no-any-return]

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        names = [s.name for s in self.engine.inputs]
        if isinstance(inputs, Mapping):
            given = dict(inputs)
        else:
            if isinstance(inputs, (np.ndarray, np.generic)):
                inputs = [inputs]
            inputs = list(inputs)
            if len(inputs) > len(self.input_names):
                raise ember.InputError(f"{len(inputs)} inputs given; the model has "
                                       f"{len(self.input_names)}: {', '.join(self.input_names)}")
            given = dict(zip(self.input_names, inputs))
        # inputs the engine does not read (an optimized-away or unused graph input) are dropped
        return {k: _array(v) for k, v in given.items() if k in names}

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


def _numpy(value: Any) -> np.ndarray:
    """An output as numpy; bfloat16 as ``ml_dtypes.bfloat16`` (onnx's numpy type for it)."""
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    t = value.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
    if t.dtype in FLOAT8_TORCH:
        return torch_to_numpy(t)  # ml_dtypes' 8-bit floats (onnx's numpy types for them)
    return t.numpy()  # type: ignore[no-any-return]


def _array(value: Any) -> Any:
    """An input as a torch tensor (outputs then come back as torch tensors, bfloat16 kept)."""
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.require(np.asarray(value), requirements=["C", "W"])
        if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: no numpy dtype torch knows
            return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
        try:
            return torch.from_numpy(array)
        except TypeError:
            return array  # a dtype torch lacks: the engine's input check names it
    return value


class EmberBackend(Backend):
    """Ember behind ONNX's backend interface (``onnx.backend.base.Backend``)."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        """Always True: Ember answers with a refusal (``UnsupportedOpError``) when it cannot run
        a model, which says more than a skipped test would."""
        return True

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> EmberRep:
        """Builds an engine for ``model`` (a ``ModelProto``, path or bytes) on ``device``;
        ``kwargs`` are ``BuildConfig`` fields (``precision="fp16"``, ``optimize=False``, ...)."""
        proto = model if isinstance(model, onnx.ModelProto) else _load(model)
        config = ember.BuildConfig(device=ember_device(device), **kwargs)
        engine = ember.build(proto, config)
        return EmberRep(engine, graph_inputs(proto), [o.name for o in proto.graph.output])

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        rep = cls.prepare(model, device, **kwargs)
        try:
            return rep.run(inputs)
        finally:
            rep.close()

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Optional[Sequence[tuple[np.dtype, tuple[int, ...]]]] = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Runs one node on ``inputs`` (a list in the node's input order, or a dict by name):
        the node becomes a one-node model whose input types are those of ``inputs``.
        ``opset_version`` (keyword) sets the model's opset (default: the installed onnx's)."""
        opset = kwargs.pop("opset_version", None)
        model = node_model(node, inputs, outputs_info, opset)
        return cls.run_model(model, inputs, device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """CPU always; CUDA where torch sees a GPU."""
        try:
            name = ember_device(device)
        except EmberError:
            return False
        if name is ember.Device.CUDA:
            return bool(torch.cuda.is_available())
        return True


def _load(source: Any) -> onnx.ModelProto:
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(source)


def node_model(node: onnx.NodeProto, inputs: Any, outputs_info: Optional[Sequence[Any]] = None,
               opset: Optional[int] = None) -> onnx.ModelProto:
    """A one-node model around ``node``, its input types taken from ``inputs``."""
    present = [name for name in node.input if name]
    if isinstance(inputs, Mapping):
        values = [inputs[name] for name in present]
    else:
        values = list(inputs)
    if len(values) != len(present):
        raise ember.InputError(f"node {node.name or node.op_type!r} has {len(present)} inputs; "
                               f"{len(values)} given")
    graph_in = [helper.make_tensor_value_info(name, _elem_type(v), np.shape(v)) for name, v in zip(present, values)]
    graph_out = []
    for i, name in enumerate(o for o in node.output if o):
        if outputs_info is not None and i < len(outputs_info):
            dtype, shape = outputs_info[i]
            graph_out.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                           shape))
        else:
            graph_out.append(helper.make_empty_tensor_value_info(name))
    graph = helper.make_graph([node], f"{node.op_type}_node", graph_in, graph_out)
    imports = [helper.make_opsetid("", opset if opset is not None else onnx.defs.onnx_opset_version())]
    if node.domain not in ("", "ai.onnx"):
        imports.append(helper.make_opsetid(node.domain, 1))
    return helper.make_model(graph, opset_imports=imports)


def _elem_type(value: Any) -> int:
    if isinstance(value, onnx.TensorProto):
        return int(value.data_type)
    return int(helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype))


prepare = EmberBackend.prepare
run_model = EmberBackend.run_model
run_node = EmberBackend.run_node
supports_device = EmberBackend.supports_device

__all__ = ["EmberBackend", "EmberRep", "prepare", "run_model", "run_node", "supports_device"]
