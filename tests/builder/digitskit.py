"""scikit-learn's handwritten digits for the INT8 accuracy tests: the same split everywhere
(1,200 to train on, the rest held out) and one training loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, train, held)``: 8x8 images scaled to [0, 1] as ``[N, 1, 8, 8]`` float32, labels,
    and the indices of the training and held-out samples (a fixed permutation)."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")  # requirements-dev.txt
    data = sklearn_datasets.load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x, y, order[:1200], order[1200:]


def train_digits(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, train: np.ndarray, steps: int,
                 batch: int) -> torch.nn.Module:
    """``net`` trained with Adam (lr 1e-2) on ``steps`` seeded batches of the training samples,
    then put in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
        opt.step()
    return net.eval()
