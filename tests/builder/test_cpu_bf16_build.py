"""bf16 CPU engines end to end (issue 19): ``BuildConfig(device="cpu", precision="bf16")`` and
``ember build --precision bf16`` on a small CNN and a small transformer; the planned dtypes and
conversions; the engine file; per-layer precisions and the accuracy target; a CPU without native
bf16 (warned, fp32 kept) and fp16 without AMX-FP16 (refused); the configuration's checks.

The CPU is faked (``ember.backends.cpu.features.set_cpu_features``) where a test needs one kind:
oneDNN emulates bf16 on a CPU without native bf16, so the results do not depend on it. Where it
has no bf16 kernels at all (AVX2 at most: ``bf16kit.ONEDNN_BF16``) the bf16 builds skip."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.features import CPUPrecisionWarning
from ember.backends.tensors import max_relative_error
from ember.errors import BuildError
from ember.ir.optype import OpType
from ember.plan.config import BuildConfig, Precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "cpu"))
from bf16kit import (  # noqa: E402
    NATIVE,
    NATIVE_FP16,
    NO_TORCH_FP16_CONV,
    PLAIN,
    TORCH_FP16_CONV,
    casts,
    engines,
    faked_cpu,
    model,
    needs_onednn_bf16,
    precisions,
    run,
    stored,
)

RNG = np.random.default_rng(1)


def _w(*shape: int, scale: float | None = None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return RNG.normal(0, scale if scale is not None else (2 / fan_in) ** 0.5, shape).astype(np.float32)


def small_cnn(seed: int = 1) -> onnx.ModelProto:
    """x[?, 3, 32, 32] -> conv-bn-relu -> maxpool -> residual block -> two branches concatenated
    -> global average pool -> flatten -> gemm -> softmax: the layer kinds of the zoo's CNNs."""
    global RNG
    RNG = np.random.default_rng(seed)
    inits = {"w0": _w(16, 3, 3, 3), "g": np.abs(_w(16, scale=1.0)) + 0.5, "be": _w(16, scale=0.1),
             "mu": _w(16, scale=0.1), "var": np.abs(_w(16, scale=1.0)) + 0.5,
             "w1": _w(16, 16, 3, 3), "w2": _w(16, 16, 3, 3), "wa": _w(8, 16, 1, 1), "wb": _w(8, 16, 3, 3),
             "fc": _w(10, 16), "fcb": _w(10, scale=0.1)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
             n("BatchNormalization", ["c0", "g", "be", "mu", "var"], ["b0"], name="bn"),
             n("Relu", ["b0"], ["r0"], name="relu0"),
             n("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             n("Conv", ["p0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="block_conv1"),
             n("Relu", ["c1"], ["r1"], name="block_relu1"),
             n("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="block_conv2"),
             n("Add", ["c2", "p0"], ["s2"], name="block_add"), n("Relu", ["s2"], ["r2"], name="block_relu2"),
             n("Conv", ["r2", "wa"], ["ba"], name="branch_a"),
             n("Conv", ["r2", "wb"], ["bb"], pads=[1, 1, 1, 1], name="branch_b"),
             n("Concat", ["ba", "bb"], ["cat"], axis=1, name="concat"),
             n("GlobalAveragePool", ["cat"], ["gap"], name="gap"), n("Flatten", ["gap"], ["flat"], name="flatten"),
             n("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1, name="fc"),
             n("Softmax", ["logits"], ["probs"], axis=-1, name="softmax")]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


SHAPES = {"x": (4, 3, 32, 32)}


def _feeds(batch: int = 4) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(0, 1, (batch, 3, 32, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def cnn_pair():
    return engines(small_cnn(), shapes=SHAPES)


@needs_onednn_bf16
def test_a_small_cnn_runs_bf16_within_1e2_of_fp32(cnn_pair):
    fp32, bf16 = cnn_pair
    runs = precisions(bf16)
    for kind in ("FusedConv", "MaxPool", "Concat", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"):
        assert runs[kind] == "bf16", (kind, runs)
    feeds = _feeds()
    got, want = run(bf16, feeds), run(fp32, feeds)
    for k in ("probs", "logits"):
        assert got[k].dtype == np.float32
        err = max_relative_error(got[k], want[k])
        assert 0 < err <= 1e-2, (k, err)
    assert (got["probs"].argmax(1) == want["probs"].argmax(1)).mean() >= 0.75


@needs_onednn_bf16
def test_activations_stay_bf16_between_bf16_layers(cnn_pair):
    """One conversion in (the input), none between layers but for the logits, which the Gemm
    writes in float32 as a graph output and the bf16 Softmax reads; the graph keeps the model's
    types (every op's type rules hold), the layers' precisions say how tensors are stored."""
    _, bf16 = cnn_pair
    assert sorted(casts(bf16)) == [("logits", "bf16"), ("x", "bf16")]
    g = bf16.plan.graph
    for node in g.nodes:
        for o in node.outputs:
            if o and g.types[o].dtype.is_float:
                assert g.types[o].dtype.value == "float32"
                assert stored(bf16, o) == ("float32" if o in g.outputs else "bfloat16"), (node.name, o)
    seen = {}
    bf16.compile().run({"x": __import__("torch").from_numpy(_feeds()["x"])},
                       observe=lambda n, t: seen.__setitem__(n, t.dtype))
    assert all(str(seen[o]).removeprefix("torch.") == stored(bf16, o) for o in seen if o != "x"), seen


@needs_onednn_bf16
def test_the_engine_file_keeps_the_bf16_plan(cnn_pair, tmp_path):
    _, bf16 = cnn_pair
    bf16.save(tmp_path / "cnn.ember")
    loaded = ember.load(tmp_path / "cnn.ember")
    assert [(layer.name, layer.precision, layer.tactic) for layer in loaded.plan.layers] == \
           [(layer.name, layer.precision, layer.tactic) for layer in bf16.plan.layers]
    feeds = _feeds()
    np.testing.assert_array_equal(run(loaded, feeds)["probs"], run(bf16, feeds)["probs"])


@needs_onednn_bf16
def test_a_dynamic_batch_bf16_engine_runs_any_batch_in_its_profile():
    profile = {"x": ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))}
    fp32, bf16 = engines(small_cnn(), profiles=profile)
    for batch in (1, 3, 8):
        feeds = _feeds(batch)
        assert max_relative_error(run(bf16, feeds)["logits"], run(fp32, feeds)["logits"]) <= 1e-2


@needs_onednn_bf16
def test_layer_precisions_keep_named_layers_in_fp32_with_planned_conversions():
    _, bf16 = engines(small_cnn(), shapes=SHAPES, layer_precisions={"Softmax": "fp32", "stem": "fp32"})
    layers = {layer.name: layer for layer in bf16.plan.layers}
    stem = next(lay for lay in bf16.plan.layers if "stem" in lay.origin)
    assert stem.precision is Precision.FP32 and layers["softmax"].precision is Precision.FP32
    assert layers["pool"].precision is Precision.FP32  # follows its fp32 producer: no conversion
    assert sorted(casts(bf16)) == [("p0", "bf16")], casts(bf16)


@needs_onednn_bf16
def test_an_fp32_build_may_name_bf16_layers():
    _, mixed = engines(small_cnn(), precision="fp32", shapes=SHAPES, layer_precisions={"Conv": "bf16"})
    runs = {layer.name: str(layer.precision) for layer in mixed.plan.layers}
    assert {p for name, p in runs.items() if name.startswith(("stem", "block", "branch"))} == {"bf16"}
    assert runs["fc"] == "fp32"
    feeds = _feeds()
    fp32 = ember.build(small_cnn(), BuildConfig(device="cpu", shapes=SHAPES), progress=False)
    assert max_relative_error(run(mixed, feeds)["logits"], run(fp32, feeds)["logits"]) <= 1e-2


@needs_onednn_bf16
def test_the_accuracy_target_returns_layers_from_one_end_to_fp32():
    """A bf16 build with an accuracy target: the search of ``ember.builder.accuracy`` (tested on
    its own in test_accuracy.py) over the CPU's bf16 layers, never over the planned conversions
    (a rebuild names them anew), meets a target tighter than the plain bf16 engine's error with
    layers from the end of the network that owned more of it."""
    from ember.builder import accuracy

    model = small_cnn()
    plain = engines(model, shapes=SHAPES)[1]
    assert plain.plan.layers[0].kind == "Cast" and plain.plan.layers[0].name not in accuracy.reduced_layers(plain)
    feeds = accuracy.calibration_inputs(plain)
    ref = ember.build(model, BuildConfig(device="cpu", shapes=SHAPES, tactic_tuning=False), progress=False)
    before = max(max_relative_error(run(plain, feeds)[k], run(ref, feeds)[k]) for k in ("logits", "probs"))
    target = before * 0.999
    with faked_cpu(NATIVE):
        engine = ember.build(model, BuildConfig(device="cpu", shapes=SHAPES, precision="bf16",
                                                accuracy_target=target), progress=False)
    info = engine.plan.build_info["accuracy"]
    assert info["met"] and info["fp32_layers"] and info["order"] in ("execution", "reverse")
    order = accuracy.reduced_layers(plain)[::-1 if info["order"] == "reverse" else 1]
    assert info["fp32_layers"] == order[:len(info["fp32_layers"])]
    assert max(max_relative_error(run(engine, feeds)[k], run(ref, feeds)[k]) for k in ("logits", "probs")) \
        <= target * 1.01
    assert engine.plan.config.layer_precisions == {name: "fp32" for name in info["fp32_layers"]}


def test_a_cpu_without_native_bf16_warns_and_keeps_fp32():
    model = small_cnn()
    # both builds untimed: the same default tactics, so the same bits (timed, each build may pick
    # another kernel or chain layout by a hair, and float rounding differs: a rare flake)
    with faked_cpu(PLAIN), pytest.warns(CPUPrecisionWarning) as caught:
        engine = ember.build(model, BuildConfig(device="cpu", precision="bf16", shapes=SHAPES, tactic_tuning=False),
                             progress=False)
    text = str(caught[0].message)
    assert PLAIN.name in text and "amx_bf16 or avx512_bf16" in text and "keeps fp32" in text
    assert all(layer.precision is Precision.FP32 for layer in engine.plan.layers) and not casts(engine)
    fp32 = ember.build(model, BuildConfig(device="cpu", shapes=SHAPES, tactic_tuning=False), progress=False)
    feeds = _feeds()
    np.testing.assert_array_equal(run(engine, feeds)["probs"], run(fp32, feeds)["probs"])


def test_fp16_needs_amx_fp16():
    for cpu in (NATIVE, PLAIN):
        with faked_cpu(cpu), pytest.raises(BuildError, match=r"fp16 on the CPU needs AMX-FP16 \(amx_fp16\)") as e:
            ember.build(small_cnn(), BuildConfig(device="cpu", precision="fp16", shapes=SHAPES), progress=False)
        assert cpu.name in str(e.value)
    assert "bf16 (native here)" in _fp16_refusal(NATIVE) and "bf16" not in _fp16_refusal(PLAIN).split("Build with")[1]


@pytest.mark.skipif(not TORCH_FP16_CONV, reason=NO_TORCH_FP16_CONV)
def test_fp16_builds_fp16_layers_with_amx_fp16():
    with faked_cpu(NATIVE_FP16):
        engine = ember.build(small_cnn(), BuildConfig(device="cpu", precision="fp16", shapes=SHAPES), progress=False)
    assert precisions(engine)["FusedConv"] == "fp16" and sorted(casts(engine)) == [("logits", "fp16"), ("x", "fp16")]


def _fp16_refusal(cpu) -> str:
    with faked_cpu(cpu), pytest.raises(BuildError) as e:
        ember.build(small_cnn(), BuildConfig(device="cpu", precision="fp16", shapes=SHAPES), progress=False)
    return str(e.value)


def test_the_configuration_checks_precision_by_device():
    with pytest.raises(BuildError, match="tf32 does not exist on cpu"):
        BuildConfig(device="cpu", precision="tf32")
    with pytest.raises(BuildError, match=r"layer_precisions\['Softmax'\] tf32"):
        BuildConfig(device="cpu", layer_precisions={"Softmax": "tf32"})
    for p in ("fp32", "bf16", "fp16", "int8"):
        assert BuildConfig(device="cpu", precision=p).precision == p
    assert BuildConfig(device="cuda", precision="tf32").precision is Precision.TF32
    old = {**BuildConfig(device="cpu").to_json(), "precision": "tf32", "layer_precisions": {"fc": "tf32"}}
    read = BuildConfig.from_json(old)  # an engine file from before: its CPU "tf32" ran fp32
    assert read.precision is Precision.FP32 and read.layer_precisions == {"fc": Precision.FP32}


@needs_onednn_bf16
def test_ember_build_precision_bf16_on_the_command_line(tmp_path, capsys):
    from ember.cli import main

    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), path)
    with faked_cpu(NATIVE):
        code = main(["build", str(path), "-o", str(tmp_path / "cnn.ember"), "--device", "cpu", "--precision",
                     "bf16", "--shapes", "x:2x3x32x32"])
    assert code == 0, capsys.readouterr()
    engine = ember.load(tmp_path / "cnn.ember")
    assert precisions(engine)["FusedConv"] == "bf16"


@pytest.fixture(scope="module")
def transformer():
    from ember import zoo

    path = zoo.export_onnx("bert-tiny", batch=2)
    return path, zoo.sample_inputs("bert-tiny", 2)


def test_a_small_transformer_runs_bf16_with_its_residual_stream_in_fp32(transformer):
    """bert-tiny: the GEMMs, attention and the data movement between them in bf16; the embeddings
    (a gather from an fp32 table) in fp32; the residual LayerNorms in fp32 (``CPU_HALF_FP32_NORMS``),
    each reading its GEMM's bf16 output converted once and writing the residual stream in fp32,
    converted once more for the next block's GEMMs."""
    path, feeds = transformer
    fp32, bf16 = engines(str(path))
    runs = precisions(bf16)
    for kind in ("FusedGemm", "FusedAttention", "Transpose", "Reshape", "Split"):
        assert "bf16" in runs[kind], (kind, runs)
    assert runs["SkipLayerNormalization"] == "fp32", runs
    plan = bf16.plan
    norms = [n for n in plan.graph.nodes if n.op is OpType.SKIP_LAYER_NORM]
    assert norms and all(stored(bf16, n.outputs[0]) == "float32" for n in norms)
    converted = casts(bf16)
    up = {t for t, p in converted if p == "fp32"}
    assert up == {i.removesuffix("::fp32") for n in norms for i in n.inputs if i.endswith("::fp32")} != set()
    got, want = run(bf16, feeds), run(fp32, feeds)
    for k, v in want.items():
        assert max_relative_error(got[k], v) <= 1e-2, k
        a, b = got[k].reshape(-1, v.shape[-1]), v.reshape(-1, v.shape[-1])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() >= 0.999, cos.min()


def test_named_layernorms_run_bf16_and_store_the_stream_in_16_bits(transformer):
    """``layer_precisions`` still puts the normalizations in bf16 (no conversion around them, the
    stream stored in 16 bits), at a larger error than the default's. (These two tests run on AVX2
    CPUs too: a transformer's bf16 layers there take PyTorch's bf16 kernels, which need no oneDNN.)"""
    path, feeds = transformer
    fp32, default = engines(str(path))
    _, named = engines(str(path), half_layers={"SkipLayerNormalization": "bf16"})
    assert "bf16" in precisions(named)["SkipLayerNormalization"]
    assert len(casts(named)) < len(casts(default))
    want = run(fp32, feeds)
    err = {name: max(max_relative_error(run(e, feeds)[k], v) for k, v in want.items())
           for name, e in (("default", default), ("named", named))}
    assert err["default"] < err["named"], err


def test_a_pre_ln_stack_keeps_its_residual_stream_fp32():
    """Twelve pre-LN blocks (``x + relu(LN(x) @ w)``): the residual Adds read the fp32 stream and
    run fp32, so the stream is never rounded to bf16; with it in bf16 this stack was off by 9.1e-3,
    with it fp32 by 1.8e-3 (twenty-sixth session). Runs on AVX2 CPUs too (PyTorch's bf16 GEMMs)."""
    rng = np.random.default_rng(0)
    d = 256
    nodes, inits, x = [], {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32)}, "x"
    for i in range(12):
        inits[f"w{i}"] = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        nodes += [helper.make_node("LayerNormalization", [x, "g", "b"], [f"n{i}"], axis=-1),
                  helper.make_node("MatMul", [f"n{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"a{i}"]),
                  helper.make_node("Add", [x, f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    m = model(nodes + [helper.make_node("Identity", [x], ["y"])], {"x": (4, 64, d)}, {"y": None}, inits)
    feeds = {"x": rng.standard_normal((4, 64, d)).astype(np.float32) * 3}
    fp32, bf16 = engines(m)
    runs = precisions(bf16)
    assert runs["FusedGemm"] == "bf16" and runs["Add"] == "fp32" and runs["LayerNormalization"] == "fp32", runs
    assert max_relative_error(run(bf16, feeds)["y"], run(fp32, feeds)["y"]) <= 4e-3


def test_the_real_cpu_is_probed():
    """The probe reads the real CPU (no fake): a name and, on Linux, its flags."""
    from ember.backends.cpu.features import cpu_features

    cpu = cpu_features()
    assert cpu.name
    if Path("/proc/cpuinfo").exists():
        assert cpu.flags
    with warnings.catch_warnings():
        warnings.simplefilter("error", CPUPrecisionWarning)
        if cpu.native(Precision.BF16):  # then a bf16 build says nothing
            ember.build(small_cnn(), BuildConfig(device="cpu", precision="bf16", shapes=SHAPES), progress=False)
