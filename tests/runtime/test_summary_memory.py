"""The planned device-memory line of a CUDA engine's summary (computed from the plan alone)."""
from __future__ import annotations

import dataclasses

import ember
from ember.builder.build import build
from ember.runtime.summary import device_weight_bytes, format_engine

from runtime_graphs import cnn_graph


def test_half_precision_layers_halve_their_weights_on_the_device():
    plan = build(cnn_graph(), ember.BuildConfig(device="cpu")).plan
    fp32 = sum(int(v.nbytes) for v in plan.graph.constants.values())
    assert device_weight_bytes(plan) == fp32  # every layer fp32
    half = dataclasses.replace(plan, layers=[dataclasses.replace(la, precision="fp16") for la in plan.layers],
                               config=dataclasses.replace(plan.config, device="cuda", precision="fp16"))
    floats = sum(int(v.nbytes) for v in plan.graph.constants.values() if v.dtype.kind == "f" and v.dtype.itemsize == 4)
    assert device_weight_bytes(half) == fp32 - floats // 2
    text = format_engine(half, layers=False)
    assert "device memory (planned)" in text and "--device-memory" in text
    assert "device memory" not in format_engine(plan, layers=False)
