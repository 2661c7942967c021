"""Checks of the blocked-layout probe: each layout's chain computes what Ember computes.

    .venv/bin/pytest -q -p no:cacheprovider bench/probes/onednn_blocked

Needs a libdnnl prefix (this interpreter's, or ``$EMBER_ONEDNN_PREFIX``), a C++ compiler and
ninja; without them every test that needs the extension skips and says why.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import net as netmod  # noqa: E402

import ember  # noqa: E402


@pytest.fixture(scope="module")
def ext() -> Any:
    try:
        return netmod.load()
    except (netmod.ProbeError, RuntimeError, OSError) as e:  # no prefix / compiler / ninja
        pytest.skip(f"blocked_net extension unavailable: {e}")


class Small(nn.Module):
    """The probe's op kinds on awkward channel counts (24: not a multiple of the 16-channel block)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.expand = nn.Sequential(nn.Conv2d(24, 48, 1), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 24, 1), nn.BatchNorm2d(24))
        self.tail = nn.Sequential(nn.Conv2d(24, 40, 3, 2, (1, 1), bias=False), nn.ReLU())
        self.head = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = x + self.project(self.dw(self.expand(x)))
        x = self.tail(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _engine(tmp_path: Path, module: nn.Module, batch: int) -> tuple[Any, torch.Tensor]:
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # BatchNorm that folds into something non-trivial
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    module.eval()
    x = torch.randn(batch, 3, 37, 41)
    path = tmp_path / "small.onnx"
    torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False,
                      opset_version=17)
    return ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False), x


def _ember_tensor(engine: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    seen: dict[str, torch.Tensor] = {}
    engine.compile().run({"input": x}, observe=lambda n, t: seen.__setitem__(n, t.clone()))
    return seen[name]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layout", netmod.LAYOUTS)
def test_chain_matches_ember(ext: Any, tmp_path: Path, layout: str, batch: int) -> None:
    engine, x = _engine(tmp_path, Small(), batch)
    chain = netmod.from_plan(ext, engine, layout)
    assert chain.convs == 5  # stem, expand, dw, project(+residual), tail
    chain.net.set_input(x)
    got = chain.net.run()
    want = _ember_tensor(engine, x, chain.output).contiguous()
    assert got.shape == want.shape
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err < 1e-5, f"{layout}: {err}"
    kinds = [op["kind"] for op in chain.net.info()]
    assert kinds.count("conv") == 5 and kinds.count("pool") == 2
    if layout == "blocked":  # every activation between the ops stays nChw16c, the image is read as it is
        assert all(op["dst"] == "nChw16c" for op in chain.net.info() if op["kind"] != "reorder")
        assert kinds.count("reorder") == 1  # only to NCHW at the end
    if layout == "nhwc":
        assert chain.net.info()[0]["name"].startswith("reorder nchw->nhwc")


def test_timings_have_one_entry_per_op_and_run(ext: Any, tmp_path: Path) -> None:
    engine, x = _engine(tmp_path, Small(), 1)
    chain = netmod.from_plan(ext, engine, "blocked")
    chain.net.set_input(x)
    total, per_op = chain.net.time_chain(4, 1)
    assert len(total) == 4 and len(per_op) == len(chain.net.info()) and all(len(v) == 4 for v in per_op)
    assert all(t > 0 for t in total)
    # the ops' times add up to the run's time (each op is timed between the same clock reads)
    assert abs(sum(v[0] for v in per_op) - total[0]) <= 1e-6 * total[0] + 1
    alone = chain.net.time_isolated(2, 2)
    assert len(alone) == len(per_op) and all(len(v) == 2 and min(v) > 0 for v in alone)


def test_arena_reuses_buffers(ext: Any, tmp_path: Path) -> None:
    engine, x = _engine(tmp_path, Small(), 2)
    chain = netmod.from_plan(ext, engine, "nhwc")
    sizes = []
    for op in chain.net.info():
        dims = [int(d) for d in op["dst_dims"].strip("x").split("x")]
        sizes.append(4 * int(np.prod(dims)))
    assert chain.net.arena_bytes() < sum(sizes)


def test_bad_input_and_layout_are_named(ext: Any, tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, Small(), 1)
    with pytest.raises(netmod.ProbeError, match="layout 'nchw16'"):
        netmod.from_plan(ext, engine, "nchw16")
    chain = netmod.from_plan(ext, engine, "blocked")
    with pytest.raises(ValueError, match="input must be float32"):
        chain.net.set_input(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="set_input"):
        chain.net.run()


class WithSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.sigmoid(self.a(x)), 1), 1))


def test_an_op_the_chain_does_not_cover_is_named(ext: Any, tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, WithSigmoid(), 1)
    with pytest.raises(netmod.ProbeError, match=r"node '.*'"):
        netmod.from_plan(ext, engine, "nhwc")


def test_implementation_choice_and_no_arena_give_the_same_output(ext: Any, tmp_path: Path) -> None:
    engine, x = _engine(tmp_path, Small(), 2)
    base = netmod.from_plan(ext, engine, "nhwc")
    base.net.set_input(x)
    want = base.net.run()
    convs = [op for op in base.net.info() if op["kind"] == "conv"]
    assert all(len(op["candidates"].split(";")) >= 2 for op in convs)  # oneDNN offers alternatives
    # the second candidate of every layer (a different kernel, same arithmetic up to rounding)
    second = {op["name"]: "#1" for op in convs}
    other = netmod.from_plan(ext, engine, "nhwc", second, reuse=False)
    other.net.set_input(x)
    assert [op["impl"] for op in other.net.info() if op["kind"] == "conv"] == \
        [op["candidates"].split(";")[1] for op in convs]
    assert other.net.arena_bytes() > base.net.arena_bytes()
    got = other.net.run()
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5


def test_an_implementation_oneDNN_does_not_offer_is_named(ext: Any, tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, Small(), 1)
    name = next(n.name for n in engine.plan.graph.nodes if str(n.op).endswith("Conv"))
    with pytest.raises(ValueError, match=rf"layer '{name}': oneDNN has no implementation 'nope'.*it has: "):
        netmod.from_plan(ext, engine, "blocked", {name: "nope"})


@pytest.mark.parametrize("layout", netmod.LAYOUTS)
def test_residual_as_in_place_sum_matches_ember(ext: Any, tmp_path: Path, layout: str) -> None:
    engine, x = _engine(tmp_path, Small(), 2)
    assert len(netmod.residual_layers(engine)) == 1
    chain = netmod.from_plan(ext, engine, layout, residual="sum")
    chain.net.set_input(x)
    got = chain.net.run()
    want = _ember_tensor(engine, x, chain.output).contiguous()
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    binary = netmod.from_plan(ext, engine, layout)
    assert chain.net.arena_bytes() <= binary.net.arena_bytes()  # the output reuses the residual's buffer
    with pytest.raises(ValueError, match="residual must be binary or sum"):
        netmod.from_plan(ext, engine, layout, residual="add")
