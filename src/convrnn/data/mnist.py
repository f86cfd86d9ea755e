"""MNIST from IDX files, with scikit-learn's bundled 8x8 digits as the offline fallback.

``load_mnist(data_dir, split)`` reads the four standard files (gzipped or raw) from ``data_dir``,
``$CONVRNN_MNIST_DIR`` or ``~/.cache/convrnn/mnist``. A folder given that holds no MNIST is an error;
when the default folder holds none it logs a warning and returns a deterministic half of
``sklearn.datasets.load_digits`` instead, so every recipe runs on a fresh machine without a network.
``mnist_source`` pins that choice for a run's config. Nothing here downloads (``convrnn.data.download``).

Shape:
    images: ``(N, H, W)`` uint8, 28x28 for MNIST (0..255), 8x8 for the fallback (0..16)
    labels: ``(N,)`` int64 digit classes 0..9
    as_float(images): same shape, float32 in 0..1
"""
# N digits, H height, W width
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convrnn.errors import DataError
from convrnn.wording import plural

logger = logging.getLogger(__name__)

ENV_VAR = "CONVRNN_MNIST_DIR"
DEFAULT_DIR = Path("~/.cache/convrnn/mnist")
# the source of scikit-learn's digits, named or used as the fallback (the fallback says so in its own warning)
FALLBACK_SOURCE = "sklearn-digits (8x8, bundled with scikit-learn)"
SKLEARN = "sklearn"  # the data_dir value that names scikit-learn's bundled digits

# The published files: name -> (MD5 of the .gz file, number of items in its header).
OFFICIAL_FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 60000),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 60000),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 10000),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 10000),
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
LIGHT_BACKGROUND = 192  # a median pixel this light: dark digits on light paper, the inverse of MNIST's
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class MnistSplit:
    """One split of digits: ``images`` (N, H, W) uint8, ``labels`` (N,) int64, where they came from.

    ``max_value`` is the brightest pixel value of the source (255 for MNIST, 16 for the fallback);
    ``as_float`` divides by it.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    max_value: int = 255

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The decompressed content of ``path`` and whether it was gzipped (told by magic bytes, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it: {e.strerror or e}") from e
    if not raw.startswith(_GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except EOFError as e:
        raise DataError(f"{path}: expected a complete gzip stream, found one cut off after "
                        f"{len(raw)} compressed bytes (truncated download?)") from e
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: expected valid gzip data, found a corrupt stream ({e})") from e


def _check_official(path: Path, kind: str, count: int) -> None:
    """A file named and sized like a published one must carry the published checksum.

    The shared subsets (headers rewritten to 19,690 items) are not official-looking and pass.
    """
    name = path.name if path.name.endswith(".gz") else path.name + ".gz"
    official = OFFICIAL_FILES.get(name)
    if official is None or count != official[1]:
        return
    expected = official[0]
    actual = md5_file(path)
    if actual != expected:
        raise DataError(f"{path}: header says {count} {kind} like the official file, so expected "
                        f"MD5 {expected}, found {actual} (corrupt or modified; delete it and download again)")


def read_idx(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-endian array of the dims its header gives.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then one big-endian uint32 per dimension. The payload
    must have exactly ``prod(dims)`` items. With ``verify``, a gzipped file named and counted like an
    official MNIST file must match the published MD5. Any violation raises ``DataError`` naming the
    file by its path as given, folder included: every MNIST folder holds files of the same names.
    """
    path = Path(path)
    data, gzipped = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: expected a 4-byte IDX magic number, found a file of {len(data)} bytes")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DataError(f"{path}: expected IDX magic 0x0000TTNN (TT a type in "
                        f"{sorted(hex(t) for t in _IDX_DTYPES)}, NN >= 1 dims), found 0x{data[:4].hex()}")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: expected a {header_size}-byte header for {ndim} dimensions, "
                        f"found only {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    kind = "images" if ndim == 3 else "labels" if ndim == 1 else "items"
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        what = "pixel data" if kind == "images" else "label data" if kind == "labels" else "data"
        raise DataError(f"{path}: expected {expected} bytes of {what} after the header "
                        f"(dims {'x'.join(map(str, dims))}), found {found}")
    if verify and gzipped:
        _check_official(path, kind, dims[0])
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)  # (prod(dims),) -> dims
    return array.astype(dtype.newbyteorder("="), copy=True)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$CONVRNN_MNIST_DIR``, else ``~/.cache/convrnn/mnist``."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(data_dir).expanduser()


def _candidates(prefix: str, kind: str) -> list[str]:
    """Accepted names for one file: the standard one, with or without .gz, and the dotted variant."""
    rank = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    return [s + ext for s in stems for ext in (".gz", "")]


def _find(directory: Path, prefix: str, kind: str) -> Path | None:
    """The file of one split and kind in ``directory``; also inside a folder of its own name, as some
    archives unpack (``train-images-idx3-ubyte/train-images-idx3-ubyte``)."""
    for name in _candidates(prefix, kind):
        for path in (directory / name, directory / name / name):
            if path.is_file():
                return path
    return None


def _any_mnist_file(directory: Path) -> bool:
    return any(_find(directory, p, k) for p in SPLIT_PREFIX.values() for k in ("images", "labels"))


