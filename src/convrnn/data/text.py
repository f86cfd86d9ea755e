"""Character and byte corpora for language models, and the two ways to batch them.

- :func:`read_corpus` reads a file or a folder of files as ``str`` (``unit="char"``, UTF-8) or
  ``bytes`` (``unit="byte"``, any file); :func:`decode_utf8` is how every text file is decoded.
- :class:`Vocab` maps symbols to ids: 256 fixed bytes, or the sorted characters of the training text.
- :func:`split_corpus` keeps the first 90% for training and the last 10% for validation
  (the char-rnn / nanoGPT convention on Tiny Shakespeare).
- :class:`StreamBatches` cuts the corpus into ``B`` contiguous stripes and walks them ``T`` steps at a
  time, so a stateful model can carry its hidden state from one batch to the next (truncated BPTT).
- :class:`RandomWindows` draws independent random windows (no carried state).

Shape:
    ids: ``(N,)`` int64, N tokens of the corpus.
    batch ``x``, ``y``: ``(B, T)`` int64; ``y[:, t]`` is the token after ``x[:, t]``.
    B batch (parallel streams), T time steps (``seq_len``), V vocabulary size.
"""
# B batch, T time steps, V vocabulary
from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
import torch

from convrnn.data.batching import BatchSource
from convrnn.errors import DataError
from convrnn.files import is_run_folder

log = logging.getLogger(__name__)

Text = Union[str, bytes]
UNITS = ("char", "byte")
UNKNOWN_MODES = ("skip", "reserve")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise DataError(f"unit must be one of {UNITS}, got {unit!r}")


