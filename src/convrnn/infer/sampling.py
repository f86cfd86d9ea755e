"""Generate text from a character or byte language model, one token at a time with carried state.

The prime is fed once, as a whole, then each new token is fed alone with the state the model returned
(the prefix is never run again). ``num_samples`` samples are drawn side by side as one batch.
Decoding: greedy (``greedy=True`` or ``temperature=0``), or sampling from ``softmax(logits / temperature)``
restricted to the ``top_k`` most likely tokens and/or the nucleus of mass ``top_p`` (filters are applied
after the temperature, top-k first).

Byte models can emit any byte, including halves of a multi-byte UTF-8 character or invalid sequences.
:class:`StreamDecoder` holds incomplete characters until they are complete and escapes invalid bytes as
``\\xNN`` (``errors="backslashreplace"``, the default; ``"replace"`` gives U+FFFD), so a terminal never
receives invalid UTF-8. :func:`safe_text` does the same for a whole ``bytes``.

Shape:
    model.run input ``(B, T)`` int64 ids; output ``y`` ``(B, T, V)`` logits; ``state`` a list.
    B samples drawn at once (``num_samples``), T prime length then 1, V vocabulary size.
"""
# B batch (samples), T time steps, V vocabulary
from __future__ import annotations

import codecs
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from convrnn.data.text import Vocab
from convrnn.errors import ConfigError

log = logging.getLogger(__name__)

ERRORS = ("backslashreplace", "replace")
OnToken = Callable[[int, int, str], None]


def _check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ConfigError(f"errors must be one of {ERRORS}, got {errors!r}")


def safe_text(b: bytes, errors: str = "backslashreplace") -> str:
    """Decode bytes as UTF-8 without ever failing: invalid bytes become ``\\xNN`` (or U+FFFD with ``"replace"``).

    The result always encodes back to valid UTF-8.
    """
    _check_errors(errors)
    return bytes(b).decode("utf-8", errors)


class StreamDecoder:
    """Incremental UTF-8 decoder for a byte stream: ``feed(b) -> str`` returns only complete characters.

    Bytes of a character split across tokens are held until the character is complete; invalid
    sequences are escaped (``backslashreplace``, default) or replaced (``replace``). ``flush()`` returns
    whatever is still held, escaped.
    """

    def __init__(self, errors: str = "backslashreplace"):
        _check_errors(errors)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the ``top_k`` largest and outside the ``top_p`` nucleus.

    The nucleus is the smallest set of most likely tokens whose probability sums to at least ``top_p``;
    it always holds at least the most likely token. Exactly ``top_k`` logits survive top-k (ties broken
    by ``torch.topk``).

    Shape:
        logits: ``(B, V)`` -> ``(B, V)``.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        values, index = logits.topk(top_k, dim=-1)  # (B, V) -> (B, k)
        logits = torch.full_like(logits, -torch.inf).scatter_(-1, index, values)  # (B, k) -> (B, V)
    if top_p is not None and top_p < 1.0:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        ordered = ordered.masked_fill(mass_before >= top_p, -torch.inf)
        logits = torch.empty_like(logits).scatter_(-1, index, ordered)  # back to vocabulary order
    return logits


def _prime_ids(vocab: Vocab, prime: Union[str, bytes]) -> np.ndarray:
    """Encode the prime; unseen characters are skipped, and the vocabulary logs a warning listing them
    (they stay in ``vocab.last_unknown`` for the caller)."""
    ids = vocab.encode(prime)
    if len(ids) == 0:
        # nothing to condition on: start as if after a newline (id 0 if the vocabulary has no newline)
        start = 10 if vocab.is_bytes else max(vocab.chars.find("\n"), 0)
        ids = np.array([start], dtype=np.int64)
        log.debug("empty prime: sampling starts as if after a newline (id %d)", start)
    return ids


