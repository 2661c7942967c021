"""Fixtures of the Ray integration tests: a repository of tiny models, a local cluster.

Tests that need a cluster skip (with the reason) where Ray is not installed; they share one
local cluster (2 CPUs, a small object store, no dashboard): starting one costs ~10 s of CI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import ember

from raykit import GATHER_CONFIG, MLP_CONFIG, PAIR_CONFIG, gather_model, mlp_model, pair_model, write_model


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-repo")
    write_model(root, "mlp", mlp_model(), MLP_CONFIG)
    write_model(root, "pair", pair_model(), PAIR_CONFIG)
    return root


@pytest.fixture(scope="module")
def gather_dir(tmp_path_factory) -> Path:
    """A model whose engine fails on an id out of range: a request's own bad values."""
    return write_model(tmp_path_factory.mktemp("gather-repo"), "gather", gather_model(), GATHER_CONFIG)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-engine-cache")


@pytest.fixture(scope="module")
def mlp_engine():
    """The mlp model built here, as a single local engine: the reference of the Ray results."""
    return ember.build(mlp_model(), ember.BuildConfig(profiles={"x": ((1, 16), (8, 16), (64, 16))}))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the Ray tests: 2 CPUs, 100 MiB object store, no dashboard.
    A module that deploys on Serve shuts Serve down at its end, so the CPUs are free again."""
    ray = pytest.importorskip("ray", reason="the Ray integration tests need ray[serve,data] "
                                            "(pip install 'ember[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
