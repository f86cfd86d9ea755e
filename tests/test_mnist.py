"""IDX reading and validation, load_mnist's directory resolution, the sklearn fallback, as_float."""
from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from convrnn.data.mnist import FALLBACK_SOURCE, as_float, load_mnist, load_sklearn_digits, read_idx
from convrnn.errors import DataError

from conftest import SHARED_DATA
from helpers import idx_bytes, run_cli, write_idx

SHARED = SHARED_DATA / "mnist"

def fake_split(n: int, seed: int = 0, size: int = 28):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.uint8)


def write_mnist_dir(directory: Path, n_train=12, n_test=7, gz=True) -> Path:
    ext = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fake_split(n, seed=n)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return directory


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trips_every_type(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == "uint8":
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5) * 8
    path = write_idx(tmp_path / "f.idx", array, gz=gz)  # gzip told by magic bytes, not by name
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_raw_file_named_gz_is_read_as_raw(tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels.gz", labels, gz=False)), labels)


def error_of(path) -> str:
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")  # the path as given: every folder has these names
    return message


def test_truncated_payload_names_expected_and_found_bytes(tmp_path):
    images, _ = fake_split(10)
    data = idx_bytes(images)[: 16 + 1200]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    assert error_of(tmp_path / "t10k-images-idx3-ubyte.gz") == (
        f"{tmp_path / 't10k-images-idx3-ubyte.gz'}: expected 7840 bytes of pixel data after the header (dims 10x28x28), found 1200")


def test_extra_bytes_are_an_error_too(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)) + b"\0")
    assert "expected 5 bytes of label data after the header (dims 5), found 6" in error_of(tmp_path / "labels")


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(fake_split(10)[0]))
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    assert "cut off" in error_of(tmp_path / "x.gz")


def test_corrupt_gzip_stream(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(fake_split(10)[0])))
    blob[20:40] = b"\xff" * 20
    (tmp_path / "x.gz").write_bytes(bytes(blob))
    assert "corrupt" in error_of(tmp_path / "x.gz")


@pytest.mark.parametrize("head, found", [(b"\x01\x00\x08\x01", "0x01000801"), (b"\x00\x00\x07\x01", "0x00000701"),
                                         (b"\x00\x00\x08\x00", "0x00000800")])
def test_wrong_magic(tmp_path, head, found):
    (tmp_path / "bad").write_bytes(head + b"\0" * 8)
    message = error_of(tmp_path / "bad")
    assert "expected IDX magic" in message and message.endswith(f"found {found}")


def test_short_header(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + b"\0" * 5)
    assert "expected a 16-byte header for 3 dimensions, found only 9 bytes" in error_of(tmp_path / "bad")


def test_official_looking_file_must_match_the_published_md5(tmp_path):
    labels = np.zeros(10000, dtype=np.uint8)  # counted like t10k, but not the real labels
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    message = error_of(tmp_path / "t10k-labels-idx1-ubyte.gz")
    assert "expected MD5 ec29112dd5afa0611ce80d1b7f02629c" in message
    # the same bytes under another name, or the official name with a subset's count, are fine
    write_idx(tmp_path / "my-labels.gz", labels)
    assert read_idx(tmp_path / "my-labels.gz").shape == (10000,)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(19690, dtype=np.uint8))  # the shared subset's count
    assert len(read_idx(tmp_path / "train-labels-idx1-ubyte.gz")) == 19690
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", verify=False).shape == (10000,)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_a_directory(tmp_path, gz):
    write_mnist_dir(tmp_path, gz=gz)
    train, test = load_mnist(tmp_path, "train"), load_mnist(str(tmp_path), split="test")
    images, labels = fake_split(12, seed=12)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.labels.dtype == np.int64 and train.images.dtype == np.uint8
    assert len(test) == 7 and test.images.shape == (7, 28, 28) and train.max_value == 255
    assert train.source.startswith("mnist")


