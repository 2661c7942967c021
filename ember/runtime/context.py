"""``ExecutionContext``: runs an engine on inputs; one engine may have many contexts at once.

>>> with engine.create_context() as ctx:                  # doctest: +SKIP
...     out = ctx.infer({"input": np.zeros((1, 3, 224, 224), np.float32)})
>>> out["output"].shape                                   # doctest: +SKIP
(1, 1000)

Numpy inputs give numpy outputs; torch inputs give torch outputs. Contexts of one engine run
concurrently from several threads; calls on one context from several threads are serialized.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping

import torch

from ember.errors import EmberError
from ember.runtime.inputs import check_inputs, validate_inputs
from ember.runtime.tensors import torch_to_numpy


class ExecutionContext:
    """Per-run state of an engine. Use as a context manager, or call ``close()``."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self._program = engine.compile()
        create_runner = getattr(self._program, "create_runner", None)
        self._runner = create_runner() if create_runner is not None else None
        self._lock = threading.Lock()
        self._closed = False
        self.runs = 0

    def __enter__(self) -> "ExecutionContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the context's state; later ``infer`` calls raise."""
        with self._lock:
            if not self._closed and self._runner is not None and hasattr(self._runner, "close"):
                self._runner.close()
            self._closed = True

    def infer_async(self, inputs: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
        """Enqueues a run on ``stream`` (a ``torch.cuda.Stream``; default the context's own) and
        returns at once: CUDA engines only. Outputs are torch tensors (on the GPU when the inputs
        were, else in pinned host memory), valid once the stream is synchronized and until the
        next call with the same input shapes."""
        if self._closed:
            raise EmberError("this execution context is closed; create a new one with "
                             "engine.create_context()")
        if self._runner is None or not hasattr(self._runner, "infer_async"):
            raise EmberError(f"infer_async needs an engine built for cuda; this one is for "
                             f"{self.engine.plan.config.device}: call infer() instead")
        validate_inputs(self.engine.plan.inputs, inputs)
        with self._lock, torch.inference_mode():
            self.runs += 1
            return self._runner.infer_async(inputs, stream)

    @property
    def runner(self) -> Any:
        """The backend's per-context runner (CUDA: graphs, streams, pinned buffers), if any."""
        return self._runner

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Runs the engine: ``{input name: array}`` -> ``{output name: array}``.

        Raises ``InputError`` naming the input at fault if a name is missing or unknown, or a
        dtype, rank, dim or profile range does not match the engine.
        """
        if self._closed:
            raise EmberError("this execution context is closed; create a new one with "
                             "engine.create_context()")
        specs = self.engine.plan.inputs
        if self._runner is not None:
            validate_inputs(specs, inputs)
            with self._lock, torch.inference_mode():
                self.runs += 1
                return self._runner.infer(inputs)
        feeds, as_torch = check_inputs(specs, inputs, self._program.device)
        with self._lock, torch.inference_mode():
            outputs = self._program.run(feeds)
            self.runs += 1
        if as_torch:
            return outputs
        return {k: torch_to_numpy(v) for k, v in outputs.items()}
