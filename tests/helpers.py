"""Small stand-ins shared by the tests (not a test module)."""
# B batch, F features, V classes
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from convrnn.data.batching import IndexedBatches
from convrnn.tasks.base import ModelOutput


class TinyNet(nn.Module):
    """A model with dropout (so resume must restore the RNG) and the SpecModel ``run`` interface."""

    def __init__(self, in_features: int = 6, num_classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, num_classes))

    def run(self, x, lengths=None, state=None):
        return ModelOutput(self.net(x), lengths, state)

    def forward(self, x, lengths=None):
        return self.run(x, lengths).y


def toy_classification(n: int = 96, in_features: int = 6, num_classes: int = 3, seed: int = 0):
    """Linearly separable-ish points and their labels as numpy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, in_features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return x, y


def toy_batches(x: np.ndarray, y: np.ndarray, batch_size: int = 16, shuffle: bool = True, seed: int = 0):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return IndexedBatches(range(len(x)), batch_size, fetch=lambda idx: {"x": xt[idx], "y": yt[idx]},
                          shuffle=shuffle, seed=seed)


def make_trainer(tmp_path, name: str, **cfg):
    """A Trainer of TinyNet on the toy classification, writing its run to ``tmp_path / name``."""
    from convrnn.tasks.classify import ClassifyTask
    from convrnn.train.config import TrainConfig
    from convrnn.train.rundir import RunDir
    from convrnn.train.trainer import Trainer

    torch.manual_seed(0)
    x, y = toy_classification()
    config = TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 1e-2, "checkpoint_every": 4, "log_every": 2, **cfg})
    return Trainer(TinyNet(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y),
                   toy_batches(x[:32], y[:32], shuffle=False), config,
                   run_dir=RunDir(tmp_path / name, tensorboard=False), checkpoint_meta={"recipe": "toy"})
