"""Depthwise pairs in CPU chains (``ember.backends.cpu.chains.with_dw_pairs``): a float 1x1
convolution whose output only the 3x3 depthwise convolution after it reads runs with it as one
oneDNN primitive (the depthwise post-op, ``Layer.prepare_dw``). The build times each chain with
and without its pairs in both layouts and records the fastest; a loaded engine follows the record.
oneDNN fuses such a pair in a real kernel only where the expanded tensor outgrows the caches, so
these tests let pairs run on its reference fusion (``DW_REFERENCE_OK``) to cover small shapes."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx
import pytest
from cpukit import assert_runs_like_ort  # tests/backends/cpu/cpukit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu import chains
from ember.backends.cpu.timing import SWITCH_MARGIN
from ember.backends.timing import fastest
from ember.tools.runners import max_rel_error

pytestmark = pytest.mark.usefixtures("fresh_native")


def _model(dw_pads: Optional[list[int]] = None, expand_read_again: bool = False, dilated: bool = False,
           batch: int = 2) -> onnx.ModelProto:
    """An RGB stem (3x3 s2 + ReLU), then two MobileNet blocks on 20 channels (not a multiple of
    16): 1x1 expand + Clip -> 3x3 depthwise s1 + Clip -> 1x1 project, + the stem's output; then
    1x1 expand + ReLU -> 3x3 depthwise s2 + ReLU -> 1x1 project. ``dw_pads``: the second depthwise's
    pads; ``expand_read_again``: the second expand's output is also added to the second depthwise's
    output (stride 1 then); ``dilated``: the first depthwise has dilation 2 (pads 2)."""
    rng = np.random.default_rng(0)
    c, e = 20, 60

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    s2 = 1 if expand_read_again else 2
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=e,
                              **({"pads": [2, 2, 2, 2], "dilations": [2, 2]} if dilated else {"pads": [1, 1, 1, 1]})),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
             helper.make_node("Add", ["c3", "r0"], ["s3"]),
             helper.make_node("Conv", ["s3", "w4", "b4"], ["c4"]),
             helper.make_node("Relu", ["c4"], ["r4"]),
             helper.make_node("Conv", ["r4", "w5", "b5"], ["c5"], group=e, strides=[s2, s2],
                              pads=dw_pads or [1, 1, 1, 1]),
             helper.make_node("Relu", ["c5"], ["r5"])]
    last = "r5"
    if expand_read_again:
        nodes.append(helper.make_node("Add", ["r5", "r4"], ["s5"]))
        last = "s5"
    nodes.append(helper.make_node("Conv", [last, "w6", "b6"], ["y"]))
    inits = [init("w0", c, 3, 3, 3), init("b0", c), init("w1", e, c, 1, 1), init("b1", e),
             init("w2", e, 1, 3, 3), init("b2", e), init("w3", c, e, 1, 1), init("b3", c),
             init("w4", e, c, 1, 1), init("b4", e), init("w5", e, 1, 3, 3), init("b5", e),
             init("w6", c, e, 1, 1), init("b6", c),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    g = helper.make_graph(nodes, "mbv2-pairs",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 34, 34])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _build(model: onnx.ModelProto, **config: Any) -> Any:
    return ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", **config), progress=False)


def _chain_names(engine: Any) -> list[str]:
    return [s.name for s in engine.compile().chained or () if s.kind == "Chain"]


def _weight_copies(engine: Any) -> list[int]:
    links = [getattr(s.kernel, "chain_link", None) for s in engine.compile().steps]
    return [link.layer.weight_copies for link in links if link is not None]


def _recorded(engine: Any, tmp_path: Any, layout: str, dw: bool) -> Any:
    """``engine`` saved with a record of ``layout`` (and pairs) for its chain, and loaded."""
    (first,) = engine.plan.build_info.get("chain_layouts", {engine.plan.layers[0].name: {}})
    engine.plan.build_info["chain_layouts"] = {first: {"layout": layout, "dw": dw, "ms": {}}}
    path = tmp_path / f"{layout}-{dw}.ember"
    engine.save(path)
    return ember.load(str(path))


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
def test_a_paired_chain_computes_what_onnx_runtime_computes(ext: Any, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Any, layout: str):
    """Both pairs fused (the second one's output into the block's projection, the first one's
    inside a residual block, whose indices the chain renumbers); a run with NaN and infinity goes
    layer by layer and spreads them as ONNX Runtime does; the finite runs around it use the chain."""
    monkeypatch.setattr(chains, "DW_REFERENCE_OK", True)
    model = _model()
    paired = _recorded(_build(model, tactic_tuning=False), tmp_path, layout, True)
    plain = _recorded(_build(model, tactic_tuning=False), tmp_path, layout, False)
    suffix = ", blocked)" if layout == "blocked" else ")"
    assert _chain_names(paired)[0].endswith(f"(7 layers chained, 2 depthwise pairs fused{suffix}")
    assert _chain_names(plain)[0].endswith(f"(7 layers chained{suffix}")
    assert _weight_copies(paired) == [1] * 7  # the pairs' layers let their own primitives go
    x = np.random.default_rng(1).standard_normal((2, 3, 34, 34)).astype(np.float32)
    bad = x.copy()
    bad[0, 1, 5, 5], bad[1, 2, 9, 9] = np.nan, np.inf
    with paired.create_context() as c1, plain.create_context() as c2:
        assert c1.infer({"x": x})["y"].shape == (2, 20, 9, 9)
        assert_runs_like_ort(model, [c1, c2], x, bad)


@pytest.mark.parametrize("variant, pairs", [
    ({"dw_pads": [0, 0, 1, 1]}, 1),  # asymmetric pads (TensorFlow's SAME, stride 2): not oneDNN's post-op
    ({"expand_read_again": True}, 1),  # the expanded tensor is read again later: it must be written
    ({"dilated": True}, 1),  # a dilated depthwise
])
def test_what_is_not_a_pair_runs_apart_and_right(ext: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                  variant: dict, pairs: int):
    import onnxruntime as ort

    monkeypatch.setattr(chains, "DW_REFERENCE_OK", True)
    model = _model(**variant)
    engine = _recorded(_build(model, tactic_tuning=False), tmp_path, "blocked", True)
    (name,) = _chain_names(engine)
    assert f"{pairs} depthwise pairs fused" in name
    x = np.random.default_rng(2).standard_normal((2, 3, 34, 34)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with engine.create_context() as ctx:
        assert max_rel_error(ctx.infer({"x": x})["y"], want) < 1e-4


def test_the_build_times_the_pairs_records_the_fastest_and_the_switch_leaves_them_out(
        ext: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any):
    monkeypatch.setattr(chains, "DW_REFERENCE_OK", True)
    model = _model()
    engine = _build(model)
    (first, entry), = engine.plan.build_info["chain_layouts"].items()
    assert set(entry["ms"]) == {"nhwc", "blocked", "nhwc+dw", "blocked+dw"}
    best = fastest(list(entry["ms"]), entry["ms"], SWITCH_MARGIN)  # a near tie keeps "nhwc"
    assert (entry["layout"], entry["dw"]) == (best.split("+")[0], best.endswith("+dw"))
    assert ("2 depthwise pairs fused" in _chain_names(engine)[0]) == entry["dw"]
    assert f"{first}.. {best} (nhwc " in engine.summary()
    assert _weight_copies(engine) == [1] * 7
    # the record is followed after a load
    engine.save(tmp_path / "e.ember")
    assert ("depthwise pairs" in _chain_names(ember.load(str(tmp_path / "e.ember")))[0]) == entry["dw"]
    # EMBER_CHAIN_DW=0: nothing timed with pairs, and a record with pairs is not followed
    monkeypatch.setenv(chains.DW_ENV, "0")
    entry = _build(model).plan.build_info["chain_layouts"][first]
    assert set(entry["ms"]) == {"nhwc", "blocked"} and entry["dw"] is False
    assert "depthwise pairs" not in _chain_names(_recorded(engine, tmp_path, "nhwc", True))[0]


def test_a_pair_on_the_reference_fusion_alone_is_not_taken(ext: Any, tmp_path: Any):
    """Without ``DW_REFERENCE_OK`` a pair oneDNN would run on ``ref_fused_convolution`` (these
    small shapes, whose expanded tensor fits the caches) is left as two layers."""
    engine = _recorded(_build(_model(), tactic_tuning=False), tmp_path, "nhwc", True)
    assert "depthwise pairs" not in _chain_names(engine)[0]


def test_prepare_dw_says_what_is_not_a_pair(ext: Any):
    import torch

    def layer(o: int, i: int, k: int, groups: int = 1, strides: tuple = (1, 1), dilations: tuple = (1, 1),
              residual: bool = False) -> Any:
        return ext.Layer(torch.randn(o, i, k, k), None, list(strides), list(dilations), groups, "relu",
                         residual=residual)

    one, dw, dims = layer(32, 16, 1), layer(32, 1, 3, groups=32), [1, 16, 12, 12]
    zero, ones = [0] * 4, [1] * 4
    pair = one.prepare_dw(dw, dims, zero, ones, "nhwc", "nhwc", True)
    assert pair.dst_dims == [1, 32, 12, 12] and not pair.has_fused
    with pytest.raises(ValueError, match="starts with a 1x1 stride-1 convolution"):
        layer(32, 16, 3).prepare_dw(dw, dims, zero, ones, "nhwc", "nhwc", True)
    with pytest.raises(ValueError, match="starts with a 1x1 stride-1 convolution"):
        layer(32, 16, 1, strides=(2, 2)).prepare_dw(dw, dims, zero, ones, "nhwc", "nhwc", True)
    with pytest.raises(ValueError, match="ends with a 3x3 depthwise convolution"):
        one.prepare_dw(layer(32, 32, 3), dims, zero, ones, "nhwc", "nhwc", True)
    with pytest.raises(ValueError, match="ends with a 3x3 depthwise convolution"):
        one.prepare_dw(layer(32, 1, 3, groups=32, strides=(3, 3)), dims, zero, ones, "nhwc", "nhwc", True)
    with pytest.raises(ValueError, match="padded by 1 on every side"):
        one.prepare_dw(dw, dims, zero, [0, 0, 1, 1], "nhwc", "nhwc", True)
    with pytest.raises(ValueError, match=r"input must be \[N, 16, H, W\]"):
        one.prepare_dw(dw, [1, 8, 12, 12], zero, ones, "nhwc", "nhwc", True)
    bf16 = ext.Layer(torch.randn(32, 1, 3, 3), None, [1, 1], [1, 1], 32, "relu", src_dtype="bf16", dst_dtype="bf16")
    with pytest.raises(ValueError, match="two float layers of one precision"):
        one.prepare_dw(bf16, dims, zero, ones, "nhwc", "nhwc", True)


def test_ember_profile_times_a_chain_step_by_step_as_the_engine_runs_it(ext: Any, monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Any):
    """``ember profile`` on the CPU runs chains as the engine does, each step timed inside the C++
    call: every chained layer gets its own time, a depthwise pair's goes to its 1x1 layer (the
    depthwise one 0), the head's to its pooling and classifier; a run with NaN goes layer by layer,
    as the engine's does, and says nothing of chains."""
    from ember.tools.profile import format_table, profile_engine

    monkeypatch.setattr(chains, "DW_REFERENCE_OK", True)
    rng = np.random.default_rng(3)
    model = _model()
    graph = model.graph  # end in a head: GlobalAveragePool, Flatten, Gemm
    graph.output.pop()
    graph.node.extend([helper.make_node("GlobalAveragePool", ["y"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["f"]),
                       helper.make_node("Gemm", ["f", "wc", "bc"], ["logits"], transB=1)])
    graph.initializer.extend([numpy_helper.from_array(rng.standard_normal((10, 20)).astype(np.float32), "wc"),
                              numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "bc")])
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10]))
    engine = _recorded(_build(model, tactic_tuning=False), tmp_path, "blocked", True)
    assert _chain_names(engine)[0].endswith("(7 layers chained and a head of 3, 2 depthwise pairs fused, blocked)")
    x = rng.standard_normal((2, 3, 34, 34)).astype(np.float32)
    layers, timeline = profile_engine(engine, {"x": x}, iterations=3, warmup=1)
    notes = [lay.tactic.partition(" (")[2].rstrip(")") for lay in layers]
    assert notes == ["chained", "dw pair", "in dw pair", "chained", "dw pair", "in dw pair", "chained",
                     "chain head", "chain head", "chain head"]
    ms = [lay.median for lay in layers]
    assert all(ms[k] > 0 for k in (0, 1, 3, 4, 6, 7, 9)) and ms[2] == ms[5] == ms[8] == 0.0
    starts = [s for s, _ in timeline]
    assert starts == sorted(starts)  # the chain's steps one after another
    assert "onednn_persistent (dw pair)" in format_table(layers)
    # the program's own timed run: the notes of a finite run, then of a NaN run (layer by layer)
    program = engine.compile()
    import torch

    starts, durs, said = program.timed_run({"x": torch.from_numpy(x)})
    assert said[1] == "dw pair"
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    _, durs, said = program.timed_run({"x": torch.from_numpy(bad)})
    assert said == [""] * 10 and all(d > 0 for k, d in enumerate(durs) if k != 8)  # Flatten may take 0
    # a chain call that fails (an input its primitives were not made for) runs its layers one by
    # one, as the engine's chain step does
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("could not execute a primitive")

    monkeypatch.setattr(chains, "run_chain", broken)
    _, durs, said = program.timed_run({"x": torch.from_numpy(x)})
    assert said == [""] * 10 and all(d > 0 for k, d in enumerate(durs) if k != 8)


