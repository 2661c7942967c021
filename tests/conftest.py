import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; run `make test-gpu` on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not `in keywords`: that matches a tests/.../cuda/ folder too
            item.add_marker(skip)
