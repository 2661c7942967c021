"""The CPU's tactic timer: the generic wall-clock timer (``ember.backends.timing``), with each
layer's activation inputs in the dtype the engine stores them in.

A half-precision layer reads 16-bit activations (``ember.backends.cpu.half.storage_dtype``; the
build planned the conversions), so its tactics are timed on 16-bit inputs: a 16-bit oneDNN
kernel and the fp32 alternative (which converts its input) are then compared as they would run.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from ember.backends.base import Backend, TacticTimer
from ember.backends.tensors import compute_dtype
from ember.backends.timing import wall_clock_timer
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records

#: (fraction, ms) by which a timed CPU choice must beat the default to replace it
#: (``Backend.switch_margin``; also the chain layouts, ``CPUProgram.tune``): wall-clock timings on a
#: shared CPU move by several percent from run to run, and near ties made two builds of one model
#: choose differently. A small layer or chain keeps its default.
SWITCH_MARGIN = (0.03, 0.02)


def _stored(precision: Precision) -> Optional[torch.dtype]:
    return compute_dtype(precision) if Precision(precision).is_half else None


def cpu_timer(backend: Backend, constants: Mapping[str, torch.Tensor], device: torch.device,
              records: Records, config: BuildConfig, warmup: int = 2, reps: int = 5) -> TacticTimer:
    """``timer(node, graph, tactic, precision) -> ms``: the median wall time of the tactic's
    kernel on inputs in the dtype the engine stores them in; ``inf`` for a node with a symbolic
    input shape or a tactic that cannot run."""
    return wall_clock_timer(backend, constants, device, records, config, warmup, reps, stored_dtype=_stored)


__all__ = ["SWITCH_MARGIN", "cpu_timer"]