def _bottleneck() -> onnx.ModelProto:
    """A ResNet bottleneck without its residual: 1x1 + ReLU -> 3x3 (a full convolution, no groups) +
    ReLU -> 1x1: neighbours that look like a pair's ends but are none."""
    rng = np.random.default_rng(3)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2", "b2"], ["y"])]
    inits = [init("w0", 16, 32, 1, 1), init("b0", 16), init("w1", 16, 16, 3, 3), init("b1", 16),
             init("w2", 32, 16, 1, 1), init("b2", 32)]
    g = helper.make_graph(nodes, "bottleneck", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 14, 14])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_build_offers_prepare_dw_only_real_pairs(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """``with_dw_pairs`` calls ``Layer.prepare_dw`` only for a 1x1 then a 3x3 depthwise layer
    (``ChainLink.pair_role``), so no build raises C++ exceptions as control flow: on the GPU
    machine's Xeon (torch 2.11+cu130, GCC 13.3) each refusal, whose message holds a number, crashed
    the process, and every ResNet-50 and GoogLeNet build died there: a bottleneck's 1x1 -> 3x3 is
    no pair; MobileNet's expand -> depthwise is."""
    monkeypatch.setattr(chains, "DW_REFERENCE_OK", True)
    made, refused = [], []
    real = ext.Layer.prepare_dw

    def counting(self: Any, *args: Any) -> Any:
        try:
            out = real(self, *args)
        except ValueError as e:
            refused.append(str(e))
            raise
        made.append(out is not None)
        return out

    monkeypatch.setattr(ext.Layer, "prepare_dw", counting)
    _build(_bottleneck(), tactic_tuning=True)
    assert made == [] and refused == []
    _build(_model(), tactic_tuning=True)
    assert made and all(made), made  # both pairs, in each layout the build timed
    assert refused == []
