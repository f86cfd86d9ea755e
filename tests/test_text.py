"""Corpora, vocabularies and the two batchings of data/text.py."""
# B batch, T time steps, V vocabulary
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convrnn.data.text import RandomWindows, StreamBatches, Vocab, read_corpus, split_corpus, text_file
from convrnn.errors import DataError
from convrnn.layers.base import ModelOutput

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")


class TinyLSTM(nn.Module):
    """Stand-in for a SpecModel: embed -> LSTM -> linear, with run(x, lengths, state)."""

    def __init__(self, vocab_size: int = 11, hidden_size: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 6)
        self.lstm = nn.LSTM(6, hidden_size, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def run(self, x, lengths=None, state=None):
        y, s = self.lstm(self.embed(x), state[0] if state else None)
        return ModelOutput(self.head(y), None, [s])


# ---- read_corpus --------------------------------------------------------------------------------

def test_read_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first é", encoding="utf-8")  # no final newline: one is added
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / ".hidden").write_text("never", encoding="utf-8")
    assert read_corpus(tmp_path / "a.txt") == "first é"
    assert read_corpus(tmp_path) == "first é\nsecond\nthird"
    assert read_corpus(str(tmp_path), unit="byte") == "first é\nsecond\nthird".encode("utf-8")


def test_non_utf8_file_in_char_mode_names_file_offset_and_byte_mode(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError) as err:
        read_corpus(path, unit="char")
    message = str(err.value)
    assert "latin1.txt" in message and "offset 3" in message and "--unit byte" in message
    assert read_corpus(path, unit="byte") == b"caf\xe9 au lait"


def test_empty_or_missing_corpus_is_a_data_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="empty"):
        read_corpus(tmp_path / "empty.txt", unit="byte")
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "nope")
    (tmp_path / "blank.txt").write_bytes(b" \n\r\n\t \n" * 1000)
    for unit in ("char", "byte"):
        with pytest.raises(DataError, match=r"blank.txt' holds only whitespace \(7,000 bytes\): expected text"):
            read_corpus(tmp_path / "blank.txt", unit=unit)
    with pytest.raises(DataError, match="unit"):
        read_corpus(tmp_path / "empty.txt", unit="word")


