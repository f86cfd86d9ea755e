"""Sampling: greedy/temperature, top-k/top-p, seeds, streaming, byte-safe text."""
# B batch (samples), T time steps, V vocabulary
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from convrnn.data.text import Vocab
from convrnn.errors import ConfigError
from convrnn.infer.sampling import StreamDecoder, filter_logits, one_step_kernels, safe_text, sample
from convrnn.layers.base import ModelOutput

TEXT = "the quick brown fox jumps over the lazy dog\n"


class TinyLSTM(nn.Module):
    """Stand-in for a SpecModel: embed -> LSTM -> linear, with run(x, lengths, state)."""

    def __init__(self, vocab_size: int, hidden_size: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, 8)
        self.lstm = nn.LSTM(8, hidden_size, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.calls: list[tuple] = []

    def run(self, x, lengths=None, state=None):
        self.calls.append(tuple(x.shape))
        y, s = self.lstm(self.embed(x), state[0] if state else None)
        return ModelOutput(self.head(self.drop(y)) * 3, None, [s])


class FixedLM(nn.Module):
    """Logits that never change: a known distribution to check top-k/top-p against."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def run(self, x, lengths=None, state=None):
        B, T = x.shape
        return ModelOutput(self.logits.expand(B, T, -1), None, [None])  # (V,) -> (B, T, V)


def greedy_reference(model, vocab, prime, length):
    """Slow obvious reference: re-run the whole text every step and take the argmax."""
    ids = list(vocab.encode(prime))
    for _ in range(length):
        with torch.no_grad():
            y = model.run(torch.tensor([ids])).y  # (1, T, V)
        ids.append(int(y[0, -1].argmax()))
    return vocab.decode(ids[len(vocab.encode(prime)):])


def test_greedy_equals_rerunning_the_prefix_and_never_reruns_it():
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab))
    model.eval()
    expected = greedy_reference(model, vocab, "the ", 12)
    model.calls.clear()
    model.train()
    got = sample(model, vocab, prime="the ", length=12, greedy=True, num_samples=3)
    assert got == [expected] * 3
    assert model.calls == [(3, 4)] + [(3, 1)] * 11  # prime once, then one token at a time
    assert model.training  # mode restored


def test_one_step_kernels_give_the_same_logits_and_restore_the_setting():
    """Generation runs single steps on native CPU kernels (faster than oneDNN there): same numbers."""
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab), hidden_size=64).eval()
    x = torch.as_tensor(vocab.encode("the quick"))[None]
    with torch.no_grad():
        expected = model.run(x).y
        with one_step_kernels(torch.device("cpu")):
            assert not torch.backends.mkldnn.enabled
            got = model.run(x).y
    assert torch.backends.mkldnn.enabled
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError), one_step_kernels(torch.device("cpu")):
        raise RuntimeError("interrupted mid-generation")
    assert torch.backends.mkldnn.enabled  # restored on errors too


def test_tiny_temperature_equals_greedy():
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab), seed=1)
    greedy = sample(model, vocab, prime="fox", length=20, greedy=True)
    assert sample(model, vocab, prime="fox", length=20, temperature=1e-6, seed=5, num_samples=2) == greedy * 2
    assert sample(model, vocab, prime="fox", length=20, temperature=0.0) == greedy
    # at temperature 1 it samples something else: the comparison can fail
    assert sample(model, vocab, prime="fox", length=20, temperature=1.0, seed=5) != greedy


def test_same_seed_same_samples_and_global_rng_untouched():
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample(model, vocab, prime="lazy", length=30, num_samples=4, seed=9, top_k=5)
    assert torch.rand(1).item() == before.item()
    b = sample(model, vocab, prime="lazy", length=30, num_samples=4, seed=9, top_k=5)
    c = sample(model, vocab, prime="lazy", length=30, num_samples=4, seed=10, top_k=5)
    assert a == b and a != c
    assert len(set(a)) > 1  # the samples of one batch differ from each other


LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]  # probs ~ .55 .20 .12 .07 .03 .003


def test_top_k_never_leaves_the_top_k_set():
    vocab = Vocab.from_text("abcdef")
    model = FixedLM(LOGITS)
    out = sample(model, vocab, prime="a", length=400, top_k=3, seed=0, temperature=2.0)[0]
    assert set(out) == set("abc")
    unfiltered = sample(model, vocab, prime="a", length=400, seed=0, temperature=2.0)[0]
    assert set(unfiltered) - set("abc")  # without the filter other letters appear


def test_top_p_never_leaves_the_nucleus():
    vocab = Vocab.from_text("abcdef")
    probs = torch.tensor(LOGITS).softmax(0)
    model = FixedLM(LOGITS)
    # p = 0.8: a + b = .75 < .8, a + b + c = .87 >= .8 -> nucleus {a, b, c}
    assert probs[:2].sum() < 0.8 <= probs[:3].sum()
    out = sample(model, vocab, prime="a", length=400, top_p=0.8, seed=0)[0]
    assert set(out) == set("abc")
    # a tiny p still keeps the most likely token
    assert sample(model, vocab, prime="a", length=50, top_p=1e-9, seed=0)[0] == "a" * 50


def test_filter_logits_against_a_slow_reference():
    logits = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    for k, p in [(3, None), (None, 0.5), (5, 0.6), (12, 1.0)]:
        got = filter_logits(logits, k, p)
        for row, out in zip(logits, got):
            keep = set(range(12))
            order = sorted(range(12), key=lambda i: -row[i].item())
            if k is not None:
                keep = set(order[:k])
            if p is not None:
                kept = [i for i in order if i in keep]
                probs = torch.full((12,), -torch.inf)
                probs[kept] = row[kept]
                probs = probs.softmax(0)
                total, nucleus = 0.0, set()
                for i in kept:
                    nucleus.add(i)
                    total += probs[i].item()
                    if total >= p:
                        break
                keep = nucleus
            assert {i for i in range(12) if out[i] > -torch.inf} == keep
            assert torch.equal(out[list(keep)], row[list(keep)])


def test_streaming_calls_on_token_in_order():
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab))
    pieces: dict[int, list[str]] = {0: [], 1: []}
    got = sample(model, vocab, prime="dog", length=15, num_samples=2, seed=3,
                 on_token=lambda i, token, piece: pieces[i].append(piece))
    assert ["".join(pieces[i]) for i in range(2)] == got


def test_byte_model_streams_valid_text_and_returns_raw_bytes():
    vocab = Vocab.from_text(b"")  # byte vocabulary
    model = TinyLSTM(256)
    pieces: list[str] = []
    got = sample(model, vocab, prime="é", length=300, seed=0, temperature=3.0,
                 on_token=lambda i, token, piece: pieces.append(piece))
    assert isinstance(got[0], bytes) and len(got[0]) == 300
    streamed = "".join(pieces)
    streamed.encode("utf-8")  # a terminal can take it
    assert streamed == safe_text(got[0])


def test_unseen_prime_characters_are_skipped_and_reported(caplog):
    vocab = Vocab.from_text(TEXT)
    model = TinyLSTM(len(vocab))
    with caplog.at_level(logging.WARNING):
        with_unknown = sample(model, vocab, prime="thé€ fox", length=10, greedy=True)
    assert "é" in caplog.text and "€" in caplog.text
    assert with_unknown == sample(model, vocab, prime="th fox", length=10, greedy=True)
    assert len(sample(model, vocab, prime="", length=5, seed=0)[0]) == 5  # empty prime works


def test_bad_arguments_are_config_errors():
    vocab = Vocab.from_text("abc")
    model = FixedLM([0.0, 1.0, 2.0])
    for kwargs in [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(num_samples=0)]:
        with pytest.raises(ConfigError):
            sample(model, vocab, length=3, **kwargs)
    with pytest.raises(ConfigError, match="vocabulary has 3"):
        sample(FixedLM([0.0] * 5), vocab, length=3)


def test_safe_text_never_raises_on_random_bytes():
    rng = np.random.default_rng(0)
    for n in [0, 1, 2, 3, 7, 64, 1000]:
        data = rng.integers(0, 256, size=n).astype(np.uint8).tobytes()
        for errors in ("backslashreplace", "replace"):
            text = safe_text(data, errors)
            assert isinstance(text, str)
            text.encode("utf-8")  # valid: no lone surrogates
    assert safe_text(b"a\xffb") == "a\\xffb"
    assert safe_text(b"a\xffb", "replace") == "a\ufffdb"
    with pytest.raises(ConfigError):
        safe_text(b"", "strict")


def test_stream_decoder_holds_split_characters_and_escapes_invalid():
    data = "é€😀".encode("utf-8") + b"\xff" + "x".encode()
    decoder = StreamDecoder()
    pieces = [decoder.feed(bytes((b,))) for b in data]
    assert pieces[:2] == ["", "é"] and pieces[2:5] == ["", "", "€"]
    assert "".join(pieces) + decoder.flush() == "é€😀\\xffx"
    decoder.feed(b"\xe2\x82")  # incomplete at the end: flushed escaped
    assert decoder.flush() == "\\xe2\\x82"


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "--threads -1: expected 0 (the idle cores) or more"),
    (["--top-k", "0"], "--top-k 0: expected 1 or more"),
    (["--top-p", "1.5"], "--top-p 1.5: expected above 0, at most 1"),
    (["--length", "-2"], "--length -2: expected 0 or more"),
    (["--num-samples", "0"], "--num-samples 0: expected 1 or more"),
])
def test_cli_sample_names_a_bad_option_by_its_flag_before_loading_the_run(tmp_path, capsys, args, message):
    from helpers import run_cli
    code, out, err = run_cli(capsys, "sample", str(tmp_path / "no-run"), *args)
    assert code == 2 and out == "" and err == f"error: {message}\n"


def test_generated_control_characters_reach_a_terminal_as_escapes(monkeypatch):
    """A model can generate an escape sequence; on a terminal it is shown, not obeyed. A pipe or file
    gets the text unchanged."""
    import io
    import sys

    from convrnn.cli.sample import _writer

    class Screen(io.StringIO):
        def isatty(self):
            return True

    text = "a\x1b[2Jb\tc\nd\x07\x9b"
    for stream, expected in ((Screen(), "a\\x1b[2Jb\tc\nd\\x07\\x9b"), (io.StringIO(), text)):
        monkeypatch.setattr(sys, "stdout", stream)
        _writer(False)(text)
        assert stream.getvalue() == expected
