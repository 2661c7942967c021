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
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from ember.backends.base import Executor
from ember.errors import EmberError
from ember.runtime.inputs import validate_inputs

if TYPE_CHECKING:
    from ember.runtime.engine import Engine


class ExecutionContext:
    """Per-run state of an engine. Use as a context manager, or call ``close()``.

    The context validates inputs against the engine's specs and serializes calls; its
    ``executor`` (the backend's ``Executor``, ``ember.backends.base``) runs them and holds the
    per-context state (CUDA: captured graphs, streams, pinned buffers, the device arena).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor: Executor = engine.compile().create_executor()
        self._lock = threading.Lock()
        self._closed = False
        self.runs = 0
        #: the names, types, dtypes and shapes of the last inputs ``validate_inputs`` accepted
        #: (``_signature``): the same again is valid again, and is not checked field by field
        self._accepted: Optional[tuple[Any, ...]] = None

    def __enter__(self) -> ExecutionContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Releases the context's state; later ``infer`` calls raise."""
        with self._lock:
            if not self._closed:
                self._executor.close()
            self._closed = True

    def infer_async(self, inputs: Mapping[str, Any], stream: Any = None) -> dict[str, Any]:
        """Enqueues a run on ``stream`` (a ``torch.cuda.Stream``; default the context's own) and
        returns at once: CUDA engines only. Outputs are torch tensors (on the GPU when the inputs
        were, else in pinned host memory), valid once the stream is synchronized and until the
        next call with the same input shapes."""
        if self._closed:
            raise EmberError("this execution context is closed; create a new one with "
                             "engine.create_context()")
        validate_inputs(self.engine.plan.inputs, inputs)
        with self._lock, torch.inference_mode():
            result = self._executor.infer_async(inputs, stream)
            self.runs += 1
            return result

    @property
    def executor(self) -> Executor:
        """The backend's per-context executor (CUDA: graphs, streams, pinned buffers, arena;
        ``memory()`` reports what it holds)."""
        return self._executor

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Runs the engine: ``{input name: array}`` -> ``{output name: array}``.

        Raises ``InputError`` naming the input at fault if a name is missing or unknown, or a
        dtype, rank, dim or profile range does not match the engine.
        """
        if self._closed:
            raise EmberError("this execution context is closed; create a new one with "
                             "engine.create_context()")
        signature = _signature(inputs)
        if signature is None or signature != self._accepted:
            validate_inputs(self.engine.plan.inputs, inputs)
            self._accepted = signature
        with self._lock:
            outputs = self._executor.infer_direct(inputs)
            if outputs is None:
                with torch.inference_mode():
                    outputs = self._executor.infer(inputs)
            self.runs += 1
        return outputs


def _signature(inputs: Any) -> Optional[tuple[Any, ...]]:
    """What ``validate_inputs`` checks of ``inputs`` (names, array types, dtypes, shapes), or None
    where they are not a dict of arrays. Inputs of an accepted signature are valid: comparing it
    costs a few microseconds where the checks cost a hundred or more after a run of a large
    model has evicted their code and data from the CPU's caches (MobileNetV2 at batch 1 on a
    2-core EPYC: 141 against 24 us)."""
    if type(inputs) is not dict:
        return None
    try:
        return tuple((k, type(v), v.dtype, v.shape) for k, v in inputs.items())
    except AttributeError:  # not an array: the checks say so
        return None