def test_a_run_folder_inside_the_corpus_folder_is_passed_over(tmp_path, caplog):
    """Training with --data . leaves runs/ inside the corpus: the next run (and eval of this one)
    reads the same text, not the checkpoints."""
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    run = tmp_path / "runs" / "charlm-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}", encoding="utf-8")
    (run / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (run / "train.log").write_text("step 1\n", encoding="utf-8")
    with caplog.at_level(logging.INFO):
        assert read_corpus(tmp_path) == "first\n"
        assert read_corpus(tmp_path, unit="byte") == b"first\n"
    assert "passed over 1 convrnn run folder in it (runs/charlm-1)" in caplog.text
    unfinished = tmp_path / "runs" / "ensemble"  # an ensemble before its first member finished
    (unfinished / "members").mkdir(parents=True)
    (unfinished / "config.json").write_text("{}", encoding="utf-8")
    (unfinished / "members" / "done.json").write_text("[]", encoding="utf-8")
    assert read_corpus(tmp_path) == "first\n"
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DataError, match="no text files in this folder \\(only run folders\\)"):
        read_corpus(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty': no text files in this folder$"):
        read_corpus(tmp_path / "empty")


def test_a_byte_order_mark_is_no_character_of_the_text(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufefffirst\n".encode("utf-8"))
    (tmp_path / "b.txt").write_bytes("\ufeffsecond".encode("utf-8"))  # a mark in front of every file
    assert read_corpus(tmp_path / "a.txt") == "first\n"
    assert read_corpus(tmp_path) == "first\nsecond"
    assert read_corpus(tmp_path, unit="byte").count(b"\xef\xbb\xbf") == 2  # bytes stay as they are
    assert text_file(tmp_path / "a.txt") == "first\n"


@pytest.mark.parametrize("encoding, found", [
    ("utf-16", "got UTF-16LE text (its byte-order mark)"),
    ("utf-16-be", "got a NUL byte at byte offset 0"),     # no mark: ASCII in UTF-16 has a NUL in every other byte
    ("utf-16-le", "got a NUL byte at byte offset 1"),
    ("utf-32", "got UTF-32LE text (its byte-order mark)"),
])
def test_utf16_text_is_refused_with_how_to_convert_it(tmp_path, encoding, found):
    path = tmp_path / "wide.txt"
    path.write_bytes("To be, or not to be\n".encode(encoding) * 50)
    for read in (read_corpus, text_file):
        with pytest.raises(DataError) as err:
            read(path)
        assert found in str(err.value) and "wide.txt" in str(err.value) and "iconv" in str(err.value)
    assert len(read_corpus(path, unit="byte")) == path.stat().st_size


def test_a_pattern_given_as_the_corpus_says_that_it_is_not_expanded(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(DataError, match=r"does not exist \(a pattern is not expanded here: give the folder"):
        read_corpus(tmp_path / "*.txt")


# ---- Vocab --------------------------------------------------------------------------------------

def test_char_vocab_is_sorted_training_chars_and_round_trips():
    vocab = Vocab.from_text("hello, world\n")
    assert vocab.chars == "\n ,dehlorw" and len(vocab) == 10
    ids = vocab.encode("hello")
    assert ids.dtype == np.int64 and ids.tolist() == [vocab.chars.index(c) for c in "hello"]
    assert vocab.decode(ids) == "hello"
    assert vocab.decode(torch.as_tensor(ids)) == "hello"
    with pytest.raises(DataError, match="expected ids"):
        vocab.decode([10])


def test_unknown_chars_are_skipped_counted_and_logged(caplog):
    vocab = Vocab.from_text("abc")
    with caplog.at_level(logging.WARNING, logger="convrnn.data.text"):
        ids = vocab.encode("abxcyx")
    assert vocab.decode(ids) == "abc"
    assert vocab.last_unknown == {"x": 2, "y": 1}
    assert "'x' x2" in caplog.text and "'y' x1" in caplog.text
    vocab.encode("cab")
    assert vocab.last_unknown == {}


def test_unknown_chars_can_map_to_a_reserved_id():
    vocab = Vocab.from_text("abc", unknown="reserve")
    assert len(vocab) == 4 and vocab.unk_id == 3
    assert vocab.encode("aZb").tolist() == [0, 3, 1]
    assert vocab.decode([0, 3, 1]) == "a\ufffdb"


@pytest.mark.parametrize("vocab", [Vocab.from_text("xyz é\n"), Vocab.from_text("ab", unknown="reserve"),
                                   Vocab.from_text(b"\x00\xff")])
def test_vocab_survives_torch_save_load_weights_only(vocab):
    buf = io.BytesIO()
    torch.save({"meta": {"vocab": vocab.to_dict()}}, buf)
    buf.seek(0)
    loaded = Vocab.from_dict(torch.load(buf, weights_only=True)["meta"]["vocab"])
    assert loaded == vocab and len(loaded) == len(vocab)
    text = "xyz" if not vocab.is_bytes else b"\x00\x01\xff"
    assert loaded.decode(loaded.encode(text)) == vocab.decode(vocab.encode(text))


def test_byte_vocab_round_trips_arbitrary_bytes_including_invalid_utf8():
    vocab = Vocab.from_text(b"anything")
    assert len(vocab) == 256 and vocab.is_bytes
    data = np.random.default_rng(0).integers(0, 256, size=4096).astype(np.uint8).tobytes() + b"\xc3\x28\xed\xa0\x80"
    ids = vocab.encode(data)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() <= 255
    assert vocab.decode(ids) == data
    assert vocab.encode("é").tolist() == [0xC3, 0xA9]  # str primes are encoded as UTF-8


def test_char_vocab_rejects_invalid_utf8_bytes():
    with pytest.raises(DataError, match="unit='byte'"):
        Vocab.from_text("abc").encode(b"a\xffb")


# ---- split_corpus -------------------------------------------------------------------------------

def test_split_is_contiguous_first_part_trains():
    ids = np.arange(100)
    train, val = split_corpus(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert split_corpus("abcdefghij", 0.2) == ("abcdefgh", "ij")
    with pytest.raises(DataError):
        split_corpus(ids, 1.0)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="Tiny Shakespeare not available")
def test_tiny_shakespeare_matches_the_char_rnn_convention():
    text = read_corpus(SHAKESPEARE)
    train, val = split_corpus(text)
    vocab = Vocab.from_text(train)
    assert len(text) == 1_115_394 and len(train) == 1_003_854 and len(vocab) == 65
    assert vocab.decode(vocab.encode(val)) == val and vocab.last_unknown == {}


# ---- StreamBatches ------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size, seq_len, drop_last", [(101, 4, 5, False), (97, 3, 7, False), (200, 2, 8, True)])
def test_streams_see_every_position_once_and_continue_exactly(n, batch_size, seq_len, drop_last):
    ids = np.arange(n) * 3 % 1000  # distinct values so positions are identifiable
    source = StreamBatches(ids, batch_size, seq_len, drop_last=drop_last)
    batches = list(source.batches(epoch=0))
    assert len(batches) == source.num_batches(0) > 1
    assert [b["reset"] for b in batches] == [True] + [False] * (len(batches) - 1)
    L = source.stripe_len
    # reconstruct each stream by concatenating its windows: it is one contiguous stripe of the corpus
    xs = torch.cat([b["x"] for b in batches], dim=1)  # (B, L)
    ys = torch.cat([b["y"] for b in batches], dim=1)
    covered = L if not drop_last else L - L % seq_len
    for s in range(batch_size):
        assert xs[s].tolist() == ids[s * L:s * L + covered].tolist()
        assert ys[s].tolist() == ids[s * L + 1:s * L + covered + 1].tolist()
    seen = np.concatenate([b["x"].reshape(-1).numpy() for b in batches])
    assert len(seen) == len(set(seen.tolist()))  # no position twice
    assert all(b["x"].dtype == torch.int64 and b["x"].shape == b["y"].shape for b in batches)
    assert all(b["x"].shape[1] == seq_len for b in batches[:-1])
    # window k+1 of stream b starts right where window k ended
    for a, b in zip(batches, batches[1:]):
        assert torch.equal(b["x"][:, 0], a["y"][:, -1])


def test_streams_resume_mid_epoch_and_split_across_ranks():
    ids = np.arange(500)
    full = list(StreamBatches(ids, 3, 6).batches(1))
    resumed = list(StreamBatches(ids, 3, 6).batches(1, start=4))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(full[4:], resumed))
    ranks = [list(StreamBatches(ids, 2, 6, rank=r, world_size=3).batches(0)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every rank has the same number of batches
    per_rank = [torch.cat([b["x"] for b in r], dim=1) for r in ranks]  # (B, L) each
    together = torch.cat(per_rank, dim=0).reshape(-1)  # (world*B, L) -> (world*B*L,)
    assert together.tolist() == list(range(len(together)))  # distinct stripes, in corpus order


def test_random_offset_moves_cut_points_but_keeps_contiguity():
    ids = np.arange(1000)
    source = StreamBatches(ids, 4, 10, random_offset=True, seed=3)
    offsets = {source.offset(e) for e in range(20)}
    assert len(offsets) > 1 and all(0 <= o < 10 for o in offsets)
    assert len({source.num_batches(e) for e in range(5)}) == 1
    for epoch in range(3):
        o, L = source.offset(epoch), source.stripe_len
        xs = torch.cat([b["x"] for b in source.batches(epoch)], dim=1)
        assert xs.reshape(-1).tolist() == list(range(o, o + 4 * L))
    assert list(source.batches(2))[0]["x"].tolist() == list(source.batches(2))[0]["x"].tolist()


def test_too_short_corpus_is_a_data_error():
    with pytest.raises(DataError, match="too short"):
        StreamBatches(np.arange(5), 8, 4)
    with pytest.raises(DataError, match="too short"):
        RandomWindows(np.arange(5), 2, 8)


def test_carried_state_equals_running_the_whole_stream():
    torch.manual_seed(0)
    model = TinyLSTM().double()
    ids = np.random.default_rng(1).integers(0, 11, size=81)
    source = StreamBatches(ids, 2, 20)
    first, second = list(source.batches(0))[:2]
    with torch.no_grad():
        out1 = model.run(first["x"])
        out2 = model.run(second["x"], state=out1.state)
        whole = model.run(torch.cat([first["x"], second["x"]], dim=1))
    split = torch.cat([out1.y, out2.y], dim=1)
    torch.testing.assert_close(split, whole.y, atol=1e-6, rtol=0)
    # and without the carried state the second window differs: the test can fail
    assert not torch.allclose(model.run(second["x"]).y, whole.y[:, 20:], atol=1e-6)


# ---- RandomWindows ------------------------------------------------------------------------------

def test_random_windows_are_deterministic_shifted_and_sized():
    ids = np.arange(1000)
    source = RandomWindows(ids, 4, 16, seed=7)
    assert source.num_batches(0) == 1000 // 64
    batches = list(source.batches(2))
    again = list(RandomWindows(ids, 4, 16, seed=7).batches(2, start=3))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(batches[3:], again))
    assert not torch.equal(batches[0]["x"], list(source.batches(3))[0]["x"])
    for b in batches:
        assert b["x"].shape == (4, 16) and b["reset"]
        assert torch.equal(b["y"], b["x"] + 1)  # ids == positions, so the target is the next position
        assert torch.equal(b["x"][:, 1:] - b["x"][:, :-1], torch.ones(4, 15, dtype=torch.int64))
        assert int(b["y"].max()) < 1000
