"""``Engine``: a built, optimized model ready to run; ``ember.load`` / ``Engine.save``.

>>> engine = ember.load("model.ember")                     # doctest: +SKIP
>>> [str(s) for s in engine.inputs]                        # doctest: +SKIP
['input: float32[1, 3, 224, 224]']
>>> with engine.create_context() as ctx:                   # doctest: +SKIP
...     out = ctx.infer({"input": x})
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Optional

import torch

from ember.backends.base import Backend, Program
from ember.backends.devices import get_backend
from ember.plan.plan import Plan, TensorSpec

if TYPE_CHECKING:
    from ember.runtime.context import ExecutionContext


class Engine:
    """A plan plus its compiled kernels. Kernels are compiled once, on first use, and shared by
    every execution context (they are re-entrant); per-run state lives in the contexts."""

    def __init__(self, plan: Plan, backend: Optional[Backend] = None) -> None:
        self.plan = plan
        self._backend = backend
        self._program: Optional[Program] = None
        self._lock = threading.Lock()

    # ---- description -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.config.device.value)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.plan.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.plan.outputs)

    @property
    def weights_bytes(self) -> int:
        return sum(int(v.nbytes) for v in self.plan.graph.constants.values())

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.plan.inputs)
        return (f"<ember.Engine {self.plan.graph.name!r} on {self.plan.config.device}: "
                f"{len(self.plan.layers)} layers, inputs {ins}>")

    def summary(self) -> str:
        """A readable table of the engine: inputs, outputs, layers, memory plan, weights."""
        from ember.runtime.summary import format_engine

        return format_engine(self.plan)

    # ---- life cycle --------------------------------------------------------------------
    def compile(self) -> Program:
        """Compiles every layer's kernel for this machine (done once; thread-safe): the
        backend's ``Program`` (``Backend.make_program``)."""
        with self._lock:
            if self._program is None:
                backend = self._backend or get_backend(self.plan.config.device)
                self._program = backend.make_program(self.plan, self.device)
            return self._program

    def create_context(self) -> ExecutionContext:
        """A new ``ExecutionContext`` (a context manager) to run this engine."""
        from ember.runtime.context import ExecutionContext

        return ExecutionContext(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the engine to ``path`` (a ``.ember`` zip: manifest + safetensors weights)."""
        from ember.runtime.engine_file import save_plan

        save_plan(self.plan, path)

    @staticmethod
    def load(path: str | os.PathLike[str], compile: bool = True) -> Engine:
        """Reads an engine file, checking format version, checksum and device; compiles it
        unless ``compile=False`` (enough to inspect it, even one built for a device this
        machine lacks)."""
        from ember.runtime.engine_file import load_plan

        engine = Engine(load_plan(path, check_device=compile))
        if compile:
            engine.compile()
        return engine

