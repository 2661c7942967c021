"""A BERT encoder (Devlin et al. 2018), written out so the exported graph is the textbook one.

Embeddings (word + position + token type, LayerNorm), then post-norm encoder layers:
self-attention (Q, K, V projections, ``softmax(QK^T / sqrt(d) + mask) V``, output projection,
residual, LayerNorm) and the feed-forward block (GELU, erf form). The attention mask is the
usual 0/1 padding mask, turned into an additive ``-10000`` bias as the original BERT does (a
value that survives fp16).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ember.zoo.init import init_weights
from ember.zoo.registry import InputSpec, ZooModel, register

MASK_BIAS = -10000.0


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class Embeddings(nn.Module):
    position_ids: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions)[None, :], persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2)
        b, s = ctx.shape[0], ctx.shape[1]
        return ctx.reshape(b, s, self.heads * self.head_dim)


class AddNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: the output sub-layer of attention and of the FFN."""

    def __init__(self, c_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(c_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg.hidden, cfg.hidden, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = nn.GELU()  # erf form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate, cfg.hidden, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertEncoder(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> last_hidden_state``; parameter names
    follow Hugging Face's ``BertModel`` (without the pooler)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.embeddings.word_embeddings.weight.dtype  # fp16 when run as a half-precision peer
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_BIAS
        return self.encoder(self.embeddings(input_ids, token_type_ids), mask_bias)


def _create(cfg: BertConfig):
    def create(generator: torch.Generator) -> nn.Module:
        model = BertEncoder(cfg).eval()
        init_weights(model, generator)
        return model
    return create


def _inputs(seq: int) -> tuple[InputSpec, ...]:
    return (InputSpec("input_ids", (seq,), "int64", "token_ids"),
            InputSpec("attention_mask", (seq,), "int64", "attention_mask"),
            InputSpec("token_type_ids", (seq,), "int64", "token_type_ids"))


BERT_BASE = BertConfig()
BERT_TINY = BertConfig(hidden=128, layers=2, heads=2, intermediate=512)

register(ZooModel("bert-base", _create(BERT_BASE), _inputs(128), ("last_hidden_state",),
                  "BERT-base encoder (12 layers, hidden 768, 12 heads), sequence 128",
                  vocab_size=BERT_BASE.vocab_size, tags=("transformer", "full")))
register(ZooModel("bert-tiny", _create(BERT_TINY), _inputs(128), ("last_hidden_state",),
                  "BERT-tiny encoder (2 layers, hidden 128, 2 heads), sequence 128 (for tests)",
                  vocab_size=BERT_TINY.vocab_size, tags=("transformer", "small")))
