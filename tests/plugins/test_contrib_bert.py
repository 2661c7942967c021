"""End to end: a small BERT exported to ONNX, fused by ONNX Runtime's transformer optimizer
(EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu in com.microsoft),
saved, then built by Ember and compared with ONNX Runtime on the optimized model."""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ember
from ember.runtime.engine_file import _read_members
from ember.zoo.bert import BertConfig, BertEncoder
from ember.zoo.init import init_weights
from tests.plugins.ort_helpers import max_rel, run_ort

CFG = BertConfig(vocab_size=500, hidden=64, layers=2, heads=4, intermediate=256, max_positions=64)
NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def optimized_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from onnxruntime.transformers.optimizer import optimize_model

    folder = tmp_path_factory.mktemp("bert")
    model = BertEncoder(CFG).eval()
    init_weights(model, torch.Generator().manual_seed(0))
    ids, mask, types = _feeds(2, 16, as_torch=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask, types), folder / "bert.onnx", input_names=list(NAMES),
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in NAMES})
    logging.disable(logging.WARNING)
    try:
        optimized = optimize_model(str(folder / "bert.onnx"), model_type="bert", num_heads=CFG.heads,
                                   hidden_size=CFG.hidden, opt_level=0, use_gpu=False)
    finally:
        logging.disable(logging.NOTSET)
    path = folder / "bert_optimized.onnx"
    optimized.save_model_to_file(str(path))
    return path, model


def _feeds(batch: int, seq: int, as_torch: bool = False):
    g = torch.Generator().manual_seed(batch * 100 + seq)
    ids = torch.randint(0, CFG.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, seq * 2 // 3:] = 0  # the last sentence is padded
    types = torch.zeros(batch, seq, dtype=torch.int64)
    types[:, seq // 2:] = 1
    if as_torch:
        return ids, mask, types
    return dict(zip(NAMES, (ids.numpy(), mask.numpy(), types.numpy())))


def test_the_optimizer_wrote_contrib_ops(optimized_bert):
    path, _ = optimized_bert
    ops = Counter((n.domain, n.op_type) for n in onnx.load(path).graph.node)
    for op in ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu"):
        assert ops[("com.microsoft", op)] >= 1, ops


@pytest.mark.parametrize("batch, seq", [(2, 16), (1, 7)])
def test_ember_builds_the_optimized_bert_and_matches_onnx_runtime(optimized_bert, batch, seq, tmp_path):
    path, torch_model = optimized_bert
    engine = ember.build(path, ember.BuildConfig(device="cpu"))
    kinds = Counter(layer.kind for layer in engine.plan.layers)
    assert kinds["FusedAttention"] == CFG.layers and kinds["Softmax"] == 0, kinds
    # every residual LayerNorm (and the embeddings' last Add + LayerNorm) is one SkipLayerNormalization
    assert kinds["SkipLayerNormalization"] == 2 * CFG.layers + 1 and kinds["LayerNormalization"] == 0, kinds
    assert "Plugin" not in kinds, kinds
    feeds = _feeds(batch, seq)
    ref = run_ort(onnx.load(path), feeds)["last_hidden_state"]
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)["last_hidden_state"]
    assert max_rel(got, ref) < 1e-4
    with torch.no_grad():
        expected = torch_model(*(torch.from_numpy(feeds[k]) for k in NAMES)).numpy()
    assert max_rel(got, expected) < 1e-4
    engine.save(tmp_path / "bert.ember")  # lowered: the engine needs no plugin to load
    assert _read_members(tmp_path / "bert.ember")[0]["plugins"] == []
    with ember.load(tmp_path / "bert.ember").create_context() as ctx:
        np.testing.assert_array_equal(ctx.infer(feeds)["last_hidden_state"], got)


def test_fixed_shapes_fold_the_mask_arithmetic(optimized_bert):
    path, _ = optimized_bert
    feeds = _feeds(2, 16)
    engine = ember.build(path, ember.BuildConfig(device="cpu", shapes={k: (2, 16) for k in NAMES}))
    kinds = Counter(layer.kind for layer in engine.plan.layers)
    assert kinds["Range"] == 0 and kinds["Shape"] == 0, kinds
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)["last_hidden_state"]
    assert max_rel(got, run_ort(onnx.load(path), feeds)["last_hidden_state"]) < 1e-4
