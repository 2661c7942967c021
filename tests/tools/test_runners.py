"""Peer runners and the accuracy/timing helpers shared by tests, the demo and the benchmarks."""
import numpy as np
import pytest
import torch

from ember.tools.runners import OrtRunner, TorchRunner, max_rel_error, time_ms


def test_max_rel_error_is_relative_to_the_reference_peak():
    ref = np.array([[-4.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    got = ref + np.array([[0.0, 0.02], [0.0, -0.04]], dtype=np.float32)
    assert max_rel_error(got, ref) == pytest.approx(0.04 / 4.0)
    assert max_rel_error(np.zeros(3), np.zeros(3)) == 0.0
    # an all-zero reference has no scale: the error is absolute (the one measure's rule)
    assert max_rel_error(np.full(3, 1e-3), np.zeros(3)) == pytest.approx(1e-3)
    assert max_rel_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        max_rel_error(np.zeros(3), np.zeros(4))


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    from ember import zoo

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh()).eval()
    path = zoo.export_module(module, {"x": torch.randn(2, 8)}, ["y"], tmp_path_factory.mktemp("m") / "m.onnx")
    return module, path


def test_torch_and_ort_runners_agree(linear_model):
    module, path = linear_model
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 8), dtype=np.float32)}
    a = TorchRunner(module, ["x"], ["y"])(feeds)["y"]
    b = OrtRunner(path, threads=1)(feeds)["y"]
    assert isinstance(a, np.ndarray) and a.shape == (2, 4)
    assert max_rel_error(a, b) < 1e-5


def test_time_ms_warms_up_then_times_each_iteration(linear_model):
    module, _ = linear_model
    calls = []

    class Counting(TorchRunner):
        def run(self, prepared):
            calls.append(1)
            return super().run(prepared)

    times = time_ms(Counting(module, ["x"], ["y"]), {"x": np.zeros((2, 8), np.float32)}, warmup=2, iterations=5)
    assert len(times) == 5 and len(calls) == 7 and all(t > 0 for t in times)


def test_time_ms_stops_early_past_its_time_budget(linear_model):
    module, _ = linear_model
    times = time_ms(TorchRunner(module, ["x"], ["y"]), {"x": np.zeros((2, 8), np.float32)},
                    warmup=0, iterations=10_000, max_seconds=0.0)
    assert len(times) == 3