def test_data_dir_from_env_var_then_home_cache(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path / "env")
    monkeypatch.setenv("CONVRNN_MNIST_DIR", str(tmp_path / "env"))
    assert len(load_mnist(split="test")) == 7
    monkeypatch.delenv("CONVRNN_MNIST_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home/.cache/convrnn/mnist"
    write_mnist_dir(cache, n_test=3)
    assert len(load_mnist(split="test")) == 3


def test_a_folder_given_without_mnist_is_an_error_never_the_fallback(tmp_path, monkeypatch):
    from convrnn.data.mnist import mnist_source
    with pytest.raises(DataError, match=f"--data-dir={tmp_path / 'nope'}: no such folder .*convrnn data download mnist"):
        mnist_source(str(tmp_path / "nope"), what="--data-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no MNIST IDX files in this folder"):
        load_mnist(tmp_path / "empty", "train")
    monkeypatch.setenv("CONVRNN_MNIST_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"\$CONVRNN_MNIST_DIR=.*gone: no such folder"):
        load_mnist(None, "train")
    write_mnist_dir(tmp_path / "mnist")
    assert mnist_source(str(tmp_path / "mnist")) == str((tmp_path / "mnist").resolve())
    assert mnist_source("sklearn") == "sklearn"


def test_mismatched_counts_and_missing_files_are_errors(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: expected 7 labels .* found 6"):
        load_mnist(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="expected t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(7, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="expected digit labels 0..9, found 10..10"):
        load_mnist(tmp_path, "test")
    with pytest.raises(DataError, match="expected split 'train' or 'test', got 'val'"):
        load_mnist(tmp_path, "val")


def test_empty_default_directory_falls_back_to_sklearn_digits_with_a_warning(tmp_path, caplog, monkeypatch):
    import convrnn.data.mnist
    monkeypatch.setattr(convrnn.data.mnist, "DEFAULT_DIR", tmp_path / "default")
    monkeypatch.delenv("CONVRNN_MNIST_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="convrnn.data.mnist"):
        train = load_mnist(None, "train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "scikit-learn" in warnings[0] and "convrnn data download mnist" in warnings[0]
    test = load_mnist("sklearn", "test")  # named: no warning
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert train.source == test.source == FALLBACK_SOURCE
    assert train.images.shape[1:] == (8, 8) and len(train) + len(test) == 1797
    assert train.max_value == 16 and train.images.max() == 16 and train.images.dtype == np.uint8


def test_fallback_halves_are_a_deterministic_partition():
    from sklearn.datasets import load_digits

    train, test = load_sklearn_digits("train"), load_sklearn_digits("test")
    again = load_sklearn_digits("train")
    np.testing.assert_array_equal(train.images, again.images)
    digits = load_digits()

    def rows(images, labels):  # multiset of (image, label) rows
        return sorted(im.astype(np.uint8).tobytes() + bytes([lab]) for im, lab in zip(images, labels))

    together = rows(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]))
    assert together == rows(digits.images, digits.target)
    assert abs(len(train) - len(test)) <= 1
    assert set(np.unique(test.labels)) == set(range(10))


def test_as_float_scales_by_the_source_maximum():
    images = np.array([[[0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(as_float(images), [[[0, 128 / 255, 1]]], rtol=1e-6)
    assert as_float(images).dtype == np.float32
    small = load_sklearn_digits("test")
    out = as_float(small)
    assert out.dtype == np.float32 and out.max() == 1.0 and out.min() == 0.0
    np.testing.assert_allclose(out, small.images / 16, rtol=1e-6)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared MNIST subset not present")
def test_shared_subset_and_official_test_set():
    train, test = load_mnist(SHARED, "train"), load_mnist(SHARED, "test")  # t10k passes the MD5 check
    assert train.images.shape == (19690, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_of_two_sizes_or_too_few_test_digits_are_refused_naming_the_folder(tmp_path):
    from convrnn.data.mnist import load_mnist_splits
    write_mnist_dir(tmp_path)
    images, labels = fake_split(7, size=32)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="expected train and test digits of one size, found 28x28 train digits and "
                                        "32x32 test digits") as err:
        load_mnist_splits(tmp_path)
    assert str(tmp_path.resolve()) in str(err.value)
    images, labels = fake_split(1)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"expected at least 2 test digits \(half validate, half test\), found 1"):
        load_mnist_splits(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: expected digits for the test split, found a "
                                        "file of 0 items"):
        load_mnist(tmp_path, "test")


def test_labels_that_are_not_integers_are_refused(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0.5, 1, 2, 3, 4, 5, 6.9], dtype=np.float32))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: expected integer labels \\(N,\\), found float32"):
        load_mnist(tmp_path, "test")


def test_files_unpacked_into_folders_of_their_own_names_are_found(tmp_path):
    flat = write_mnist_dir(tmp_path / "flat", gz=False)
    nested = tmp_path / "nested"
    for f in flat.iterdir():
        (nested / f.name).mkdir(parents=True)
        (nested / f.name / f.name).write_bytes(f.read_bytes())
    np.testing.assert_array_equal(load_mnist(nested, "train").images, load_mnist(flat, "train").images)


def test_a_data_dir_that_is_a_file_or_a_folder_of_images_says_so(tmp_path):
    from convrnn.data.mnist import mnist_source
    write_mnist_dir(tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: a file, not a folder; give the folder that "
                                        rf"holds the MNIST files \({tmp_path}\)$"):
        mnist_source(str(tmp_path / "train-images-idx3-ubyte.gz"), what="--data-dir")
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "7.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"pngs: no MNIST IDX files in this folder \(.*\); image files such as "
                                        r"7.png are not read: the digits come from IDX files$"):
        mnist_source(str(tmp_path / "pngs"), what="--data-dir")


def test_dark_digits_on_light_paper_are_inverted_as_predict_reads_images(tmp_path, caplog):
    write_mnist_dir(tmp_path)
    images = np.full((7, 28, 28), 250, dtype=np.uint8)  # dark strokes on white, as a scanner gives them
    images[:, 5:23, 12:16] = 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    with caplog.at_level(logging.WARNING, logger="convrnn.data.mnist"):
        test = load_mnist(tmp_path, "test")
    assert test.images[0, 0, 0] == 5 and test.images[0, 10, 13] == 245
    assert f"{tmp_path / 't10k-images-idx3-ubyte.gz'}: its digits are dark on a light background; inverted" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="convrnn.data.mnist"):
        train = load_mnist(tmp_path, "train")  # random pixels: median about 128, no light background
    np.testing.assert_array_equal(train.images, fake_split(12, seed=12)[0])


def test_errors_in_a_folder_name_the_file_with_its_folder(tmp_path):
    """Every MNIST folder has files of these names: a message names the one at fault by its path."""
    folder = write_mnist_dir(tmp_path / "own_badlabel")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(7, 10, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        load_mnist(folder, "test")
    assert str(info.value) == f"{folder / 't10k-labels-idx1-ubyte.gz'}: expected digit labels 0..9, found 10..10"
    blob = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=f"^{re.escape(str(folder / 'train-images-idx3-ubyte.gz'))}: expected a "
                                        f"complete gzip stream"):
        load_mnist(folder, "train")


def test_the_cli_names_the_bad_file_with_the_folder_given(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist_dir(tmp_path / "own_badlabel")
    write_idx(tmp_path / "own_badlabel" / "train-labels-idx1-ubyte.gz", np.full(12, 10, dtype=np.uint8))
    code, out, err = run_cli(capsys, "train", "digits", "--data-dir", "own_badlabel", "--threads", "1",
                             "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: {tmp_path / 'own_badlabel' / 'train-labels-idx1-ubyte.gz'}: "
                                            f"expected digit labels 0..9, found 10..10")
