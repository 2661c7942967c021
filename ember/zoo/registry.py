"""The zoo's catalogue: each model's constructor, inputs and outputs, registered by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ember.errors import ModelLoadError


@dataclass(frozen=True)
class InputSpec:
    """One model input; ``shape`` excludes the batch dimension, which always comes first."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "image"  # "image" | "token_ids" | "attention_mask" | "token_type_ids"


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: ``create(generator)`` returns the model in eval mode with deterministic weights."""

    name: str
    create: Callable[[torch.Generator], nn.Module]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    description: str
    vocab_size: int = 0
    tags: tuple[str, ...] = field(default=())

    def input_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Fixed input shapes at this batch size, keyed by input name."""
        return {i.name: (batch, *i.shape) for i in self.inputs}


_REGISTRY: dict[str, ZooModel] = {}


def register(model: ZooModel) -> ZooModel:
    """Adds ``model`` to the catalogue; names are unique."""
    if model.name in _REGISTRY:
        raise ValueError(f"zoo model {model.name!r} is registered twice")
    _REGISTRY[model.name] = model
    return model


def names() -> list[str]:
    """Names of every zoo model, in registration order."""
    _load_all()
    return list(_REGISTRY)


def get(name: str) -> ZooModel:
    """The catalogue entry for ``name``; unknown names list the ones that exist."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelLoadError(f"unknown zoo model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The PyTorch module of zoo model ``name`` in eval mode, with weights drawn from ``seed``.

    >>> m = build_model("resnet-18")                       # doctest: +SKIP
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        model = get(name).create(generator)
    return model.eval()


def sample_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic realistic inputs: N(0, 1) images; token ids with [CLS]/[SEP] and padding."""
    spec = get(name)
    rng = np.random.default_rng(seed)
    lengths = _valid_lengths(spec, batch, rng)
    out: dict[str, np.ndarray] = {}
    for inp in spec.inputs:
        shape = (batch, *inp.shape)
        if inp.kind == "image":
            out[inp.name] = rng.standard_normal(shape, dtype=np.float32)
        elif inp.kind == "token_ids":
            out[inp.name] = _token_ids(shape, lengths, spec.vocab_size, rng)
        elif inp.kind == "attention_mask":
            out[inp.name] = (np.arange(shape[1])[None, :] < lengths[:, None]).astype(inp.dtype)
        elif inp.kind == "token_type_ids":
            out[inp.name] = (np.arange(shape[1])[None, :] >= (lengths[:, None] // 2)).astype(inp.dtype)
            out[inp.name] *= (np.arange(shape[1])[None, :] < lengths[:, None])
        else:
            raise ValueError(f"input {inp.name!r} of zoo model {name!r} has unknown kind {inp.kind!r}")
    return out


def _valid_lengths(spec: ZooModel, batch: int, rng: np.random.Generator) -> np.ndarray:
    seq = next((i.shape[0] for i in spec.inputs if i.kind == "token_ids"), 0)
    if not seq:
        return np.zeros(batch, dtype=np.int64)
    # The first sequence fills the whole window; the others are padded, so masks matter.
    lengths = rng.integers(max(2, seq // 4), seq + 1, size=batch)
    lengths[0] = seq
    return lengths


def _token_ids(shape: tuple[int, ...], lengths: np.ndarray, vocab: int, rng: np.random.Generator) -> np.ndarray:
    cls_id, sep_id, pad_id, first_word = 101, 102, 0, 1000
    ids = rng.integers(first_word, max(vocab, first_word + 1), size=shape, dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1] = cls_id, sep_id
        ids[row, n:] = pad_id
    return ids


def _load_all() -> None:
    # Explicit list: importing a module registers its models (no scanning).
    from ember.zoo import bert, efficientnet, googlenet, mobilenet, resnet  # noqa: F401
