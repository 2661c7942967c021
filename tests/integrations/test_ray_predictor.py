"""EmberPredictor without a cluster: columns to inputs, slices of what the engine takes, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.errors import EngineFileError, InputError
from ember.integrations.ray import EmberPredictor

from raykit import mlp_model, pair_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictor-engines")
    # untimed: both MLP engines keep the default GEMM tactics, so the 4-row one computes bit for bit
    # what the reference (the dynamic one, a row at a time) does
    untimed = {"tactic_tuning": False}
    ember.build(mlp_model(), ember.BuildConfig(profiles={"x": ((1, 16), (4, 16), (8, 16))}, **untimed)).save(
        folder / "mlp.ember")
    ember.build(mlp_model(), ember.BuildConfig(shapes={"x": (4, 16)}, **untimed)).save(folder / "mlp4.ember")
    ember.build(pair_model(), ember.BuildConfig(profiles={"a": ((1, 3), (4, 3), (64, 3)),
                                                          "k": ((1, 2), (4, 2), (64, 2))})).save(folder / "pair.ember")
    return folder


def _reference(path, x):
    with ember.load(path).create_context() as ctx:
        return np.concatenate([ctx.infer({"x": x[i:i + 1]})["y"] for i in range(len(x))])


@pytest.mark.parametrize("engine", ["mlp.ember", "mlp4.ember"])
def test_any_row_count_runs_in_slices_the_engine_takes(files, engine):
    predictor = EmberPredictor(files / engine)
    assert predictor.rows_per_run == (8 if engine == "mlp.ember" else 4)
    x = np.random.default_rng(5).standard_normal((19, 16)).astype(np.float32)
    out = predictor({"x": x, "id": np.arange(19)})
    assert set(out) == {"x", "id", "y"} and out["y"].shape == (19, 8)
    np.testing.assert_array_equal(out["y"], _reference(files / "mlp.ember", x))
    predictor.close()


def test_columns_map_to_inputs_and_outputs_to_columns(files):
    predictor = EmberPredictor(files / "pair.ember", columns={"feats": "a"}, outputs=["total"],
                               output_columns={"total": "sum"}, keep_columns=False)
    rows = [np.arange(3, dtype=np.float64) + i for i in range(5)]
    feats = np.empty(5, dtype=object)
    feats[:] = rows  # a tensor column as object rows, float64: stacked and narrowed to float32
    out = predictor({"feats": feats, "k": np.zeros((5, 2), np.int32)})
    assert list(out) == ["sum"]
    np.testing.assert_array_equal(out["sum"], np.stack(rows).sum(axis=1).astype(np.float32))


def test_pandas_batches(files):
    pd = pytest.importorskip("pandas")
    predictor = EmberPredictor(files / "pair.ember", keep_columns=["name"])
    frame = pd.DataFrame({"name": list("abcd"), "a": list(np.ones((4, 3), np.float32)),
                          "k": list(np.arange(8).reshape(4, 2))})
    out = predictor(frame)
    assert list(out.columns) == ["name", "total", "idx"]
    np.testing.assert_array_equal(out["total"].to_numpy(), np.full(4, 3.0, np.float32))
    np.testing.assert_array_equal(np.stack(out["idx"].to_numpy()), np.arange(8).reshape(4, 2) + 1)


def test_bad_batches_name_the_column_and_input(files):
    predictor = EmberPredictor(files / "pair.ember")
    k = np.zeros((2, 2), np.int64)
    with pytest.raises(InputError, match=r"column 'a' \(input 'a'\) is missing.*columns=\{'<column>': 'a'\}"):
        predictor({"k": k})
    with pytest.raises(InputError, match="column 'k' .* is float32 but the engine takes int64"):
        predictor({"a": np.zeros((2, 3), np.float32), "k": np.zeros((2, 2), np.float32)})
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
    with pytest.raises(InputError, match="column 'a' .* rows of different shapes"):
        predictor({"a": ragged, "k": k})
    with pytest.raises(InputError, match="input 'a'"):
        predictor({"a": np.zeros((2, 4), np.float32), "k": k})  # the engine's own check, named
    with pytest.raises(InputError, match="takes a dict of column arrays or a pandas DataFrame"):
        predictor([1, 2])


def test_bad_arguments_are_refused_at_once(files):
    with pytest.raises(EngineFileError, match="not an engine file; build one first"):
        EmberPredictor(files / "model.onnx")
    with pytest.raises(InputError, match=r"maps to \['b'\], which the engine does not take"):
        EmberPredictor(files / "pair.ember", columns={"x": "b"})
    with pytest.raises(InputError, match="no output 'logits'"):
        EmberPredictor(files / "pair.ember", outputs=["logits"])
