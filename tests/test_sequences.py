"""Digit sequences: targets against a pure-Python reference, padding, split hygiene, determinism."""
from __future__ import annotations

import logging
import math
from itertools import accumulate

import numpy as np
import pytest
import torch

from convrnn.data.batching import IndexedBatches
from convrnn.data.mnist import FALLBACK_SOURCE, MnistSplit, load_mnist
from convrnn.data.sequences import (OPS, DigitSequences, collate_sequences, make_digit_sequences,
                                    make_length_eval_sets, num_target_classes, random_affine, random_shift,
                                    sequence_targets, val_test_pools)
from convrnn.errors import ConfigError, DataError


def reference_target(digits: list[int], op: str):
    if op == "sum":
        return sum(digits)
    if op == "product":
        return math.prod(digits)
    return list(accumulate(digits))


def tagged_split(n: int, tag: int, seed: int, size: int = 6) -> MnistSplit:
    """Random digits whose pixel (0, 0) is ``tag``, so a sequence's images show which split they came from."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0] = tag
    return MnistSplit(images, rng.integers(0, 10, size=n).astype(np.int64), f"fixture {tag}", 255)


TRAIN, TEST = tagged_split(60, tag=11, seed=1), tagged_split(40, tag=22, seed=2)


def test_sequence_targets_on_hand_built_rows():
    digits = np.array([[3, 4, -1], [9, 9, 9], [0, 5, -1], [7, -1, -1]])
    lengths = np.array([2, 3, 2, 1])
    assert sequence_targets(digits, lengths, "sum").tolist() == [7, 27, 5, 7]
    assert sequence_targets(digits, lengths, "product").tolist() == [12, 729, 0, 7]
    assert sequence_targets(digits, lengths, "running-sum").tolist() == [[3, 7, 0], [9, 18, 27], [0, 5, 0], [7, 0, 0]]


@pytest.mark.parametrize("op", OPS)
def test_every_item_matches_the_reference(op):
    ds = DigitSequences.from_split(TRAIN, op=op, max_len=5, num_sequences=200, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        digits = item.digits.tolist()
        assert digits == TRAIN.labels[item.indices.numpy()].tolist()
        expected = reference_target(digits, op)
        assert item.y.tolist() == expected and item.y.dtype == torch.int64
        pixels = TRAIN.images[item.indices.numpy()].astype(np.float32) / 255
        assert item.x.shape == (len(digits), 1, 6, 6) and item.x.dtype == torch.float32
        np.testing.assert_array_equal(item.x[:, 0].numpy(), pixels)
        assert item.id == i
    assert all(ds[i].y.max() < num_target_classes(op, 5) for i in range(len(ds)))


def test_num_target_classes():
    assert num_target_classes("sum", 4) == 37 and num_target_classes("running-sum", 4) == 37
    assert num_target_classes("product", 2) == 82 and num_target_classes("product", 4) == 6562
    with pytest.raises(ConfigError, match="expected op one of sum, product, running-sum, got 'div'"):
        num_target_classes("div", 4)


@pytest.mark.parametrize("op", OPS)
def test_collate_pads_without_leaking_into_targets(op):
    ds = DigitSequences.from_split(TRAIN, op=op, max_len=4, num_sequences=64, seed=5)
    items = [ds[i] for i in range(len(ds))]
    batch = collate_sequences(items)
    b, t = len(items), int(ds.lengths.max())
    assert batch["x"].shape == (b, t, 1, 6, 6) and batch["lengths"].tolist() == ds.lengths.tolist()
    assert batch["mask"].dtype == torch.bool and batch["ids"].tolist() == list(range(b))
    mask = batch["mask"]
    assert mask.sum(1).tolist() == ds.lengths.tolist()
    assert (batch["x"][~mask] == 0).all() and (batch["digits"][~mask] == -1).all() and (batch["indices"][~mask] == -1).all()
    for k, item in enumerate(items):
        n = len(item.digits)
        expected = reference_target(item.digits.tolist(), op)
        if op == "running-sum":
            assert batch["y"].shape == (b, t) and batch["y"].dtype == torch.float32
            assert batch["y_int"][k, :n].tolist() == expected and (batch["y"][k, n:] == 0).all()
        else:
            assert batch["y"].shape == (b,) and batch["y_int"][k].item() == expected
        # alone, or beside a longer item, an item collates to the same valid steps and target
        alone = collate_sequences([item])
        assert torch.equal(alone["x"][0], batch["x"][k, :n])
        assert torch.equal(alone["y"][0], batch["y"][k, :n] if op == "running-sum" else batch["y"][k])


@pytest.mark.parametrize("op", OPS)
def test_batched_gather_equals_collating_items(op):
    ds = DigitSequences.from_split(TRAIN, op=op, max_len=4, num_sequences=30, seed=8)
    ids = [5, 0, 29, 17, 3, 3]
    slow, fast = collate_sequences([ds[i] for i in ids]), ds.batch(ids)
    assert slow.keys() == fast.keys()
    for key in slow:
        assert slow[key].dtype == fast[key].dtype and torch.equal(slow[key], fast[key]), key


def test_random_shift_moves_whole_images_within_the_bound():
    images = np.zeros((200, 9, 9), dtype=np.float32)
    images[:, 4, 4] = 1.0  # one bright pixel in the middle
    moved = random_shift(images, 2, np.random.default_rng(0))
    where = np.argwhere(moved == 1.0)  # (image, row, col) of every bright pixel
    assert moved.shape == images.shape and len(where) == 200 and moved.sum() == 200  # nothing lost or duplicated
    offsets = where[:, 1:] - 4
    assert np.abs(offsets).max() == 2 and {tuple(o) for o in offsets} == {(r, c) for r in range(-2, 3) for c in range(-2, 3)}


def test_shifted_training_batches_are_a_function_of_the_batch_and_keep_targets_and_padding():
    ds = DigitSequences.from_split(TRAIN, op="sum", max_len=4, num_sequences=30, seed=8)
    ids = [5, 0, 29, 17]
    plain = ds.batch(ids)
    ds.shift = 1
    a, b = ds.batch(ids), ds.batch(ids)
    assert torch.equal(a["x"], b["x"])  # resuming replays the same augmentation
    assert not torch.equal(a["x"], plain["x"])
    assert torch.equal(a["y"], plain["y"]) and torch.equal(a["lengths"], plain["lengths"])
    assert (a["x"][~a["mask"]] == 0).all()  # padded steps stay blank
    assert not torch.equal(ds.batch([0, 5, 29, 17])["x"][1], a["x"][0])  # another batch, another draw


def test_random_affine_is_the_identity_at_zero_and_turns_a_bar_by_the_angle():
    images = np.random.default_rng(1).random((5, 12, 12), dtype=np.float32)
    same = random_affine(images, np.random.default_rng(0), rotate=0.0, zoom=0.0)
    np.testing.assert_allclose(same, images, atol=1e-6)
    bar = np.zeros((1, 21, 21), dtype=np.float32)
    bar[0, 10, 3:18] = 1.0  # a horizontal bar through the centre
    turned = random_affine(np.repeat(bar, 50, axis=0), np.random.default_rng(2), rotate=30.0, zoom=0.0)
    for img in turned:  # the ink's principal axis: a line at most 30 degrees from horizontal
        rows, cols = np.nonzero(img > 0.3)
        angle = np.degrees(np.arctan2(*np.polyfit(cols - 10.0, rows - 10.0, 1)[:1], 1.0))
        assert abs(angle) <= 31.0
    assert np.ptp([np.polyfit(*np.nonzero(img > 0.3)[::-1], 1)[0] for img in turned]) > 0.3  # angles differ


def test_elastic_warp_moves_pixels_by_at_most_its_bound_and_leaves_the_affine_draws_alone():
    dot = np.zeros((40, 28, 28), dtype=np.float32)
    dot[:, 14, 14] = 1.0  # one lit pixel: where it lands is the displacement at the centre
    bent = random_affine(dot, np.random.default_rng(3), rotate=0.0, zoom=0.0, elastic=2.0)
    ys, xs = np.indices((28, 28))
    mass = bent.sum(axis=(1, 2))
    cy, cx = (bent * ys).sum(axis=(1, 2)) / mass, (bent * xs).sum(axis=(1, 2)) / mass
    moved = np.hypot(cy - 14, cx - 14)
    assert moved.max() <= 2.0 * np.sqrt(2) + 0.5 and moved.mean() > 0.3  # bounded, but it does move
    plain = np.random.default_rng(4).random((6, 28, 28), dtype=np.float32)
    without = random_affine(plain, np.random.default_rng(5), rotate=10.0, zoom=0.1)
    np.testing.assert_array_equal(random_affine(plain, np.random.default_rng(5), rotate=10.0, zoom=0.1, elastic=0.0),
                                  without)  # elastic=0 draws nothing more: earlier runs replay exactly
    ds = DigitSequences.from_split(TRAIN, op="sum", max_len=4, num_sequences=30, seed=8)
    ds.elastic = 1.5
    a, b = ds.batch([5, 0, 29]), ds.batch([5, 0, 29])
    assert torch.equal(a["x"], b["x"]) and (a["x"][~a["mask"]] == 0).all()


def test_affine_training_batches_are_a_function_of_the_batch():
    ds = DigitSequences.from_split(TRAIN, op="sum", max_len=4, num_sequences=30, seed=8)
    ids = [5, 0, 29, 17]
    plain = ds.batch(ids)
    ds.rotate, ds.zoom = 10.0, 0.1
    a, b = ds.batch(ids), ds.batch(ids)
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], plain["x"])
    assert torch.equal(a["y"], plain["y"]) and (a["x"][~a["mask"]] == 0).all()


def test_targets_depend_on_labels_not_pixels():
    noisy = MnistSplit(np.random.default_rng(9).integers(0, 256, size=TRAIN.images.shape, dtype=np.uint8),
                       TRAIN.labels, "noise", 255)
    a = collate_sequences([*DigitSequences.from_split(TRAIN, op="running-sum", num_sequences=16, seed=4)])
    b = collate_sequences([*DigitSequences.from_split(noisy, op="running-sum", num_sequences=16, seed=4)])
    assert not torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and torch.equal(a["mask"], b["mask"])


def test_train_and_evaluation_digits_never_mix():
    train, val, test, meta = make_digit_sequences(TRAIN, TEST, num_train=300, num_val=100, num_test=100, seed=7)
    val_pool, test_pool = val_test_pools(len(TEST))
    assert not set(val_pool) & set(test_pool) and len(val_pool) + len(test_pool) == len(TEST)
    assert set(np.unique(val.indices[val.indices >= 0])) <= set(val_pool)
    assert set(np.unique(test.indices[test.indices >= 0])) <= set(test_pool)
    for ds, tag in ((train, 11), (val, 22), (test, 22)):  # pixel (0, 0) says which split a digit came from
        batch = collate_sequences([ds[i] for i in range(len(ds))])
        corner = batch["x"][..., 0, 0, 0][batch["mask"]]  # (B, T) valid steps -> (steps,)
        assert torch.allclose(corner, torch.tensor(tag / 255))
    assert meta["input_shape"] == [None, 1, 6, 6] and meta["num_target_classes"] == 37
    assert meta["sizes"] == {"train": 300, "val": 100, "test": 100}


def test_deterministic_from_the_seed():
    a = DigitSequences.from_split(TRAIN, op="sum", num_sequences=50, seed=1)
    b = DigitSequences.from_split(TRAIN, op="sum", num_sequences=50, seed=1)
    longer = DigitSequences.from_split(TRAIN, op="sum", num_sequences=80, seed=1)
    other = DigitSequences.from_split(TRAIN, op="sum", num_sequences=50, seed=2)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.targets, b.targets)
    assert np.array_equal(longer.indices[:50], a.indices) and np.array_equal(longer.lengths[:50], a.lengths)
    assert not np.array_equal(other.indices, a.indices)
    assert torch.equal(a[17].x, b[17].x) and a[-1].id == 49
    with pytest.raises(IndexError):
        a[50]


def test_lengths_cover_the_range_about_uniformly():
    ds = DigitSequences.from_split(TRAIN, min_len=2, max_len=6, num_sequences=5000, seed=0)
    counts = np.bincount(ds.lengths, minlength=7)
    assert counts[:2].sum() == 0 and (counts[2:] > 900).all() and (counts[2:] < 1100).all()


def test_length_eval_sets_have_one_length_each_from_the_test_half():
    sets = make_length_eval_sets(TEST, 3, op="product", num_per_length=20)
    assert sorted(sets) == [1, 2, 3, 4, 5, 6]
    test_pool = set(val_test_pools(len(TEST))[1])
    for length, ds in sets.items():
        assert (ds.lengths == length).all() and len(ds) == 20
        assert set(np.unique(ds.indices)) <= test_pool
        item = ds[0]
        assert item.y.item() == math.prod(item.digits.tolist())


def test_works_with_indexed_batches_sorted_by_length():
    ds = DigitSequences.from_split(TRAIN, num_sequences=40, seed=0)
    source = IndexedBatches(ds, 8, collate_sequences, seed=0, sort_key=lambda i: int(ds.lengths[i]))
    seen = sorted(i for batch in source.batches(0) for i in batch["ids"].tolist())
    assert seen == list(range(40))


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="min_len=3, max_len=2"):
        DigitSequences(TRAIN.images, TRAIN.labels, min_len=3, max_len=2)
    with pytest.raises(DataError, match="expected a non-empty pool of indices in 0..59"):
        DigitSequences(TRAIN.images, TRAIN.labels, pool=[60])
    with pytest.raises(DataError, match="one image shape"):
        collate_sequences([DigitSequences.from_split(s, num_sequences=1)[0] for s in (TRAIN, tagged_split(5, 1, 0, size=8))])


def test_sklearn_fallback_gives_8x8_sequences(tmp_path, caplog, monkeypatch):
    import convrnn.data.mnist
    monkeypatch.setattr(convrnn.data.mnist, "DEFAULT_DIR", tmp_path)  # no MNIST where it is looked for by default
    monkeypatch.delenv("CONVRNN_MNIST_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="convrnn.data.mnist"):
        train_split, test_split = load_mnist(None, "train"), load_mnist(None, "test")
    assert any("scikit-learn" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    train, val, test, meta = make_digit_sequences(train_split, test_split, num_train=50, num_val=10, num_test=10)
    batch = collate_sequences([train[i] for i in range(len(train))])
    assert batch["x"].shape[2:] == (1, 8, 8) and meta["input_shape"] == [None, 1, 8, 8]
    assert batch["x"].max() == 1.0  # divided by 16, not 255
    assert meta["source"] == FALLBACK_SOURCE


def test_products_stop_where_a_64_bit_target_would_wrap_around():
    nines = np.full((1, 19), 9)
    assert int(sequence_targets(nines, np.array([19]), "product")[0]) == 9 ** 19
    with pytest.raises(ConfigError, match="expected products of at most 19 digits"):
        sequence_targets(np.full((1, 20), 9), np.array([20]), "product")
    assert int(sequence_targets(np.full((1, 40), 9), np.array([40]), "sum")[0]) == 360
    from convrnn.fields import check
    from convrnn.recipes.digits import DigitsDataConfig
    check(DigitsDataConfig(op="product", max_len=9), "data")
    check(DigitsDataConfig(op="product", max_len=19, num_test=0), "data")  # no test sequences of 2N digits
    # ...and the data builds: no test split of 2N digits is drawn when none is asked for
    from convrnn.recipes import get_recipe
    from convrnn.train.config import TrainConfig
    bundle = get_recipe("digits").make_data(DigitsDataConfig(op="product", max_len=12, num_test=0, num_train=8,
                                                             num_val=4, data_dir="sklearn"), TrainConfig(batch_size=4))
    assert bundle.test is None and bundle.meta["test_max_len"] == 12
    check(DigitsDataConfig(op="sum", max_len=50), "data")
    with pytest.raises(ConfigError, match="data.max_len: expected at most 9 for products"):
        check(DigitsDataConfig(op="product", max_len=10), "data")
