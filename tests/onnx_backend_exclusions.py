"""Cases of ONNX's backend test suite that are out of Ember's scope, each with the reason.

Ember is an inference engine for tensor programs (TensorRT's scope): it does not train, has no
string, sequence, map or optional values, and runs no classical-ML (``ai.onnx.ml``) operators.
These cases are skipped with their reason by ``tests/test_onnx_backend.py`` and counted as
excluded in ``docs/ONNX_CONFORMANCE.md``. Cases in scope that Ember does not pass yet are not
here: they are expected refusals (``tests/onnx_backend_refusals.py``).

Each entry is ``(regex, reason)``; a case is excluded when the regex matches the start of its
name (``re.match``, without the ``_cpu``/``_cuda`` device suffix).
"""
from __future__ import annotations

import re
from typing import Optional

_TRAINING = "training: Ember runs inference only (ai.onnx.preview.training optimizers and losses, training mode)"
_STRINGS = "string tensors: Ember has no string element type"
_SEQUENCES = "sequence/optional values: Ember's tensors are tensors only (no Sequence, Optional or Map types)"
_ML = "ai.onnx.ml classical-ML operators: out of scope for a deep-learning engine"
_RANDOM = "random sampling: outputs are random draws that no reference can match exactly"
_IMAGE = "image decoding (ImageDecoder): file decoding belongs in the data pipeline, not the engine"

EXCLUSIONS: tuple[tuple[str, str], ...] = (
    # training
    (r"test_adagrad", _TRAINING),
    (r"test_adam", _TRAINING),
    (r"test_momentum", _TRAINING),
    (r"test_nesterov_momentum", _TRAINING),
    (r"test_gradient_", _TRAINING),
    (r"test_training_dropout", _TRAINING),
    (r"test_batchnorm_.*_training_mode", _TRAINING),
    # (SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss are ai.onnx ops, plain functions of
    # their inputs: Ember runs them, so their cases are in scope)
    # strings
    (r"test_strnorm", _STRINGS),
    (r"test_string_concat", _STRINGS),
    (r"test_string_split", _STRINGS),
    (r"test_regex_full_match", _STRINGS),
    (r"test_cast_.*STRING", _STRINGS),
    (r"test_castlike_.*STRING", _STRINGS),
    (r"test_equal_string", _STRINGS),
    (r"test_identity_opt", _SEQUENCES),
    # sequences and optionals
    (r"test_sequence_", _SEQUENCES),
    (r"test_seq_", _SEQUENCES),
    (r"test_split_to_sequence", _SEQUENCES),
    (r"test_concat_from_sequence", _SEQUENCES),
    (r"test_identity_sequence", _SEQUENCES),
    (r"test_optional_", _SEQUENCES),
    (r"test_if_seq", _SEQUENCES),
    (r"test_if_opt", _SEQUENCES),
    (r"test_loop13_seq", _SEQUENCES),
    (r"test_loop16_seq_none", _SEQUENCES),
    (r"test_sequence_map", _SEQUENCES),
    # ai.onnx.ml
    (r"test_ai_onnx_ml_", _ML),
    (r"test_tfidfvectorizer", _ML + " (TfIdfVectorizer: text n-gram features)"),
    # random
    (r"test_bernoulli", _RANDOM),
    # image decoding
    (r"test_image_decoder", _IMAGE),
)

_COMPILED = tuple((re.compile(p), why) for p, why in EXCLUSIONS)


def exclusion_reason(name: str) -> Optional[str]:
    """The reason ``name`` (a case, with or without its device suffix) is excluded, or None."""
    for pattern, why in _COMPILED:
        if pattern.match(name):
            return why
    return None
