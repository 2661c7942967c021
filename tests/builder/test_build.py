"""build(): shapes and profiles applied to the inputs, memory planned at max shapes, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
from ember.builder.build import build
from ember.errors import BuildError, DeviceError, ModelLoadError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import CastAttrs, ConvAttrs
from ember.plan.memory import check_no_overlap


def _two_inputs(seq="seq") -> Graph:
    """ids[batch, seq] int64, mask[batch, seq] float32 -> relu(cast(ids) * mask)."""
    nodes = [Node("cast", OpType.CAST, ("ids",), ("idf",), CastAttrs("float32")),
             Node("mul", OpType.MUL, ("idf", "mask"), ("m",)),
             Node("relu", OpType.RELU, ("m",), ("y",))]
    f = lambda dt: TensorType(dt, ("batch", seq))  # noqa: E731
    types = {"ids": f(DType.INT64), "mask": f(DType.FLOAT32), "idf": f(DType.FLOAT32),
             "m": f(DType.FLOAT32), "y": f(DType.FLOAT32)}
    return Graph("two", nodes, ["ids", "mask"], ["y"], types)


def test_fixed_shape_fixes_shared_dims_everywhere():
    # optimize=False: the intermediates idf and m stay (fuse_elementwise would merge all three nodes)
    engine = build(_two_inputs(), ember.BuildConfig(shapes={"ids": (2, 5)}, optimize=False))
    assert [s.shape for s in engine.inputs] == [(2, 5), (2, 5)]
    assert engine.outputs[0].shape == (2, 5)
    assert engine.plan.graph.types["m"].shape == (2, 5)
    assert engine.plan.memory.arena_bytes >= 2 * 5 * 4 and not engine.plan.memory.dynamic


def test_profile_keeps_ranges_and_plans_at_max_shapes():
    cfg = ember.BuildConfig(profiles={"ids": ((1, 4), (2, 4), (8, 4))}, optimize=False)
    engine = build(_two_inputs(), cfg)
    ids, mask = engine.inputs
    assert ids.shape == ("batch", 4) and ids.min == (1, 4) and ids.max == (8, 4)
    assert mask.max == (8, 4)  # shares 'batch' with ids
    assert engine.outputs[0].min == (1, 4) and engine.outputs[0].max == (8, 4)
    mem = engine.plan.memory
    assert mem.tensors["m"].size == 8 * 4 * 4 and mem.tensors["idf"].size == 8 * 4 * 4
    check_no_overlap(mem)
    with engine.create_context() as ctx:
        for b in (1, 8):
            ids_v = np.arange(b * 4, dtype=np.int64).reshape(b, 4) - 3
            out = ctx.infer({"ids": ids_v, "mask": np.ones((b, 4), np.float32)})
            np.testing.assert_array_equal(out["y"], np.maximum(ids_v, 0))


def test_no_profile_means_unbounded_and_dynamic_memory():
    engine = build(_two_inputs(), ember.BuildConfig(optimize=False))
    assert engine.inputs[0].max == (None, None)
    assert set(engine.plan.memory.dynamic) == {"idf", "m", "y"}
    assert engine.plan.memory.arena_bytes == 0
    with engine.create_context() as ctx:
        out = ctx.infer({"ids": np.ones((3, 1000), np.int64), "mask": np.ones((3, 1000), np.float32)})
    assert out["y"].shape == (3, 1000)


def test_shape_errors_name_the_input():
    with pytest.raises(BuildError, match=r"--shapes name input 'input_ids', which the model does not have; "
                                         r"its inputs are ids int64\[batch, seq\], mask"):
        build(_two_inputs(), ember.BuildConfig(shapes={"input_ids": (1, 4)}))
    with pytest.raises(BuildError, match=r"input 'ids' has rank 2 \(\[batch, seq\]\) in the model but the "
                                         r"build gives it rank 3"):
        build(_two_inputs(), ember.BuildConfig(shapes={"ids": (1, 4, 1)}))
    with pytest.raises(BuildError, match="dim 'batch' is 1 in one input and 2 in input 'mask'"):
        build(_two_inputs(), ember.BuildConfig(shapes={"ids": (1, 4), "mask": (2, 4)}))
    with pytest.raises(BuildError, match=r"input 'ids' dim 1 is fixed at 4 in the model but its profile "
                                         r"asks for 1\.\.8"):
        build(_two_inputs(seq=4), ember.BuildConfig(profiles={"ids": ((1, 1), (1, 4), (1, 8))}))
    with pytest.raises(BuildError, match="both a fixed shape and a profile"):
        ember.BuildConfig(shapes={"ids": (1, 4)}, profiles={"ids": ((1, 4), (1, 4), (2, 4))})


def test_disjoint_profiles_for_a_shared_dim():
    cfg = ember.BuildConfig(profiles={"ids": ((1, 1), (1, 2), (2, 4)), "mask": ((3, 1), (3, 2), (4, 4))})
    with pytest.raises(BuildError, match="disjoint ranges"):
        build(_two_inputs(), cfg)


def test_cpu_layers_record_fp32_and_model_errors(tmp_path):
    engine = build(_two_inputs(), ember.BuildConfig(precision="fp32", shapes={"ids": (1, 2)}))
    assert {layer.precision for layer in engine.plan.layers} == {"fp32"}
    with pytest.raises(ModelLoadError, match="does not exist"):
        build(tmp_path / "missing.onnx")
    engine.save(tmp_path / "m.ember")
    with pytest.raises(ModelLoadError, match="already a built engine; load it with ember.load"):
        build(tmp_path / "m.ember")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_build_without_gpu():
    with pytest.raises(DeviceError, match="this machine has none.*build with --device cpu"):
        build(_two_inputs(), ember.BuildConfig(device="cuda"))


def test_build_info_and_progress(capsys):
    engine = build(_two_inputs(), ember.BuildConfig(shapes={"ids": (1, 2)}), progress=True)
    info = engine.plan.build_info
    assert info["layers"] == len(engine.plan.layers) and info["source_nodes"] == 3
    assert set(info["phases"]) >= {"import", "optimize", "tactics", "memory plan", "compile"}
    assert "memory plan" in capsys.readouterr().err


def _conv_graph() -> Graph:
    from ember.ops.attrs import ConvAttrs

    rng = np.random.default_rng(0)
    node = Node("conv", OpType.CONV, ("x", "w"), ("y",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    types = {"x": TensorType(DType.FLOAT32, (1, 4, 8, 8)), "w": TensorType(DType.FLOAT32, (8, 4, 3, 3)),
             "y": TensorType(DType.FLOAT32, (1, 8, 8, 8))}
    return Graph("conv", [node], ["x"], ["y"], types, {"w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32)})


def test_cpu_builds_time_gemms_and_attention_but_not_convolutions(monkeypatch):
    """Without ``tune_cpu`` a CPU build times the backend's ``always_timed`` layers (their tactics
    read and write the same formats) and keeps every other layer's default."""
    from ember.backends.cpu import CPUBackend

    rng = np.random.default_rng(0)
    t = lambda *shape: TensorType(DType.FLOAT32, shape)  # noqa: E731
    nodes = [Node("conv", OpType.CONV, ("x", "w"), ("c",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
             Node("mm1", OpType.MATMUL, ("c", "b1"), ("m1",)),
             Node("mm2", OpType.MATMUL, ("m1", "b2"), ("m2",))]
    types = {"x": t(8, 4, 8, 8), "w": t(8, 4, 3, 3), "c": t(8, 8, 8, 8), "b1": t(8, 512),
             "m1": t(8, 8, 8, 512), "b2": t(512, 512), "m2": t(8, 8, 8, 512)}
    consts = {"w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
              "b1": rng.standard_normal((8, 512)).astype(np.float32),
              "b2": rng.standard_normal((512, 512)).astype(np.float32)}
    g = Graph("g", nodes, ["x"], ["m2"], types, consts)
    assert OpType.MATMUL in CPUBackend.always_timed and OpType.CONV not in CPUBackend.always_timed
    engine = build(g, ember.BuildConfig(optimize=False))
    by_name = {lay.name: lay for lay in engine.plan.layers}
    conv, mm1, mm2 = by_name["conv"], by_name["mm1"], by_name["mm2"]
    assert conv.timings == {} and conv.tactic == CPUBackend().tactics(g.nodes[0], g)[0]
    assert len(CPUBackend().tactics(g.nodes[2], g)) > 1
    assert set(mm2.timings) == set(CPUBackend().tactics(g.nodes[2], g)) and mm1.timings
    assert engine.plan.build_info["layers_timed"] == 2 and engine.plan.build_info["timing_cache_hits"] == 0
    untuned = build(g, ember.BuildConfig(optimize=False, tactic_tuning=False))
    assert all(lay.timings == {} for lay in untuned.plan.layers)


def test_cpu_builds_keep_default_tactics_unless_asked(tmp_path):
    from ember.backends.cpu import CPUBackend

    g = _conv_graph()
    default = CPUBackend().tactics(g.nodes[0], g)[0]
    engine = build(g)
    assert engine.plan.build_info["layers_timed"] == 0 and engine.plan.layers[0].tactic == default
    cache = tmp_path / "cache.json"
    tuned = build(g, ember.BuildConfig(tune_cpu=True, timing_cache=str(cache)))
    layer = tuned.plan.layers[0]
    if len(CPUBackend().tactics(g.nodes[0], g)) > 1:
        assert tuned.plan.build_info["layers_timed"] == 1 and set(layer.timings) >= {layer.tactic}
        again = build(g, ember.BuildConfig(tune_cpu=True, timing_cache=str(cache)))
        assert again.plan.build_info["timing_cache_hits"] == 1 and again.plan.layers[0].tactic == layer.tactic
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with engine.create_context() as a, tuned.create_context() as b:
        np.testing.assert_allclose(a.infer({"x": x})["y"], b.infer({"x": x})["y"], rtol=1e-4, atol=1e-5)