def _corpus_files(path: Path) -> list[Path]:
    """The file itself, or every non-hidden file under the folder, sorted by relative path; a run
    directory below it (config.json beside checkpoints/, as training with ``--data .`` leaves in
    ``runs/``) is passed over: its checkpoints and logs are no text of the user's."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        pattern = any(c in path.name for c in "*?[")
        raise DataError(f"corpus {str(path)!r} does not exist" + (
            " (a pattern is not expanded here: give the folder, whose files are all read)" if pattern else ""))
    files = []
    runs = []
    for root, dirs, names in os.walk(path):
        if Path(root) != path and is_run_folder(Path(root)):  # a run, an unfinished ensemble, or one in progress
            runs.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root) / n for n in names if not n.startswith(".")]
    if runs:
        log.info("%s: passed over %d convrnn run folder%s in it (%s)", path, len(runs), "s" if len(runs) > 1 else "",
                 ", ".join(str(r.relative_to(path)) for r in runs[:3]) + (", ..." if len(runs) > 3 else ""))
    if not files:
        raise DataError(f"corpus {str(path)!r}: no text files in this folder" + (" (only run folders)" if runs else ""))
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


BYTE_ADVICE = "; use --unit byte (unit='byte') to model raw bytes"


def read_corpus(path: str | os.PathLike, unit: str = "char", *, advice: str = BYTE_ADVICE) -> Text:
    """Read a text corpus: one file, or every file of a folder (recursively, sorted by relative path).

    Files of a folder are joined so that each starts on a new line: a ``"\\n"`` is inserted after a
    file that does not already end with one (in both units). ``unit="byte"`` returns ``bytes`` and
    accepts any file; ``unit="char"`` returns ``str`` decoded as UTF-8 without the byte-order mark a
    file may start with, and raises :class:`DataError` naming the file when it is UTF-16 or UTF-32
    text or not UTF-8 (:func:`decode_utf8`). Line ends are kept as they are (``"\\r\\n"`` too): a
    model of the text learns them. An empty corpus, or one of only whitespace, is a :class:`DataError`.
    """
    _check_unit(unit)
    root = Path(path)
    newline = "\n" if unit == "char" else b"\n"
    parts: list[Text] = []
    for file in _corpus_files(root):
        data = file.read_bytes()
        if unit == "char":
            # checked, and its byte-order mark dropped: a mark is no character of the text
            data = decode_utf8(data, repr(str(file)), advice=advice)
        if parts and not parts[-1].endswith(newline):
            parts.append(newline)
        parts.append(data)
    raw = newline[:0].join(parts)
    if not raw:
        raise DataError(f"corpus {str(root)!r} is empty: expected at least one byte of text")
    spaces = " \t\n\r\x0b\x0c"  # ASCII whitespace, in either unit
    if not raw.strip(spaces if unit == "char" else spaces.encode()):
        size = len(raw) if unit == "byte" else len(raw.encode("utf-8"))
        raise DataError(f"corpus {str(root)!r} holds only whitespace ({size:,} bytes): expected text to model")
    return raw


# Byte-order marks of the encodings that are not UTF-8 but hold text (UTF-32's first: it starts like UTF-16's).
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
              (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))


def decode_utf8(data: bytes, name: str, *, advice: str = "") -> str:
    """The text of the UTF-8 bytes ``data`` of the file ``name``, without a leading byte-order mark.

    A DataError naming the file when they are UTF-16 or UTF-32 text (told by a byte-order mark, or by
    NUL bytes, which text has none of but UTF-16 has in every other byte of ASCII), or when they are
    not UTF-8 (the offset of the first bad byte), with the command that converts them; ``advice`` ends
    the message of NUL bytes and of bad bytes.
    """
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            raise DataError(f"expected UTF-8 text, got {encoding} text (its byte-order mark) in {name}; convert it "
                            f"to UTF-8, for example with iconv -f {encoding} -t UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"expected UTF-8 text, got a NUL byte at byte offset {nul} of {name} (UTF-16 or UTF-32 "
                        f"text, or not text); convert text to UTF-8, for example with iconv -f UTF-16 -t UTF-8"
                        + advice)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"expected UTF-8 text, got byte 0x{data[err.start]:02x} at byte offset {err.start} of "
                        f"{name} ({err.reason}); text in another encoding converts with iconv, for example "
                        f"iconv -f LATIN1 -t UTF-8" + advice) from None
    return text[1:] if text.startswith("\ufeff") else text


def right_to_left(text: str) -> bool:
    """Whether ``text`` holds a character of a right-to-left script (Unicode bidi class R or AL)."""
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


# Bidirectional text. Transcriptions store right-to-left scripts (Hebrew, Arabic, Syriac...) in logical
# order, first letter first, while a line image is read left to right; CTC aligns labels in the image's
# order, so a model learns a line's text in display order (as it is seen from the left) and its readings
# are put back in logical order. Both ways use the Unicode Bidirectional Algorithm (UAX #9, python-bidi)
# with one paragraph direction for every line of a run ("L" or "R", see base_direction): a reading in
# display order does not tell which direction its line was written in.
_REORDERED = ("R", "AL", "AN")  # bidi classes that make the algorithm move characters


def _reordered(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in _REORDERED for ch in text)


def first_strong(text: str) -> str:
    """``"R"`` when the first letter of ``text`` with a direction (Unicode bidi class L, R or AL) is of a
    right-to-left script, ``"L"`` when it is of a left-to-right one, ``""`` when it has none (rules P2
    and P3 of the Unicode Bidirectional Algorithm, without embeddings)."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind == "L":
            return "L"
        if kind in ("R", "AL"):
            return "R"
    return ""


def base_direction(texts: Iterable[str]) -> str:
    """The paragraph direction of most of ``texts`` by :func:`first_strong` (``"R"`` or ``"L"``; ties
    and texts without letters: ``"L"``)."""
    votes = Counter(first_strong(t) for t in texts)
    return "R" if votes["R"] > votes["L"] else "L"


def display_order(text: str, base: str) -> str:
    """``text`` (logical order) in the order its characters appear from left to right on a line of
    paragraph direction ``base`` (``"L"`` or ``"R"``): runs of right-to-left letters reversed, numbers
    and left-to-right words inside them kept in their own order. Characters are not mirrored: a
    bracket keeps its code point wherever it stands. Text without right-to-left characters comes back
    unchanged."""
    if not _reordered(text):
        return text
    from bidi import get_display

    return _marks_after_letters(get_display(text, base_dir=base))