class _Streamer:
    """Turns each step's tokens into text pieces and calls ``on_token(sample_index, token_id, piece)``."""

    def __init__(self, vocab: Vocab, num_samples: int, on_token: OnToken, errors: str):
        self.vocab, self.on_token = vocab, on_token
        self.decoders = [StreamDecoder(errors) for _ in range(num_samples)] if vocab.is_bytes else None

    def push(self, tokens: torch.Tensor) -> None:
        for b, token in enumerate(tokens.view(-1).tolist()):
            piece = self.decoders[b].feed(bytes((token,))) if self.decoders else self.vocab.symbol(token)
            self.on_token(b, token, piece)

    def close(self) -> None:
        """Emit held incomplete bytes (escaped) as a final ``on_token(b, -1, piece)``."""
        for b, decoder in enumerate(self.decoders or []):
            rest = decoder.flush()
            if rest:
                self.on_token(b, -1, rest)


@contextmanager
def one_step_kernels(device: torch.device) -> Iterator[None]:
    """Run recurrent layers one token at a time on PyTorch's native CPU kernels instead of oneDNN's.

    oneDNN sets up an RNN primitive on every call, which for one step of one sequence costs more than
    the step: a 512-unit LSTM generates about 2.5x faster without it on this project's 2-core machine
    (bench ``charlm_sample_speed``). Training keeps oneDNN, which wins on whole windows. CUDA is untouched.
    """
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


def sample(model, vocab: Vocab, *, prime: Union[str, bytes] = "", length: int, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
           num_samples: int = 1, seed: Optional[int] = None, on_token: Optional[OnToken] = None,
           device: Union[str, torch.device] = "cpu", errors: str = "backslashreplace") -> list:
    """Draw ``num_samples`` continuations of ``prime``, ``length`` tokens each.

    Returns the generated text only (not the prime): ``str`` per sample for a character vocabulary,
    raw ``bytes`` for a byte vocabulary (use :func:`safe_text` to print them). ``on_token(i, token_id,
    piece)`` is called for every token of sample ``i`` as it comes; ``piece`` is printable text (for bytes,
    complete characters only, see :class:`StreamDecoder`; held bytes come out at the end with
    ``token_id == -1``). An empty prime starts after a newline. The same ``seed`` gives the same
    samples (a private ``torch.Generator``; the global RNG is untouched). ``model`` must be on ``device``;
    it is put in eval mode while sampling and restored afterwards.

    Shape:
        ``model.run((B, T)) -> ModelOutput(y=(B, T, V), state=list)``, B = num_samples.
    """
    if length < 0 or num_samples < 1:
        raise ConfigError(f"expected length >= 0 and num_samples >= 1, got {length} and {num_samples}")
    if not temperature >= 0 or temperature == float("inf"):  # NaN fails every comparison
        raise ConfigError(f"temperature must be a number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    _check_errors(errors)
    greedy = greedy or temperature == 0
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    prime_ids = _prime_ids(vocab, prime)
    streamer = _Streamer(vocab, num_samples, on_token, errors) if on_token is not None else None
    unk = vocab.unk_id  # never emit the reserved "unknown" id

    def pick(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B, 1)
        if unk is not None:
            logits = logits.clone()
            logits[:, unk] = -torch.inf
        if greedy:
            return logits.argmax(dim=-1, keepdim=True)
        logits = filter_logits(logits.float() / temperature, top_k, top_p)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = torch.as_tensor(prime_ids, device=device).expand(num_samples, -1)  # (T,) -> (B, T)
            out = model.run(x, state=None)
            if out.y.shape[-1] != len(vocab):
                raise ConfigError(f"model predicts {out.y.shape[-1]} symbols but the vocabulary has {len(vocab)}")
            if out.state is None:
                raise ConfigError("sampling needs a model that carries recurrent state; run() returned state=None")
            tokens = torch.empty(num_samples, length, dtype=torch.int64, device=device)
            step = torch.empty(num_samples, 1, dtype=torch.int64, device=device)
        with torch.inference_mode(), one_step_kernels(tokens.device):
            for i in range(length):
                step.copy_(pick(out.y[:, -1]))
                tokens[:, i:i + 1].copy_(step)
                if streamer is not None:
                    streamer.push(step)
                if i + 1 < length:
                    out = model.run(step, state=out.state)
    finally:
        model.train(was_training)
    if streamer is not None:
        streamer.close()
    return [vocab.decode(row) for row in tokens.cpu().numpy()]
