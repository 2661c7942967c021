"""The peers ``ember bench`` measures Ember against, in the same process and on the same inputs.

- ``torch``: PyTorch eager. For a zoo model, the zoo's own ``nn.Module`` (same weights as the ONNX
  file); for any other ONNX model, a faithful conversion: the imported graph, unoptimized, run
  node by node with the CPU backend's generic PyTorch kernels on the target device.
- ``torch-compile``: ``torch.compile`` of that module, default mode and ``reduce-overhead``
  (CUDA graphs); static shapes, compile time reported apart.
- ``onnxruntime``: an ONNX Runtime session on the ONNX file (CUDA provider when installed and the
  device is ``cuda``, else the CPU provider).

Half precision applies to the torch peers (module and float inputs cast); image models run in
channels-last memory order on the GPU, the layout PyTorch is fastest in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from ember.backends.tensors import numpy_to_torch

PEER_NAMES = ("torch", "torch-compile", "onnxruntime")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Peer:
    """One runnable peer: ``call()`` runs one forward on prepared inputs (waits nothing)."""

    name: str
    call: Callable[[], Any]
    device: str
    outputs: Callable[[], dict[str, np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


class IRModule(torch.nn.Module):
    """An imported Ember graph as a PyTorch module: each node is the CPU backend's generic
    PyTorch kernel (device-agnostic), in graph order, with no fusion and no CUDA graphs."""

    def __init__(self, graph, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        from ember.backends.base import CompileContext
        from ember.backends.cpu.registry import ATEN, lookup
        from ember.plan.config import Precision

        self.graph = graph
        self.consts = {k: _cast(torch.from_numpy(np.array(v)).to(device), dtype)
                       for k, v in graph.constants.items()}
        # the CPU backend's generic kernels straight from its registry (they are device-agnostic):
        # the peer is plain PyTorch, with none of the CUDA backend's fusion or casting
        self.kernels = [lookup(n, ATEN, graph).factory(n, CompileContext(graph, self.consts, device, ATEN,
                                                                         Precision.FP32))
                        for n in graph.nodes]

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(self.consts)
        env.update(zip(self.graph.inputs, inputs))
        for node, kernel in zip(self.graph.nodes, self.kernels):
            outs = kernel([env[i] if i else None for i in node.inputs])
            env.update({o: t for o, t in zip(node.outputs, outs) if o})
        return [env[o] for o in self.graph.outputs]


class _Autocast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, *args: torch.Tensor) -> Any:
        with torch.autocast(args[0].device.type, dtype=self.dtype):
            return self.inner(*args)


def _runs(module: torch.nn.Module, args: list[torch.Tensor]) -> bool:
    try:
        with torch.inference_mode():
            module(*args)
        return True
    except RuntimeError:
        return False


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _module(zoo_name: Optional[str], graph, device: torch.device, dtype: torch.dtype,
            image: bool) -> torch.nn.Module:
    if zoo_name:
        from ember import zoo

        m = zoo.build_model(zoo_name).to(device=device, dtype=dtype).eval()
        if image and device.type == "cuda":
            # Module.to takes memory_format at run time; torch's stubs list no overload with it
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return m
    return IRModule(graph, device, dtype)


def _inputs(feeds: Mapping[str, np.ndarray], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    out = []
    for v in feeds.values():
        t = _cast(numpy_to_torch(np.asarray(v), device), dtype)
        if t.dim() == 4 and device.type == "cuda" and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        out.append(t)
    return out


def _as_list(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return list(out.values())
    return list(out)


def _numpy_outputs(names: list[str], fn: Callable[[], Any]) -> Callable[[], dict[str, np.ndarray]]:
    def get() -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outs = _as_list(fn())
        return {n: t.detach().float().cpu().numpy() for n, t in zip(names, outs)}

    return get


def torch_peers(names: list[str], *, zoo_name: Optional[str], graph, feeds: Mapping[str, np.ndarray],
                device: str, precision: str, output_names: list[str]) -> list[Peer | tuple[str, str]]:
    """The requested torch peers (eager and/or both compile modes); failures as (name, reason)."""
    dev, dtype = torch.device(device), _DTYPES[precision]
    image = any(np.asarray(v).ndim == 4 for v in feeds.values())
    module = _module(zoo_name, graph, dev, dtype, image)
    args = _inputs(feeds, dev, dtype)
    source = f"zoo module {zoo_name}" if zoo_name else "ONNX graph on PyTorch kernels"
    peers: list[Peer | tuple[str, str]] = []
    if dtype != torch.float32 and not _runs(module, args):
        # a module that mixes dtypes internally (e.g. an fp32 mask bias) runs under autocast,
        # PyTorch's own way to run it in half precision
        module = _Autocast(_module(zoo_name, graph, dev, torch.float32, image), dtype)
        args = _inputs(feeds, dev, torch.float32)
        source += f" (torch.autocast {precision})"

    def eager() -> Any:
        with torch.inference_mode():
            return module(*args)

    if "torch" in names:
        peers.append(Peer("torch", eager, device, _numpy_outputs(output_names, eager), {"source": source}))
    if "torch-compile" in names:
        for mode in (None, "reduce-overhead"):
            label = "torch.compile" if mode is None else "torch.compile(reduce-overhead)"
            try:
                peers.append(_compiled(label, module, args, mode, device, output_names, source))
            except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
                peers.append((label, f"{type(e).__name__}: {str(e)[:300]}"))
    return peers


def _compiled(label: str, module: torch.nn.Module, args: list[torch.Tensor], mode: Optional[str],
              device: str, output_names: list[str], source: str) -> Peer:
    torch._dynamo.reset()
    compiled = torch.compile(module, mode=mode, dynamic=False)

    def call() -> Any:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode():
            return compiled(*args)

    t0 = time.perf_counter()
    for _ in range(3):  # compile, then record the CUDA graph (reduce-overhead needs a few calls)
        call()
    if device == "cuda":
        torch.cuda.synchronize()
    info = {"source": source, "compile_s": round(time.perf_counter() - t0, 2)}
    return Peer(label, call, device, _numpy_outputs(output_names, call), info)


def onnxruntime_peer(model_path: str, feeds: Mapping[str, np.ndarray], device: str) -> Peer:
    """An ONNX Runtime session on the file (the CUDA provider when available on a GPU run)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    provider = ("CUDAExecutionProvider" if device == "cuda" and "CUDAExecutionProvider" in providers
                else "CPUExecutionProvider")
    sess = ort.InferenceSession(model_path, providers=[provider])
    names = [o.name for o in sess.get_outputs()]
    inputs = {k: np.asarray(v, order="C") for k, v in feeds.items()}  # 0-d stays 0-d

    def call() -> Any:
        return sess.run(None, inputs)

    def outputs() -> dict[str, np.ndarray]:
        return dict(zip(names, call()))

    return Peer("onnxruntime", call, "cpu" if provider == "CPUExecutionProvider" else device, outputs,
                {"provider": provider, "version": ort.__version__})


def reference_outputs(model_path: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The accuracy oracle: ONNX Runtime's CPU provider in fp32."""
    return onnxruntime_peer(model_path, feeds, "cpu").outputs()
