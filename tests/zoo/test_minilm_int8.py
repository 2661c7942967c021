"""The real all-MiniLM-L6-v2 as an INT8 CPU engine (issue 14's accuracy target): calibrated with
min-max on real sentences, its sentence embeddings of other real sentences keep a mean cosine of
at least 0.99 to the fp32 engine's."""
import warnings

import numpy as np
import pytest
from test_minilm import SENTENCES, _cosines

import ember
from ember.tools.runners import EmberRunner
from ember.zoo import minilm

SEQ = 32
CALIBRATION = [
    "The cat sat quietly on the warm windowsill.",
    "Interest rates rose for the third time this year.",
    "She plays the violin in a small orchestra.",
    "Heavy rain flooded the streets of the old town.",
    "The compiler fuses convolutions with their activations.",
    "Tickets for the concert sold out in minutes.",
    "A young boy is kicking a ball in the park.",
    "Researchers published the results in a medical journal.",
]
EVALUATION = [*SENTENCES, "Two children are playing chess at the kitchen table.",
              "The train to the airport leaves every fifteen minutes."]


@pytest.fixture(scope="module")
def engines():
    tokenizer = minilm.load_tokenizer()
    path = minilm.export_onnx()
    shapes = {name: (len(EVALUATION), SEQ) for name in minilm.INPUTS}
    calib = [minilm.tokenize(tokenizer, CALIBRATION[i:i + 4], SEQ, pad_to_max=True) for i in (0, 4)]
    calib = [{k: np.concatenate([v, v]) for k, v in b.items()} for b in calib]  # the engine's batch of 8
    fp32 = ember.build(path, ember.BuildConfig(device="cpu", shapes=shapes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = ember.build(path, ember.BuildConfig(device="cpu", shapes=shapes, precision="int8",
                                                   calibrator="minmax"), calibration_data=calib)
    return tokenizer, fp32, int8


def test_int8_minilm_embeddings_keep_cosine_099(engines):
    tokenizer, fp32, int8 = engines
    gemms = [layer for layer in int8.plan.layers if layer.kind == "QGemm"]
    assert len(gemms) >= 6 * 4 and all(layer.precision == "int8" for layer in gemms)  # 6 blocks: QKV, out, 2 FFN
    embed = {name: minilm.MiniLMEmbedder(EmberRunner(engine), tokenizer, SEQ, pad_to_max=True)(EVALUATION)
             for name, engine in (("fp32", fp32), ("int8", int8))}
    cos = _cosines(embed["int8"], embed["fp32"])
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, cos
    # the ranking of sentence similarity is kept: each sentence's nearest neighbour is the same
    def nearest(e):
        sims = e @ e.T / np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1))
        np.fill_diagonal(sims, -1)
        return sims.argmax(1)
    assert (nearest(embed["int8"]) == nearest(embed["fp32"])).mean() >= 0.75
