"""An engine file records each layer's tactic. A CPU tactic that only some machines can run (the
compiled ``onednn_persistent`` convolutions, ``ember.backends.cpu.native``) must not make the file
unusable elsewhere: where the tactic is unavailable, its layers run the default kernel, with the
same results, and the log says so once."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

import ember
from ember import zoo
from ember.backends.cpu.kernels.conv_persistent import TACTIC
from ember.runtime.engine import Engine


def test_a_recorded_tactic_this_machine_cannot_run_falls_back_to_the_default(tmp_path, monkeypatch, caplog):
    import ember.backends.cpu.registry as registry

    monkeypatch.setenv("EMBER_ONEDNN_PERSISTENT", "0")  # unavailable here, whether or not the library is
    monkeypatch.setattr(registry, "_FELL_BACK", set())  # the warning is once per process: count from here
    engine = ember.build(zoo.export_onnx("resnet-18", batch=1), ember.BuildConfig(device="cpu"))
    convs = [lay for lay in engine.plan.layers if lay.kind in ("Conv", "FusedConv")]
    assert convs and all(lay.tactic != TACTIC for lay in convs)
    # the same plan as a machine with the extension would have recorded it
    layers = [dataclasses.replace(lay, tactic=TACTIC) if lay in convs else lay for lay in engine.plan.layers]
    moved = Engine(dataclasses.replace(engine.plan, layers=layers))
    path = tmp_path / "elsewhere.ember"
    moved.save(path)
    feeds = zoo.sample_inputs("resnet-18", 1)
    with caplog.at_level(logging.WARNING, logger="ember.build"):
        loaded = ember.load(path)
        with loaded.create_context() as ctx:
            got = {k: np.asarray(v) for k, v in ctx.infer(feeds).items()}
    with engine.create_context() as ctx:
        want = {k: np.asarray(v) for k, v in ctx.infer(feeds).items()}
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)
    assert any(TACTIC in r.getMessage() and "cannot run on this machine" in r.getMessage() for r in caplog.records)


def test_an_unknown_tactic_is_still_an_error(tmp_path):
    engine = ember.build(zoo.export_onnx("resnet-18", batch=1), ember.BuildConfig(device="cpu"))
    layers = [dataclasses.replace(lay, tactic="no_such_tactic") if lay.kind == "FusedConv" else lay
              for lay in engine.plan.layers]
    broken = Engine(dataclasses.replace(engine.plan, layers=layers))
    with pytest.raises(ember.errors.BuildError, match="unknown CPU tactic 'no_such_tactic'"):
        with broken.create_context() as ctx:
            ctx.infer(zoo.sample_inputs("resnet-18", 1))