def _marks_after_letters(shown: str) -> str:
    """Combining marks (bidi class NSM) of right-to-left letters put back after their letter: reversing a
    run puts each mark before the letter it sits on (rule L3 of the algorithm, which python-bidi leaves
    out), and a second reordering would then move it to the wrong word. A run of marks is moved when the
    character after it is a right-to-left letter and the one before it is not a left-to-right one (whose
    marks follow it already)."""
    if not any(unicodedata.bidirectional(ch) == "NSM" for ch in shown):
        return shown
    out, i = [], 0
    while i < len(shown):
        j = i
        while j < len(shown) and unicodedata.bidirectional(shown[j]) == "NSM":
            j += 1
        if j > i and j < len(shown) and unicodedata.bidirectional(shown[j]) in ("R", "AL") \
                and not (out and unicodedata.bidirectional(out[-1]) == "L"):
            out += [shown[j], *shown[i:j]]
            i = j + 1
        elif j > i:
            out += shown[i:j]
            i = j
        else:
            out.append(shown[i])
            i += 1
    return "".join(out)


def round_trips(text: str, base: str) -> bool:
    """Whether ``text`` comes back as written from its display order for ``base``."""
    return logical_order(display_order(text, base), base) == text


def logical_order(text: str, base: str) -> str:
    """The inverse of :func:`display_order` for one ``base``: a reading in display order put back in
    logical order (the algorithm applied again, as OCR engines do). Exact for most text; not where two
    logical orders look alike, such as a number after right-to-left text in a left-to-right paragraph
    (:func:`round_trips` tells)."""
    return display_order(text, base)