def mnist_source(data_dir: str | os.PathLike | None = None, *, what: str = "data_dir") -> str:
    """Where a run reads its digits from, as config.json records it: the absolute path of an MNIST
    folder, or ``"sklearn"`` for scikit-learn's bundled 8x8 digits.

    ``data_dir`` given (or ``$CONVRNN_MNIST_DIR`` set): that folder, which must hold MNIST files, else
    a DataError naming it (``what`` names the option). ``"sklearn"``: the bundled digits. Empty: the
    default folder ``~/.cache/convrnn/mnist`` when it holds MNIST, else the bundled digits with one
    WARNING saying how to get MNIST.
    """
    if str(data_dir or "") == SKLEARN:
        return SKLEARN
    explicit = data_dir or os.environ.get(ENV_VAR)
    directory = resolve_data_dir(explicit or None)
    if directory.is_dir() and _any_mnist_file(directory):
        return str(directory.resolve())
    if explicit:
        where = f"{what}={data_dir}" if data_dir else f"${ENV_VAR}={explicit}"
        problem = ("no such folder" if not directory.exists() else "a file, not a folder" if not directory.is_dir()
                   else "no MNIST IDX files in this folder")
        images = [f.name for f in directory.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES] \
            if directory.is_dir() else []
        if directory.is_file():  # one of the files, say: the option takes the folder that holds them
            raise DataError(f"{where}: a file, not a folder; give the folder that holds the MNIST files"
                            + (f" ({directory.parent})" if _any_mnist_file(directory.parent) else ""))
        raise DataError(f"{where}: {problem} (expected train-images-idx3-ubyte.gz and the three other MNIST "
                        f"files; `convrnn data download mnist --to {directory}` fetches them)"
                        + (f"; image files such as {min(images)} are not read: the digits come from IDX files"
                           if images else ""))
    logger.warning("no MNIST files in %s: using scikit-learn's bundled 8x8 digits instead; "
                   "`convrnn data download mnist` fetches MNIST there (or give its folder)", directory)
    return SKLEARN


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "train") -> MnistSplit:
    """The ``"train"`` or ``"test"`` split of MNIST from IDX files, or scikit-learn's digits.

    ``data_dir`` as :func:`mnist_source` takes it: ``"sklearn"`` for the bundled 8x8 digits, a folder
    that must hold MNIST files, or empty for the default folder with the bundled digits as the
    fallback. A folder with some MNIST files but not the ones this split needs is an error.
    """
    if split not in SPLIT_PREFIX:
        raise DataError(f"expected split 'train' or 'test', got {split!r}")
    source = mnist_source(data_dir)
    if source == SKLEARN:
        return load_sklearn_digits(split)
    directory = Path(source)
    prefix = SPLIT_PREFIX[split]
    paths = {kind: _find(directory, prefix, kind) for kind in ("images", "labels")}
    missing = [_candidates(prefix, kind)[0] for kind, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory}: expected {' and '.join(missing)} (or without .gz) for the {split} "
                        f"split, found other MNIST files but not these")
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths['images']}: expected uint8 images (N, H, W), "
                        f"found {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{paths['labels']}: expected integer labels (N,), found {labels.dtype} of shape "
                        f"{labels.shape}")
    if len(labels) == 0:
        raise DataError(f"{paths['labels']}: expected digits for the {split} split, found a file of 0 items")
    if len(images) != len(labels):
        raise DataError(f"{paths['labels']}: expected {plural(len(images), 'label')} to match "
                        f"{paths['images'].name}, found {len(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{paths['labels']}: expected digit labels 0..9, found {labels.min()}..{labels.max()}")
    if float(np.median(images[:1000])) >= LIGHT_BACKGROUND:
        # predict reads every image as light ink on dark (inverting scans), so the digits learnt must be so too
        images = 255 - images
        logger.warning("%s: its digits are dark on a light background; inverted to MNIST's light ink on dark, as "
                       "predict reads every image", paths["images"])
    logger.info("MNIST %s: %d digits of %dx%d from %s", split, len(labels), *images.shape[1:], directory)
    return MnistSplit(images, labels.astype(np.int64), f"mnist ({directory})", 255)


def load_mnist_splits(data_dir: str | os.PathLike | None = None) -> tuple[MnistSplit, MnistSplit]:
    """The train and test splits from ``data_dir`` (as :func:`load_mnist` takes it): digits of one size,
    and at least two test digits (the recipes validate on one half of them and test on the other)."""
    train, test = load_mnist(data_dir or None, "train"), load_mnist(data_dir or None, "test")
    if train.image_shape != test.image_shape:
        raise DataError(f"{train.source}: expected train and test digits of one size, found "
                        f"{'x'.join(map(str, train.image_shape))} train digits and "
                        f"{'x'.join(map(str, test.image_shape))} test digits")
    if len(test) < 2:
        raise DataError(f"{test.source}: expected at least 2 test digits (half validate, half test), found {len(test)}")
    return train, test


def load_sklearn_digits(split: str = "train") -> MnistSplit:
    """A deterministic half of scikit-learn's 1,797 bundled 8x8 digits (values 0..16).

    A fixed permutation (seed 0) is cut in two: the first 899 train, the other 898 test; no overlap.
    """
    if split not in SPLIT_PREFIX:
        raise DataError(f"expected split 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    half = (len(order) + 1) // 2
    keep = order[:half] if split == "train" else order[half:]
    keep = np.sort(keep)
    images = digits.images[keep].astype(np.uint8)  # (N, 8, 8), values 0..16
    return MnistSplit(images, digits.target[keep].astype(np.int64), FALLBACK_SOURCE, 16)


def as_float(images: np.ndarray | MnistSplit, max_value: int | None = None) -> np.ndarray:
    """Pixels as float32 in 0..1: divided by ``max_value`` (the split's own, else 255 for MNIST).

    Pass ``max_value=16`` (or the ``MnistSplit`` itself) for the scikit-learn fallback digits.
    """
    if isinstance(images, MnistSplit):
        max_value = images.max_value if max_value is None else max_value
        images = images.images
    scale = np.float32(255 if max_value is None else max_value)
    return np.asarray(images, dtype=np.float32) / scale
