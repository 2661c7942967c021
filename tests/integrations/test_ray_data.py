"""EmberPredictor in Ray Data's map_batches on a local cluster: exactly the single engine's results."""
from __future__ import annotations

import numpy as np
import pytest

import ember

from raykit import mlp_model, pair_model

pytest.importorskip("ray.data", reason="the Ray Data tests need ray[data] (pip install 'ember[ray]')")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-data-engines")
    mlp = ember.build(mlp_model(), ember.BuildConfig(profiles={"x": ((1, 16), (8, 16), (32, 16))}))
    mlp.save(folder / "mlp.ember")
    pair = ember.build(pair_model(), ember.BuildConfig(profiles={"a": ((1, 3), (8, 3), (64, 3)),
                                                                   "k": ((1, 2), (8, 2), (64, 2))}))
    pair.save(folder / "pair.ember")
    return {"mlp": folder / "mlp.ember", "pair": folder / "pair.ember"}


def test_map_batches_gives_exactly_the_single_engine_results(ray_cluster, engines):
    from ember.integrations.ray import EmberPredictor

    ray = ray_cluster
    rows = np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32)
    ds = ray.data.from_items([{"id": i, "x": rows[i]} for i in range(len(rows))], override_num_blocks=6)
    # batches of 50 rows run in slices of 32, the most the engine takes
    out = ds.map_batches(EmberPredictor, fn_constructor_kwargs={"engine": str(engines["mlp"])},
                         concurrency=2, batch_size=50, num_cpus=0.5).take_all()
    assert len(out) == len(rows)
    got = np.stack([r["y"] for r in sorted(out, key=lambda r: r["id"])])
    with ember.load(engines["mlp"]).create_context() as ctx:
        want = np.concatenate([ctx.infer({"x": rows[i:i + 1]})["y"] for i in range(len(rows))])
    np.testing.assert_array_equal(got, want)
    assert {"id", "x", "y"} <= set(out[0])


def test_pandas_batches_with_named_columns(ray_cluster, engines):
    from ember.integrations.ray import EmberPredictor

    ray = ray_cluster
    a = np.arange(120, dtype=np.float32).reshape(40, 3)
    k = np.arange(80, dtype=np.int32).reshape(40, 2)  # int32 column, int64 input: widened
    ds = ray.data.from_items([{"key": i, "feats": a[i], "ints": k[i]} for i in range(40)])
    out = ds.map_batches(EmberPredictor, batch_format="pandas", concurrency=1, batch_size=16, num_cpus=0.5,
                         fn_constructor_kwargs={"engine": str(engines["pair"]),
                                                "columns": {"feats": "a", "ints": "k"},
                                                "output_columns": {"total": "sum"}, "keep_columns": ["key"]}
                         ).to_pandas().sort_values("key")
    assert list(out.columns) == ["key", "sum", "idx"]
    np.testing.assert_array_equal(out["sum"].to_numpy(), a.sum(axis=1))
    np.testing.assert_array_equal(np.stack(out["idx"].to_numpy()), k.astype(np.int64) + 1)
