"""Deterministic, resumable batch order.

A ``BatchSource`` yields the batches of one epoch in an order fixed by ``(seed, epoch)``, so a run
resumed at batch k of epoch e sees exactly the batches an uninterrupted run would have seen.
"""
# B batch, H height, W width
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch


class BatchSource:
    """Protocol: ``num_batches(epoch)`` and ``batches(epoch, start=0)``."""

    def num_batches(self, epoch: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_batches(0)


class IndexedBatches(BatchSource):
    """Batches of items drawn from an indexable dataset.

    ``collate(items) -> dict`` builds one batch (tensors ``x``, ``y``, optionally ``lengths``, ``ids``);
    ``fetch(indices) -> dict`` instead builds it from the index array in one go (vectorised datasets).
    With ``shuffle`` the order of epoch e is a permutation seeded by ``seed + e``; otherwise in order.
    ``sort_key`` (optional) groups items of similar size: the shuffled order is split into chunks of
    ``50 * batch_size``, each chunk is sorted by the key, and the batches are shuffled again.
    """

    def __init__(self, dataset: Sequence, batch_size: int, collate: Callable[[list], dict] | None = None, *,
                 fetch: Callable[[np.ndarray], dict] | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, sort_key: Callable[[int], int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if (collate is None) == (fetch is None):
            raise ValueError("give exactly one of collate (per item) or fetch (per index array)")
        self.dataset, self.batch_size, self.collate, self.fetch = dataset, batch_size, collate, fetch
        self.shuffle, self.seed, self.drop_last, self.sort_key = shuffle, seed, drop_last, sort_key

    def _order(self, epoch: int) -> list[np.ndarray]:
        n = len(self.dataset)
        if self.shuffle:
            rng = np.random.default_rng(self.seed + epoch)
            order = rng.permutation(n)
        else:
            rng, order = None, np.arange(n)
        if self.sort_key is not None:
            chunk = 50 * self.batch_size
            order = np.concatenate([sorted(order[i:i + chunk], key=self.sort_key) for i in range(0, n, chunk)]) if n else order
        stop = n - n % self.batch_size if self.drop_last else n
        groups = [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]
        if self.sort_key is not None and rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        return groups

    def num_batches(self, epoch: int) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        for idx in self._order(epoch)[start:]:
            if self.fetch is not None:
                yield self.fetch(np.asarray(idx))
            else:
                yield self.collate([self.dataset[int(i)] for i in idx])


def stack_collate(items: list) -> dict:
    """Collate ``(x, y)`` pairs of fixed-size tensors into ``{"x": (B, ...), "y": (B, ...)}``."""
    xs, ys = zip(*items)
    return {"x": torch.stack([torch.as_tensor(x) for x in xs]), "y": torch.as_tensor(np.asarray(ys))}


def array_fetcher(images: np.ndarray, labels: np.ndarray, *, rows: Optional[np.ndarray] = None,
                  max_value: float = 255.0) -> Callable[[np.ndarray], dict]:
    """Batches straight from arrays: item ``k`` is image ``rows[k]`` (``k`` without ``rows``) of the
    integer ``images`` ``(N, H, W)``; ``x`` ``(B, 1, H, W)`` float in 0..1 (divided by ``max_value``),
    ``y`` the int64 labels, ``ids`` the image indices."""
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    rows_t = torch.from_numpy(rows) if rows is not None else None

    def fetch(idx: np.ndarray) -> dict:
        i = torch.from_numpy(idx)
        if rows_t is not None:
            i = rows_t[i]
        x = images_t[i].unsqueeze(1).float().div_(max_value)  # (B, H, W) -> (B, 1, H, W)
        return {"x": x, "y": labels_t[i], "ids": i}

    return fetch
