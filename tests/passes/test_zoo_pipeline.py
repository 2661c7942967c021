"""The full pipeline on the zoo: every pass fires where its pattern occurs, outputs stay equal to
ONNX Runtime's (verifier after every pass)."""
import functools

import numpy as np
import onnx
import pytest

from ember import zoo
from ember.frontends.onnx import import_onnx

from passkit import optimize, optimized, ort_run, run_graph

BN = "batchnorm(conv(x, w, b)) => conv(x, w * s, b * s + t)"
CONV_RELU = "conv(x, w, b) -> relu => conv_relu(x, w, b)"
CONV_ADD = "conv(x, w, b) + r => conv_add(x, w, b, r)"
WIDE_CONV = "convs(x) with one kernel => wide_conv(x) + split"
CONCAT = "concat(a, b) => a, b written into slices of one buffer"
GELU = "x * 0.5 * (1 + erf(x / sqrt(2))) => gelu(x)"
ATTENTION = "softmax(q @ k^T * s + mask) @ v => attention(q, k, v, mask)"
GEMM_BIAS = "matmul(x, w) + b => gemm(x, w, b)"
GEMM_GELU = "gemm(x, w, c) -> gelu => gemm_gelu(x, w, c)"
QKV = "matmuls(x, w_i) + b_i => gemm(x, [w_i], [b_i]) + split"
LAYERNORM = "(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) => layer_norm(x)"
CHAIN = "elementwise chain => fused_elementwise"  # BERT: mask Cast+Sub+Mul
SKIP_LN = "layer_norm(a + b, s, bias) => skip_layer_norm(a, b, s, bias)"  # residuals (+ BERT embeddings)

CASES = {
    "resnet-18": dict(rules={BN: 20, CONV_RELU: 17, CONV_ADD: 8}, layers=24),
    "googlenet": dict(rules={CONV_RELU: 57, WIDE_CONV: 9, CONCAT: 9}, layers=75),
    "mobilenet-v2": dict(rules={BN: 52, "conv(x, w, b) -> clip => conv_clip(x, w, b)": 35, CONV_ADD: 10}, layers=55),
    "mobilenet-v3-small": dict(rules={"conv(x, w, b) -> hardswish => conv_hardswish(x, w, b)": 18,
                                      "conv(x, w, b) -> hardsigmoid => conv_hardsigmoid(x, w, b)": 9,
                                      "gemm(x, w, c) -> hardswish => gemm_hardswish(x, w, c)": 1}, layers=74),
    "bert-tiny": dict(rules={GELU: 2, ATTENTION: 2, GEMM_BIAS: 12, GEMM_GELU: 2, QKV: 2, CHAIN: 1, SKIP_LN: 5},
                      layers=38),
    "bert-tiny@opset14": dict(rules={LAYERNORM: 5, ATTENTION: 2, QKV: 2, CHAIN: 1, SKIP_LN: 5}, layers=38),
    "bert-tiny@dynamic": dict(rules={ATTENTION: 2, QKV: 2, CHAIN: 1, SKIP_LN: 5}, layers=39),
    "resnet-50": dict(rules={BN: 53, CONV_ADD: 16}, layers=57, slow=True),
    "minilm": dict(rules={GELU: 6, ATTENTION: 6, GEMM_BIAS: 36, GEMM_GELU: 6, QKV: 6, CHAIN: 2, SKIP_LN: 12},
                   layers=108,
                   slow=True),
}


@functools.cache
def exported(case):
    name, _, variant = case.partition("@")
    if name == "minilm":
        from ember.zoo import minilm
        return name, minilm.export_onnx()
    if variant == "opset14":
        return name, zoo.export_onnx(name, opset=14)
    return name, zoo.export_onnx(name, dynamic_batch=variant == "dynamic")


def sample(name, dynamic=False):
    if name == "minilm":
        from ember.zoo import minilm
        sentences = ["Ember builds engines.", "A second, somewhat longer sentence with more tokens in it."]
        return {k: np.asarray(v) for k, v in minilm.tokenize(minilm.load_tokenizer(), sentences).items()}
    return zoo.sample_inputs(name, batch=2 if dynamic else 1)


def fired(result):
    total = {}
    for record in result.stats:
        for rule, n in record.fired.items():
            total[rule] = total.get(rule, 0) + n
    return total


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if v.get("slow") else c
                                  for c, v in CASES.items()])
def test_zoo_model_optimized_matches_onnxruntime(case):
    name, path = exported(case)
    model = onnx.load(str(path))
    graph = import_onnx(model)
    result = optimized(graph)
    out = result.graph
    expect = CASES[case]
    counts = fired(result)
    for rule, n in expect["rules"].items():
        assert counts.get(rule) == n, (rule, counts)
    assert len(out.nodes) == expect["layers"]
    feeds = sample(name, dynamic=case.endswith("dynamic"))
    ours, ref = run_graph(out, feeds), ort_run(model, feeds)
    for k, v in ref.items():
        err = np.abs(ours[k] - v).max() / np.abs(v).max()
        assert err < 1e-4, (k, err)


def test_fused_layers_keep_the_names_of_what_they_absorbed():
    _, path = exported("googlenet")
    out = optimize(import_onnx(str(path)))
    names = {n.display_name for n in out.nodes}
    assert "conv1/7x7_s2 + conv1/relu_7x7" in names
    wide = next(n for n in out.nodes if n.rule == WIDE_CONV and n.op.value == "FusedConv")
    assert wide.display_name.startswith("inception_3a/1x1 + inception_3a/relu_1x1 + inception_3a/3x3_reduce")
