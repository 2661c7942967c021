"""One calling convention for Ember, ONNX Runtime and PyTorch, so they can be compared fairly.

"Runner" in Polygraphy's sense: something that runs a model so its outputs and times can be
compared with another's. They live with the tools (bench scripts, the demo and the tests use
them), not in the zoo, which holds only architectures, their export and sample inputs.

A runner has ``prepare(feeds)`` (numpy inputs -> its native form, done once, outside timing),
``run(prepared)`` (what is timed; returns when the result is complete, GPU included) and
``__call__(feeds) -> dict of numpy arrays``. ``time_ms`` times ``run`` after warm-up.

>>> runner = OrtRunner("model.onnx", threads=2)                       # doctest: +SKIP
>>> out = runner({"input": x})["output"]                             # doctest: +SKIP
>>> times = time_ms(runner, {"input": x}, warmup=3, iterations=10)   # doctest: +SKIP
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ember.backends.tensors import max_relative_error

Feeds = Mapping[str, np.ndarray]


class Runner:
    """Base: subclasses define ``prepare`` and ``run``; ``name`` labels tables."""

    name = "runner"

    def prepare(self, feeds: Feeds) -> Any:
        return dict(feeds)

    def run(self, prepared: Any) -> Mapping[str, Any]:
        raise NotImplementedError

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return {k: _to_numpy(v) for k, v in self.run(self.prepare(feeds)).items()}

    def close(self) -> None:
        """Releases what the runner holds (contexts, sessions)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrtRunner(Runner):
    """ONNX Runtime on the CPU with all graph optimizations; ``threads`` sets intra-op threads."""

    name = "ONNX Runtime"

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        data = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, prepared: Any) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, prepared)))


class EmberRunner(Runner):
    """An Ember engine through one execution context; inputs go to the engine's device up front."""

    name = "Ember"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.device = torch.device(getattr(engine, "device", "cpu"))
        self.context = engine.create_context()
        self.context.__enter__()

    def prepare(self, feeds: Feeds) -> Any:
        if self.device.type == "cpu":
            return dict(feeds)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}

    def run(self, prepared: Any) -> Mapping[str, Any]:
        out = self.context.infer(prepared)
        _sync(self.device)
        return out

    def close(self) -> None:
        self.context.__exit__(None, None, None)


class TorchRunner(Runner):
    """PyTorch eager: ``module(*inputs in input_names order)`` under ``inference_mode``."""

    name = "PyTorch eager"

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = module.to(self.device, dtype) if dtype is not None else module.to(self.device)
        self.input_names, self.output_names = list(input_names), list(output_names)

    def prepare(self, feeds: Feeds) -> list[torch.Tensor]:
        tensors = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
            tensors.append(t.to(self.dtype) if (self.dtype is not None and t.is_floating_point()) else t)
        return tensors

    def run(self, prepared: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = self.module(*prepared)
        _sync(self.device)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.output_names, outs))


def time_ms(runner: Runner, feeds: Feeds, warmup: int = 3, iterations: int = 10,
            max_seconds: float | None = None) -> list[float]:
    """Wall-clock milliseconds of ``runner.run`` per iteration, after ``warmup`` untimed runs.

    ``max_seconds`` stops early (after at least 3 timed runs) so slow peers cannot stall a table.
    """
    prepared = runner.prepare(feeds)
    for _ in range(warmup):
        runner.run(prepared)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner.run(prepared)
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The accuracy measure of the zoo's tests and the bench scripts against a reference: the one
    error measure of Ember (``ember.backends.tensors.max_relative_error``, ``max|a - b| / max|b|``;
    ``ValueError`` when the shapes differ, where that function says ``inf``)."""
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs reference {b.shape}")
    return max_relative_error(a, b)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        host = value.detach().cpu()
        return host.float().numpy() if host.is_floating_point() else host.numpy()
    return np.asarray(value)
