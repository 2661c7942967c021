"""Shared fixtures: a model repository of tiny ONNX models and one server on free ports."""
from __future__ import annotations

from pathlib import Path

import pytest

import ember
from ember.serve import ServerOptions, ServerThread

from servekit import REPOSITORY, write_model


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name, (make, config) in REPOSITORY.items():
        write_model(root, name, make(), config)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def server(repository, cache_dir):
    """One server on free ports for every test that only reads or infers."""
    with ServerThread(ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0,
                                    cache_dir=cache_dir, log_level="warning")) as srv:
        yield srv


@pytest.fixture(scope="session")
def simple_engine(repository):
    """The engine the server runs for 'simple', built directly, to compare results with."""
    return ember.build(str(repository / "simple" / "1" / "model.onnx"),
                       ember.BuildConfig(profiles={"x": ((1, 4), (8, 4), (8, 4))}))


