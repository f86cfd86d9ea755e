"""Small stand-ins shared by the tests (not a test module)."""
# B batch, F features, V classes
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convrnn.data.batching import IndexedBatches
from convrnn.layers.base import ModelOutput


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


def run_cli(capture, *argv) -> tuple[int, object, str]:
    """``convrnn ARGV`` in this process, as a user runs it: its exit code, what it printed on stdout
    (bytes with pytest's ``capsysbinary``, text with ``capsys``) and on stderr (text)."""
    import pytest

    from convrnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capture.readouterr()
    return exc.value.code, out, err.decode() if isinstance(err, bytes) else err


def train_cli(*argv) -> None:
    """``convrnn ARGV`` (a training, a report...) that must succeed."""
    import pytest

    from convrnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 0, argv


# ------------------------------------------------------------------ MNIST-like files and digit images

TYPE_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
              np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The obvious IDX encoder: magic, big-endian dims, big-endian payload."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    data = idx_bytes(array)
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


SIZE = 12  # small synthetic digits keep every model tiny



def write_digits(directory, n_train=80, n_test=60, train_tag=11, test_tag=22):
    """IDX files whose pixel (0, 0) tells the split (train_tag / test_tag) and whose ink encodes the label."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n, tag in (("train", n_train, train_tag), ("t10k", n_test, test_tag)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
        for i, d in enumerate(labels):
            images[i, 2:10, 1 + d % 5: 3 + d % 5] = 255
            images[i, 2 + d // 2, 2:10] = 200
        images[:, 0, 0] = tag
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def digit_pngs(tmp_path, digits):
    paths = []
    for k, d in enumerate(digits):
        img = np.zeros((SIZE, SIZE), dtype=np.uint8)
        img[2:10, 1 + d % 5: 3 + d % 5] = 255
        path = tmp_path / f"d{k}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------- every recipe, tiny

def line_png(path: Path, width: int = 60, height: int = 16) -> str:
    rng = np.random.default_rng(0)
    img = np.full((height, width), 255, dtype=np.uint8)
    img[4:12, 5:width - 5] = rng.integers(0, 120, size=(8, width - 10))
    Image.fromarray(img).save(path)
    return str(path)


def digit_png(path: Path, size: int = 8) -> str:
    img = np.zeros((size, size), dtype=np.uint8)
    img[1:size - 1, size // 2] = 255
    Image.fromarray(img).save(path)
    return str(path)


# every recipe's options for a run of a few seconds on small data (tests that go through every recipe)
TINY_RECIPES = {
    "fonts": ["--samples-per-font", "40", "--batch-size", "16"],
    "digits": ["--data-dir", "sklearn", "--num-train", "64", "--batch-size", "16", "--set", "data.num_val=16",
               "--set", "data.num_test=16"],
    "mnist": ["--data-dir", "sklearn", "--batch-size", "32"],
    "lines": ["--synthetic", "digits", "--mnist-dir", "sklearn", "--num-train", "48", "--height", "16",
              "--batch-size", "8", "--set", "data.num_val=16", "--set", "data.num_test=16", "--set",
              "data.max_digits=3"],
    "charlm": ["--data", "{corpus}", "--seq-len", "16", "--batch-size", "4", "--spec", "embed:8 lstm:32 lm"],
}
CORPUS = "To be, or not to be, that is the question.\n" * 60  # the charlm runs' {corpus}


def predict_inputs(recipe: str, folder: Path) -> list[str]:
    """Files ``convrnn predict`` reads for a run of ``recipe`` (none for a language model)."""
    make = {"fonts": lambda: [line_png(folder / "line.png", 64, 16)],
            "lines": lambda: [line_png(folder / "line.png")],
            "digits": lambda: [digit_png(folder / f"d{i}.png") for i in range(3)],
            "mnist": lambda: [digit_png(folder / "d.png")],
            "charlm": lambda: []}
    return make[recipe]()
