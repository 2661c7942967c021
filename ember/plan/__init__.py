"""The typed plan: what a build decides, as plain data, below every stage that reads it.

- ``config``: ``BuildConfig`` and its enums ``Device``, ``Precision``, ``Layout``; ``Profile``.
- ``records``: the decisions passes hand on (``LayoutPlan``, ``ConcatPlan``, ``PrecisionPlan``,
  ``QuantizationPlan`` of ``QuantRecord``), gathered in ``Records``, with their file schema.
- ``memory``: liveness, the best-fit allocator and ``MemoryPlan``.
- ``plan``: ``Plan`` (an engine as data), ``Layer``, ``TensorSpec``.

This package imports only ``ember.errors``, ``ember.ir`` and ``ember.ops``.
"""
from ember.plan.config import BuildConfig, Device, Layout, Precision, Profile
from ember.plan.memory import MemoryPlan
from ember.plan.plan import Layer, Plan, TensorSpec
from ember.plan.records import (
    ConcatEntry,
    ConcatPlan,
    ConcatSlice,
    LayoutConversion,
    LayoutPlan,
    PrecisionPlan,
    QuantDType,
    QuantizationPlan,
    QuantRecord,
    Records,
)

__all__ = [
    "BuildConfig", "ConcatEntry", "ConcatPlan", "ConcatSlice", "Device", "Layer", "Layout",
    "LayoutConversion", "LayoutPlan", "MemoryPlan", "Plan", "Precision", "PrecisionPlan", "Profile",
    "QuantDType", "QuantRecord", "QuantizationPlan", "Records", "TensorSpec",
]
