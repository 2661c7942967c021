"""The zoo catalogue: names, deterministic weights, calibrated BatchNorm, realistic sample inputs."""
import numpy as np
import pytest
import torch

from ember import zoo
from ember.errors import ModelLoadError


def test_catalogue_lists_the_four_reference_architectures_and_small_siblings():
    names = zoo.names()
    for name in ("resnet-50", "googlenet", "mobilenet-v2", "bert-base",
                 "resnet-18", "mobilenet-v3-small", "efficientnet-b0", "bert-tiny"):
        assert name in names


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelLoadError, match="unknown zoo model 'vgg-16'.*resnet-50"):
        zoo.get("vgg-16")


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_same_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = _params(zoo.build_model("mobilenet-v3-small", seed=7))
    after = torch.rand(1)
    assert torch.equal(before, after), "building a zoo model consumed the global RNG"
    b = _params(zoo.build_model("mobilenet-v3-small", seed=7))
    c = _params(zoo.build_model("mobilenet-v3-small", seed=8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.0.weight"], c["features.0.0.weight"])


def test_batchnorm_running_stats_are_far_from_identity():
    model = zoo.build_model("resnet-18")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 20
    for bn in bns:
        assert not bn.training
        assert bn.running_mean.abs().max() > 0.05, "running mean still ~0: BN folding untested"
        assert (bn.running_var - 1).abs().max() > 0.1, "running var still ~1: BN folding untested"
        assert (bn.weight - 1).abs().max() > 0.05 and bn.bias.abs().max() > 0.01


def test_activations_stay_normalized_through_deep_networks():
    model = zoo.build_model("resnet-18")
    x = torch.from_numpy(zoo.sample_inputs("resnet-18")["input"])
    with torch.no_grad():
        y = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
    assert 0.1 < float(y.std()) < 10.0


def test_googlenet_lrn_really_normalizes():
    model = zoo.build_model("googlenet")
    x = torch.from_numpy(zoo.sample_inputs("googlenet")["input"])
    with torch.no_grad():
        h = model.pool1[0](model.conv1(x))
        y = model.pool1.norm1(h)
    ratio = float((y / h.clamp(min=1e-6))[h > 1].min())
    assert ratio < 0.8, "LRN is an identity at these activation magnitudes"


def test_image_inputs_are_deterministic_and_seeded():
    a = zoo.sample_inputs("resnet-18", batch=2, seed=1)
    b = zoo.sample_inputs("resnet-18", batch=2, seed=1)
    c = zoo.sample_inputs("resnet-18", batch=2, seed=2)
    assert a["input"].shape == (2, 3, 224, 224) and a["input"].dtype == np.float32
    assert np.array_equal(a["input"], b["input"]) and not np.array_equal(a["input"], c["input"])


def test_token_inputs_look_like_tokenizer_output():
    feeds = zoo.sample_inputs("bert-tiny", batch=4, seed=3)
    ids, mask, types = feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"]
    assert ids.shape == mask.shape == types.shape == (4, 128)
    assert ids.dtype == mask.dtype == types.dtype == np.int64
    lengths = mask.sum(1)
    assert lengths[0] == 128 and lengths.min() < 128, "the batch must contain padded rows"
    for row, n in enumerate(lengths):
        assert np.all(mask[row, :n] == 1) and np.all(mask[row, n:] == 0)
        assert ids[row, 0] == 101 and ids[row, n - 1] == 102 and np.all(ids[row, n:] == 0)
        assert np.all(types[row, n:] == 0) and types[row, n - 1] == 1 and types[row, 0] == 0
