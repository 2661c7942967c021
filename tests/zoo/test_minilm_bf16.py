"""The real all-MiniLM-L6-v2 as a bf16 CPU engine (issue 19): its sentence embeddings keep a
cosine of at least 0.999 to the fp32 engine's on real sentences, with every GEMM and attention
layer in bf16. Where the CPU has no native bf16 the build is tested with a faked one (oneDNN
emulates bf16, only slower; where it has no bf16 kernels at all, AVX2 at most, that test skips:
``bf16kit.ONEDNN_BF16``), and the real CPU's build says it keeps fp32."""
import sys
import warnings
from pathlib import Path

import pytest
from test_minilm import _cosines
from test_minilm_int8 import EVALUATION

import ember
from ember.backends.cpu.features import CPUPrecisionWarning, cpu_features
from ember.tools.runners import EmberRunner
from ember.zoo import minilm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "cpu"))
from bf16kit import NATIVE, faked_cpu, needs_onednn_bf16, precisions  # noqa: E402

SEQ = 32


@pytest.fixture(scope="module")
def exported():
    """The exported model and its static shapes: the real CPU's build needs no faked one."""
    path = minilm.export_onnx()
    return path, {name: (len(EVALUATION), SEQ) for name in minilm.INPUTS}


@pytest.fixture(scope="module")
def engines(exported):
    path, shapes = exported
    tokenizer = minilm.load_tokenizer()
    fp32 = ember.build(path, ember.BuildConfig(device="cpu", shapes=shapes), progress=False)
    with faked_cpu(NATIVE):  # the real CPU when it has native bf16: the same build
        bf16 = ember.build(path, ember.BuildConfig(device="cpu", shapes=shapes, precision="bf16"), progress=False)
    return tokenizer, fp32, bf16


@needs_onednn_bf16
def test_bf16_minilm_embeddings_keep_cosine_0999(engines):
    tokenizer, fp32, bf16 = engines
    runs = precisions(bf16)
    assert runs["FusedGemm"] == "bf16" and runs["FusedAttention"] == "bf16", runs
    assert sum(layer.kind == "FusedGemm" for layer in bf16.plan.layers) >= 6 * 4  # QKV, out, 2 FFN per block
    embed = {name: minilm.MiniLMEmbedder(EmberRunner(engine), tokenizer, SEQ, pad_to_max=True)(EVALUATION)
             for name, engine in (("fp32", fp32), ("bf16", bf16))}
    cos = _cosines(embed["bf16"], embed["fp32"])
    assert cos.min() >= 0.999, cos


def test_the_real_cpu_builds_bf16_or_says_why_not(exported):
    path, shapes = exported
    cpu = cpu_features()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = ember.build(path, ember.BuildConfig(device="cpu", shapes=shapes, precision="bf16"), progress=False)
    said = [w for w in caught if issubclass(w.category, CPUPrecisionWarning)]
    if cpu.native(ember.Precision.BF16):
        assert not said and precisions(engine)["FusedGemm"] == "bf16"
    else:
        assert said and cpu.name in str(said[0].message)
        assert all(str(layer.precision) == "fp32" for layer in engine.plan.layers)
