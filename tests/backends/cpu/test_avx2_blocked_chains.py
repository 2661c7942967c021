"""Blocked chains on a CPU without AVX-512. oneDNN 3.2 has only its reference convolution (plain
loops, about 100x slower) for nChw16c there, so a chain's "blocked" layout is the CPU's own block:
nChw8c on AVX2. Before this, an AMD EPYC with AVX2 alone spent 500 s building MobileNetV2, timing
the reference kernels. The child process masks AVX-512 with ``ONEDNN_MAX_CPU_ISA=AVX2``, so the
test runs on any x86 CPU with AVX2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from cpukit import blocked_layout  # tests/backends/cpu/cpukit.py
from test_blocked_chains import _build, _model

from ember.backends.cpu.features import cpu_features

pytestmark = [pytest.mark.usefixtures("fresh_native"),
              pytest.mark.skipif("avx2" not in cpu_features().flags, reason="the CPU has no AVX2")]

_CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np, onnxruntime as ort
    import ember
    from ember.backends.cpu import native
    from ember.backends.cpu.chains import reference
    from ember.tools.runners import max_rel_error

    path, model, x_path = sys.argv[1:4]
    ext = native.extension()
    engine = ember.load(path)
    program = engine.compile()
    chain = program._chains[0]
    x = np.load(x_path)
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    print(json.dumps({"block": ext.blocked_channels(), "layout": chain.layout,
                      "impls": [step.impl for step in chain.convs],
                      "reference": [reference(step) for step in chain.convs],
                      "error": max_rel_error(got, want)}))
''')


def test_a_blocked_record_runs_in_the_cpus_own_block_with_jit_kernels(
        ext: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any):
    model = _model()
    engine = _build(model, monkeypatch, "auto")
    (first, entry), = engine.plan.build_info["chain_layouts"].items()
    engine.plan.build_info["chain_layouts"] = {first: {"layout": "blocked", "ms": entry["ms"]}}
    engine.save(tmp_path / "blocked.ember")
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_CHAIN_LAYOUT", "DNNL_MAX_CPU_ISA")}
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "blocked.ember"), str(tmp_path / "model.onnx"),
                           str(tmp_path / "x.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["block"] == 8 and got["layout"] == "blocked"
    assert not any(got["reference"]), got["impls"]  # nChw16c would be "ref:any" on every layer
    assert all("avx512" not in impl for impl in got["impls"]), got["impls"]  # the mask held
    assert got["error"] < 1e-4


def test_a_blocked_layout_of_only_reference_kernels_is_not_offered(ext: Any):
    """``chains.blocked`` drops a layout where oneDNN would run any layer on its reference kernel."""
    from dataclasses import dataclass

    from ember.backends.cpu.chains import ChainLink, blocked, reference

    @dataclass
    class FakeStep:
        impl: str
        dst_dims: tuple = (1, 8, 4, 4)

    assert reference(FakeStep("ref:any")) and not reference(FakeStep("jit:avx2"))
    assert not reference(object())  # a step without an implementation name (none is reference)

    def link(impl: str) -> ChainLink:
        return ChainLink(None, False, False, relayout=lambda src, dst: FakeStep(impl), shape=(1, 16, 4, 4))

    class FakeChain:
        paired = ()
        head_layer = None

    assert blocked(FakeChain(), [link("jit:avx2"), link("ref:any")]) is None  # type: ignore[arg-type]


def test_the_blocked_layout_helper_follows_the_cpus_block(ext: Any):
    import torch

    x = torch.arange(2 * 10 * 2 * 3, dtype=torch.float32).view(2, 10, 2, 3)
    for block in (8, 16):
        flat = blocked_layout(x, block)
        padded = (10 + block - 1) // block * block
        assert flat.numel() == 2 * padded * 2 * 3
        back = flat.view(2, padded // block, 2, 3, block).permute(0, 1, 4, 2, 3).reshape(2, padded, 2, 3)
        assert torch.equal(back[:, :10], x) and not back[:, 10:].any()
    assert ext.blocked_channels() in (8, 16)
    assert blocked_layout(x).numel() == blocked_layout(x, ext.blocked_channels()).numel()
