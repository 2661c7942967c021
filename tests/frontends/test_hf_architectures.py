"""Hugging Face architectures (random weights from small configs; no download) exported by both
torch.onnx exporters: Ember must import them and match torch.

Current ``transformers`` exports use ops beyond the zoo's: IsNaN/And/GreaterOrEqual/GatherND/
GatherElements in the attention-mask code (BERT, DistilBERT, Llama), Trilu (GPT-2's causal mask
under TorchScript), Mod (Swin's window partition).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch

import ember

T = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # about 20 s on 2 cores (still run in CI)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


def _ids():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def _image():
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


MODELS = {
    "bert": (lambda: T.BertModel(T.BertConfig(**SMALL)), _ids),
    "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                                vocab_size=100)), _ids),
    "gpt2": (lambda: T.GPT2Model(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100)), lambda: _ids()[:1]),
    "t5_encoder": (lambda: T.T5EncoderModel(T.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                       vocab_size=100)), lambda: _ids()[:1]),
    "llama": (lambda: T.LlamaModel(T.LlamaConfig(**SMALL, num_key_value_heads=2)), lambda: _ids()[:1]),
    "vit": (lambda: T.ViTModel(T.ViTConfig(**{k: v for k, v in SMALL.items() if k != "vocab_size"},
                                           image_size=32, patch_size=8)), _image),
    "swin": (lambda: T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                              num_heads=[2, 4], window_size=4)), _image),
}
#: (model, exporter) pairs the exporters themselves cannot export with torch 2.13 / this transformers.
EXPORTER_FAILS = {("llama", "torchscript"), ("t5_encoder", "dynamo"), ("swin", "dynamo")}
CASES = [(m, e) for m in MODELS for e in ("torchscript", "dynamo") if (m, e) not in EXPORTER_FAILS]


class FirstOutput(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(*args, return_dict=False)[0]


@pytest.mark.parametrize("name, exporter", CASES, ids=[f"{m}-{e}" for m, e in CASES])
def test_hf_architecture_matches_torch(name: str, exporter: str) -> None:
    make, inputs = MODELS[name]
    torch.manual_seed(0)
    model, args = FirstOutput(make()).eval(), inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            proto = torch.onnx.export(model, args, None, dynamo=True, opset_version=18, verbose=False).model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(model, args, buf, dynamo=False, opset_version=17)
            proto = onnx.load_model_from_string(buf.getvalue())
    with torch.no_grad():
        want = model(*args).numpy()
    engine = ember.build(proto, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        got = list(ctx.infer({i.name: a.numpy() for i, a in zip(proto.graph.input, args)}).values())[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