def text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content (no byte-order mark, universal newlines, as ``read_text`` gives it); a
    DataError naming the file when it is missing or not UTF-8 (:func:`decode_utf8`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such text file")
    # as Python reads text: line ends made "\n" (a "\r" would be a character of the text)
    return decode_utf8(p.read_bytes(), str(path)).replace("\r\n", "\n").replace("\r", "\n")


def word_list(path: str | os.PathLike) -> list[str]:
    """The distinct whitespace-separated words of a text file (a word list, one per line, or any text)."""
    words = sorted(set(text_file(path).split()))
    if not words:
        raise DataError(f"{path}: expected a word list (one word per line), got no words")
    return words


class Vocab:
    """Symbol <-> id mapping for a character or byte language model.

    ``Vocab.from_text(train_text)`` builds it: bytes give the fixed 256-symbol byte vocabulary, a
    ``str`` gives its sorted distinct characters. Characters never seen in the training text are
    handled by ``unknown``: ``"skip"`` (default) drops them, ``"reserve"`` maps them to one extra id
    (``unk_id == len(chars)``) that decodes to U+FFFD. Either way they are counted in ``last_unknown``
    and logged as a warning listing them; encoding never fails on them.

    Shape:
        ``encode(text) -> (N,)`` int64 with ids in ``[0, V)``; ``decode((N,)) -> str | bytes``.
    """

    def __init__(self, chars: Iterable[str] | None = None, *, unit: str = "char", unknown: str = "skip"):
        _check_unit(unit)
        if unknown not in UNKNOWN_MODES:
            raise DataError(f"unknown must be one of {UNKNOWN_MODES}, got {unknown!r}")
        self.unit, self.unknown = unit, unknown
        self.last_unknown: dict[str, int] = {}
        if unit == "byte":
            if chars is not None:
                raise DataError("a byte vocabulary is fixed (256 symbols); expected chars=None")
            self.chars, self.unk_id = "", None
            return
        self.chars = "".join(sorted(set(chars or "")))
        if not self.chars:
            raise DataError("a character vocabulary needs at least one character, got none")
        if any(len(c) != 1 for c in self.chars):
            raise DataError("expected single characters in the vocabulary")
        self.unk_id = len(self.chars) if unknown == "reserve" else None
        # sorted code points for a vectorised lookup; the reserved id decodes to U+FFFD
        self._points = np.frombuffer(self.chars.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        self._decode_points = np.append(self._points, 0xFFFD) if self.unk_id is not None else self._points

    @classmethod
    def from_text(cls, text: Text, *, unknown: str = "skip") -> "Vocab":
        """Bytes -> the 256-byte vocabulary; str -> the sorted distinct characters of ``text``."""
        if isinstance(text, (bytes, bytearray)):
            return cls(unit="byte")
        if not text:
            raise DataError("cannot build a vocabulary from empty text")
        return cls(text, unit="char", unknown=unknown)

    @property
    def is_bytes(self) -> bool:
        return self.unit == "byte"

    def __len__(self) -> int:
        if self.is_bytes:
            return 256
        return len(self.chars) + (self.unk_id is not None)

    def __repr__(self) -> str:
        return f"Vocab(unit={self.unit!r}, size={len(self)}, unknown={self.unknown!r})"

    def symbol(self, i: int) -> Text:
        """The text of one id: a one-byte ``bytes`` in byte mode, a character otherwise."""
        if self.is_bytes:
            return bytes((i,))
        return "\ufffd" if i == self.unk_id else self.chars[i]

    def encode(self, text: Text, *, warn: bool = True) -> np.ndarray:
        """Text -> ids ``(N,)`` int64. Byte mode also takes ``str`` (as UTF-8); char mode takes UTF-8 bytes.
        ``warn=False`` leaves the warning about unknown characters to the caller (:meth:`unknown_note`)."""
        self.last_unknown = {}
        if self.is_bytes:
            data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
            return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"expected UTF-8 text for a character vocabulary, got an invalid byte at offset "
                                f"{err.start}; use unit='byte' for raw bytes") from None
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        ids = np.searchsorted(self._points, points).clip(max=len(self._points) - 1)
        known = self._points[ids] == points
        if not known.all():
            self.last_unknown = dict(Counter(chr(p) for p in points[~known]).most_common())
            if warn:
                log.warning("%s", self.unknown_note())
            if self.unk_id is not None:
                ids = np.where(known, ids, self.unk_id)
            else:
                ids = ids[known]
        return ids.astype(np.int64)

    def unknown_note(self) -> str:
        """What the last :meth:`encode` did with characters not in the vocabulary, listing them."""
        listing = ", ".join(f"{c!r} x{n}" for c, n in self.last_unknown.items())
        action = f"mapped to id {self.unk_id}" if self.unk_id is not None else "skipped"
        return (f"{sum(self.last_unknown.values())} character(s) not in the {len(self.chars)}-symbol vocabulary "
                f"were {action}: {listing}")

    def decode(self, ids) -> Text:
        """Ids (any int sequence, array or tensor) -> ``bytes`` in byte mode, ``str`` otherwise."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= len(self)):
            raise DataError(f"expected ids in [0, {len(self)}), got values in [{arr.min()}, {arr.max()}]")
        if self.is_bytes:
            return arr.astype(np.uint8).tobytes()
        return self._decode_points[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_dict(self) -> dict:
        """Plain types only, so it survives ``torch.load(weights_only=True)`` and JSON."""
        return {"unit": self.unit, "chars": self.chars, "unknown": self.unknown}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        try:
            unit, chars, unknown = d["unit"], d["chars"], d.get("unknown", "skip")
        except (KeyError, TypeError):
            raise DataError(f"expected a vocabulary dict with 'unit' and 'chars', got {d!r:.80}") from None
        return cls(unit=unit) if unit == "byte" else cls(chars, unit=unit, unknown=unknown)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()


def split_corpus(ids, val_fraction: float = 0.1):
    """Contiguous split: the first ``1 - val_fraction`` for training, the rest for validation.

    Works on ids, ``str`` or ``bytes`` (build the vocabulary from the training part of the text).
    ``int(n * (1 - val_fraction))`` tokens train, as nanoGPT does (1,003,854 of Tiny Shakespeare).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cut = int(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def _as_ids(ids) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
    if t.dim() != 1:
        raise DataError(f"expected a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    return t.to(torch.int64).cpu()


class StreamBatches(BatchSource):
    """``B`` parallel contiguous streams for stateful training (truncated BPTT).

    The corpus is cut into ``S = B * world_size`` equal contiguous stripes of ``L`` tokens; rank ``r``
    owns stripes ``r*B .. r*B + B - 1``. Batch ``k`` of an epoch holds ``x = stripes[:, k*T:(k+1)*T]`` and
    ``y`` the tokens one step later, so every covered position is seen exactly once per epoch and
    window ``k + 1`` of stream ``b`` continues window ``k`` exactly. ``reset`` is True on batch 0 only:
    the trainer carries (and detaches) the hidden state between batches and resets it there.

    The last window of a stripe may be shorter than ``T`` (it is dropped with ``drop_last=True``).
    With ``random_offset=True`` epoch ``e`` starts its stripes ``o`` tokens later, ``o`` drawn from
    ``numpy.random.default_rng((seed, e))`` in ``[0, T)``, so epochs see different cut points; ``T - 1``
    tokens are set aside for that so every epoch has the same number of batches. Off by default:
    epochs are then identical, which keeps runs easy to compare.

    Shape:
        ids: ``(N,)``. Batch: ``x``, ``y`` ``(B, T)`` int64 (``T`` may be shorter in the last batch),
        ``reset`` a bool.
    """

    def __init__(self, ids, batch_size: int, seq_len: int, *, random_offset: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be at least 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise DataError(f"expected 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        self.ids = _as_ids(ids)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.random_offset, self.seed, self.drop_last = random_offset, seed, drop_last
        self.rank, self.world_size = rank, world_size
        streams = batch_size * world_size
        slack = seq_len - 1 if random_offset else 0
        self.stripe_len = (len(self.ids) - 1 - slack) // streams
        if self.stripe_len < (seq_len if drop_last else 1):
            raise DataError(f"corpus of {len(self.ids)} tokens is too short for {streams} streams of "
                            f"{seq_len if drop_last else 1}+ tokens (batch_size={batch_size}, world_size={world_size})")

    def offset(self, epoch: int) -> int:
        """Where stripe 0 starts in epoch ``epoch``."""
        if not self.random_offset:
            return 0
        return int(np.random.default_rng((self.seed, epoch)).integers(0, self.seq_len))

    def num_batches(self, epoch: int = 0) -> int:
        if self.drop_last:
            return self.stripe_len // self.seq_len
        return -(-self.stripe_len // self.seq_len)

    def stripes(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's input and target stripes for the epoch, each ``(B, L)`` (views of the corpus)."""
        streams, L, o = self.batch_size * self.world_size, self.stripe_len, self.offset(epoch)
        xs = self.ids[o:o + streams * L].view(streams, L)  # (S*L,) -> (S, L)
        ys = self.ids[o + 1:o + 1 + streams * L].view(streams, L)  # (S*L,) -> (S, L)
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return xs[rows], ys[rows]

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        xs, ys = self.stripes(epoch)
        T = self.seq_len
        for k in range(start, self.num_batches(epoch)):
            window = slice(k * T, (k + 1) * T)
            yield {"x": xs[:, window].clone(), "y": ys[:, window].clone(), "reset": k == 0}


class RandomWindows(BatchSource):
    """Independent random windows, for training without carried state.

    Batch ``k`` of epoch ``e`` draws ``B`` window starts from ``numpy.random.default_rng((seed, e, k, rank))``,
    so any batch can be rebuilt on its own (exact resume). An epoch has ``max(1, N // (B*T))`` batches.
    ``reset`` is True on every batch: windows are unrelated, so no state may be carried.

    Shape:
        ids: ``(N,)``. Batch: ``x``, ``y`` ``(B, T)`` int64, ``reset`` True.
    """

    def __init__(self, ids, batch_size: int, seq_len: int, seed: int = 0, *, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be at least 1, got {batch_size} and {seq_len}")
        self.ids = _as_ids(ids)
        if len(self.ids) < seq_len + 1:
            raise DataError(f"corpus of {len(self.ids)} tokens is too short for windows of seq_len={seq_len} "
                            f"(needs at least {seq_len + 1})")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self._steps = torch.arange(seq_len + 1)

    def num_batches(self, epoch: int = 0) -> int:
        return max(1, len(self.ids) // (self.batch_size * self.seq_len))

    def batch(self, epoch: int, k: int) -> dict:
        rng = np.random.default_rng((self.seed, epoch, k, self.rank))
        starts = torch.from_numpy(rng.integers(0, len(self.ids) - self.seq_len, size=self.batch_size))
        window = self.ids[starts[:, None] + self._steps]  # (B, 1) + (T+1,) -> (B, T+1)
        return {"x": window[:, :-1], "y": window[:, 1:], "reset": True}

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        for k in range(start, self.num_batches(epoch)):
            yield self.batch(epoch, k)
