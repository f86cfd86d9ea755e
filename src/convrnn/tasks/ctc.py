"""CTC: loss with explicit handling of impossible targets, greedy and prefix-beam decoding, CER/WER.

Label 0 is the CTC blank; label ``k >= 1`` is ``alphabet[k - 1]``. The model emits per-step
logits ``(B, T, V)`` with ``V = len(alphabet) + 1`` and the valid frame counts ``(B,)``.

A target needs at least ``len(target) + repeats`` frames (a blank must separate two equal
adjacent labels). Shorter outputs make the CTC loss infinite; instead of zeroing those
(``zero_infinity``), ``CTCTask`` finds them before the loss, warns with their ids, counts them in
``skipped_too_long`` and leaves them out of the loss.
"""
# B batch, T time steps, V labels (blank + alphabet), S target labels
from __future__ import annotations

import copy
import logging
import math
import unicodedata
from collections import defaultdict
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from convrnn.data.text import display_order, first_strong, logical_order, text_file, word_list
from convrnn.errors import ConfigError
from convrnn.layers.base import ModelOutput
from convrnn.tasks.base import MetricAccumulator, Task
from convrnn.tasks.text_metrics import error_counts

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # unseen-character warnings already given by this process
_NAMED: set[str] = set()   # unseen characters already named when the data was read (see name_unseen)
BLANK = 0
NEG_INF = -math.inf
# beam width of an ensemble's joint decoding: past it, wider beams stopped finding better texts
# (bench/notes/2026-12-01-lines-digit-strings.md)
ENSEMBLE_BEAM = 8
PRUNE = 1e-4  # beam search: labels below this probability at a frame do not extend a prefix there


# ---------------------------------------------------------------- greedy decoding

def greedy_decode_batch(log_probs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> list[list[int]]:
    """Best path per sequence: argmax per frame, collapse repeats, drop blanks. ``(B, T, V)`` -> labels."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T, V) -> (B, T)
    b, t = best.shape
    lengths = torch.full((b,), t) if lengths is None else lengths.cpu()
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]  # first frame of each run
    valid = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    keep = changed & (best != BLANK) & valid
    return [best[i][keep[i]].tolist() for i in range(b)]


def greedy_decode(log_probs: torch.Tensor, length: Optional[int] = None) -> list[int]:
    """Best path of one sequence ``(T, V)``, using the first ``length`` frames."""
    lengths = None if length is None else torch.tensor([int(length)])
    return greedy_decode_batch(log_probs[None], lengths)[0]


# ---------------------------------------------------------------- lexicon and character LM

class Lexicon:
    """A word list as a character trie: which partial texts can still become words of the list.

    A text is valid when every space-separated word before the last is a word of the list and the
    last (possibly unfinished) word is a prefix of one.
    """

    def __init__(self, words: Iterable[str]):
        self.root: dict = {}
        for word in words:
            node = self.root
            for ch in word:
                node = node.setdefault(ch, {})
            node[None] = True  # end-of-word marker
        if not self.root:
            raise ValueError("a lexicon needs at least one word, got none")

    def _node(self, word: str) -> Optional[dict]:
        node = self.root
        for ch in word:
            node = node.get(ch)
            if node is None:
                return None
        return node

    def is_word(self, word: str) -> bool:
        node = self._node(word)
        return node is not None and None in node

    def allows(self, text: str, *, complete: bool = False) -> bool:
        """Whether ``text`` can still be extended into words of the list (``complete``: already is)."""
        *done, last = text.split(" ")
        if not all(self.is_word(w) for w in done):
            return False
        return self.is_word(last) if complete else self._node(last) is not None


class CharNgramLM:
    """Character n-gram language model with add-k smoothing.

    ``score(prev_chars, next_char) = log (count(ctx + next) + k) / (count(ctx) + k * |V|)`` where
    ``ctx`` is the last ``order - 1`` characters (padded with a start symbol) and ``|V|`` the
    characters seen in ``fit`` plus one for unseen characters.
    """

    START = "\x02"

    def __init__(self, order: int = 3, *, k: float = 0.1):
        if order < 1 or k <= 0:
            raise ValueError(f"CharNgramLM expects order >= 1 and k > 0, got order={order}, k={k}")
        self.order, self.k = order, k
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.context_totals: dict[str, int] = defaultdict(int)
        self.vocab: set[str] = set()

    def _context(self, prev_chars: str) -> str:
        n = self.order - 1
        return (self.START * n + prev_chars[-n:])[-n:] if n else ""  # sliced first: a long text is not copied

    def fit(self, texts: Iterable[str]) -> "CharNgramLM":
        for text in texts:
            self.vocab.update(text)
            n = self.order - 1
            for i, ch in enumerate(text):
                ctx = self._context(text[max(0, i - n):i])  # the last n characters, not the whole prefix
                self.counts[ctx][ch] += 1
                self.context_totals[ctx] += 1
        return self

    def score(self, prev_chars: str, next_char: str) -> float:
        ctx = self._context(prev_chars)
        count = self.counts[ctx][next_char] if ctx in self.counts else 0
        return math.log((count + self.k) / (self.context_totals.get(ctx, 0) + self.k * (len(self.vocab) + 1)))


# ---------------------------------------------------------------- prefix beam search

def beam_search(log_probs: Union[torch.Tensor, np.ndarray], beam_width: int = 10, *,
                lexicon: Union[Lexicon, Iterable[str], None] = None, char_lm: Optional[CharNgramLM] = None,
                lm_weight: float = 0.5, alphabet: Optional[Sequence[str]] = None,
                length: Optional[int] = None, prune: float = PRUNE) -> list[int]:
    """CTC prefix beam search over ``(T, V)`` log-probabilities (blank = 0); returns labels.

    Each prefix keeps the log-probability of all alignments ending in a blank and ending in its
    last label, so alignments of the same labelling add up (unlike the best path). With a
    ``lexicon`` (a :class:`Lexicon` or a word list), extensions whose text is not a prefix of
    words of the list are dropped, and final texts that end mid-word are used only if no complete
    one survives. With a ``char_lm``, each extension adds ``lm_weight * char_lm.score(text, char)``.
    ``alphabet`` (label ``k`` -> ``alphabet[k-1]``) is required with ``lexicon`` or ``char_lm``.

    At each frame only labels that some model gives at least ``prune`` probability extend a prefix
    (besides repeating its last label): on a real line most frames are sure of the blank and a few
    characters, and the rest cannot enter a beam anyway. ``prune=0`` tries every label.

    ``(K, T, V)`` log-probabilities of K models (an ensemble's members) search jointly: every prefix
    keeps each model's two sums over its own alignments, and prefixes rank by the sum of the models'
    log-probabilities, a product of experts over texts. Frame averages would mix one model's
    character with another's blank where their alignments differ; this does not.
    """
    lp = log_probs.detach().cpu().double().numpy() if isinstance(log_probs, torch.Tensor) else np.asarray(log_probs)
    if lp.ndim not in (2, 3):
        raise ValueError(f"beam_search expects log-probabilities (T, V) or (K, T, V), got shape {lp.shape}")
    lp = lp[None] if lp.ndim == 2 else lp  # (T, V) -> (1, T, V)
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if (lexicon is not None or char_lm is not None) and alphabet is None:
        raise ValueError("beam_search needs the alphabet to apply a lexicon or a character LM")
    if alphabet is not None and len(alphabet) + 1 != lp.shape[2]:
        raise ValueError(f"expected {len(alphabet) + 1} labels (blank + alphabet), got {lp.shape[2]}")
    if lexicon is not None and not isinstance(lexicon, Lexicon):
        lexicon = Lexicon(lexicon)
    text = (lambda prefix: "".join(alphabet[k - 1] for k in prefix)) if alphabet is not None else None
    models, frames, labels = lp.shape
    steps = frames if length is None else int(length)
    lm_share = lm_weight / models  # the LM's score counts once in the sum over models

    def ranked(entries: dict) -> list:
        """``entries`` best first by the sum over models of log p(prefix); ties keep their order."""
        keys = list(entries)
        sums = np.array([entries[k] for k in keys])  # (N, 2, K)
        order = np.argsort(-np.logaddexp(sums[:, 0], sums[:, 1]).sum(1), kind="stable")
        return [(keys[i], entries[keys[i]]) for i in order]

    # prefix (tuple of labels) -> (2, K): log p of its alignments ending in a blank / in its last label
    beams: dict[tuple, np.ndarray] = {(): np.stack([np.zeros(models), np.full(models, NEG_INF)])}
    lm_cache: dict[str, np.ndarray] = {}

    def lm_scores(context: str) -> np.ndarray:
        """``lm_share * log p(ch | context)`` for every character of the alphabet (computed once per context)."""
        if context not in lm_cache:
            lm_cache[context] = lm_share * np.array([char_lm.score(context, ch) for ch in alphabet])
        return lm_cache[context]

    floor = math.log(prune) if prune > 0 else -math.inf
    for t in range(steps):  # sequential by nature: each step extends the surviving prefixes
        frame = lp[:, t]  # (K, V)
        likely = [label for label in range(1, labels) if frame[:, label].max() >= floor]
        nxt: dict[tuple, np.ndarray] = {}

        def add(prefix: tuple, sums: np.ndarray) -> None:
            old = nxt.get(prefix)
            nxt[prefix] = sums if old is None else np.logaddexp(old, sums)

        for prefix, (p_b, p_nb) in beams.items():
            p_all = np.logaddexp(p_b, p_nb)
            # a blank, or the last label repeated without a blank between
            add(prefix, np.array([p_all + frame[:, BLANK], p_nb + frame[:, prefix[-1]] if prefix else p_nb]))
            extensions = np.full((labels - 1, 2, models), NEG_INF)  # each label after the prefix: (2, K)
            extensions[:, 1] = (p_all[:, None] + frame[:, 1:]).T
            if prefix:  # the last label again starts a new character only after a blank
                extensions[prefix[-1] - 1, 1] = p_b + frame[:, prefix[-1]]
            if char_lm is not None:
                extensions[:, 1] += lm_scores(text(prefix))[:, None]
            for label in (likely if not prefix or prefix[-1] in likely else [*likely, prefix[-1]]):
                extended = prefix + (label,)
                if lexicon is None or lexicon.allows(text(extended)):
                    add(extended, extensions[label - 1])
        beams = dict(ranked(nxt)[:beam_width])

    best = list(beams.items())  # already best first: each step keeps ranked(...)[:beam_width] in order
    if lexicon is not None:
        complete = [kv for kv in best if lexicon.allows(text(kv[0]), complete=True)]
        best = complete or best
    return list(best[0][0])


# ---------------------------------------------------------------- the task

def required_frames(target_lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fewest frames CTC needs per target: its length plus its adjacent repeats. Concatenated targets."""
    ends = torch.cumsum(target_lengths, 0)  # (B,) end offset of each target in `targets`
    same = torch.zeros_like(targets, dtype=torch.bool)
    same[1:] = targets[1:] == targets[:-1]
    same[(ends - target_lengths)[target_lengths > 0]] = False  # a target's first label repeats nothing
    sample = torch.repeat_interleave(torch.arange(len(target_lengths)), target_lengths.cpu())  # (S,)
    repeats = torch.zeros_like(target_lengths).index_add_(0, sample.to(targets.device), same.long())
    return target_lengths + repeats


def _concatenated(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Padded (B, S) or concatenated (S,) targets -> concatenated (S,)."""
    if targets.dim() == 1:
        return targets
    mask = torch.arange(targets.shape[1], device=targets.device)[None, :] < target_lengths[:, None]
    return targets[mask]  # (B, S) -> (sum of lengths,)


def name_unseen(unseen: dict[str, int], what: str) -> None:
    """Warn once that ``what`` texts use the ``unseen`` characters (``{character: count}``) that no
    training text has; validations over those texts then do not name the same characters again."""
    if unseen:
        log.warning("%s texts use %d character%s that no training text has (%s): they count as errors", what,
                    len(unseen), "" if len(unseen) == 1 else "s",
                    ", ".join(repr(c) for c in list(unseen)[:20]) + (", ..." if len(unseen) > 20 else ""))
        _NAMED.update(unseen)


class CTCMetrics(MetricAccumulator):
    """Mean loss per included sequence, CER and WER of greedy decoding, skipped targets, and
    ``unseen_chars``: reference characters outside the model's alphabet (they count as errors)."""

    def __init__(self, task: "CTCTask"):
        self.task = task
        self.loss_sum, self.loss_n, self.skipped, self.lines = 0.0, 0, 0, 0
        self.char_edits = self.chars = self.word_edits = self.words = 0
        self.unseen: dict[str, int] = {}

    @torch.no_grad()
    def update(self, out: ModelOutput, batch: dict) -> None:
        batch = self.task.with_targets(batch)
        for text in batch.get("texts") or ():
            for ch in text:
                if ch not in self.task.index:
                    self.unseen[ch] = self.unseen.get(ch, 0) + 1
        losses, keep = self.task.per_sequence_loss(out, batch)
        self.loss_sum += float(losses.sum())
        self.loss_n += int(keep.sum())
        self.skipped += int((~keep).sum())
        self.lines += int(keep.numel())
        hyps = self.task.decode(out)
        refs = batch.get("texts") or self.task.texts_from_targets(batch)
        for unit, attr in (("char", "char"), ("word", "word")):
            edits, total = error_counts(refs, hyps, unit=unit)
            setattr(self, f"{attr}_edits", getattr(self, f"{attr}_edits") + edits)
            setattr(self, f"{attr}s", getattr(self, f"{attr}s") + total)

    def compute(self) -> dict[str, float]:
        if self.unseen and not set(self.unseen) <= _NAMED:
            shown = ", ".join(f"{ch!r} x{n}" for ch, n in sorted(self.unseen.items(), key=lambda kv: -kv[1])[:20])
            n = sum(self.unseen.values())
            message = (f"{n} reference character{' is' if n == 1 else 's are'} not in the model's alphabet and "
                       f"count{'s' if n == 1 else ''} as errors: {shown}")
            if message not in _WARNED:  # the same validation set at every validation: said once
                _WARNED.add(message)
                log.warning("%s", message)
        return {"loss": self.loss_sum / max(self.loss_n, 1),
                "cer": self.char_edits / max(self.chars, 1),
                "wer": self.word_edits / max(self.words, 1),
                "skipped_too_long": float(self.skipped), "lines": float(self.lines),
                "unseen_chars": float(sum(self.unseen.values())), "chars": float(self.chars)}


class CTCTask(Task):
    """Text recognition with CTC.

    Batch: ``targets`` int64 labels (concatenated ``(S,)`` or padded ``(B, S)``), ``target_lengths``
    ``(B,)``, ``texts`` (list of str, the references for CER/WER) and ``ids``.
    Model output: ``y`` ``(B, T, V)`` logits, ``lengths`` ``(B,)`` valid frames (all ``T`` if None).

    ``reduction='mean'`` (default) divides each sequence's loss by its target length and averages
    over the included sequences (``ctc_loss``'s ``'mean'``); ``'sequence'`` averages the per-sequence
    losses (nats per line). Sequences whose target cannot fit their frames are excluded and counted
    in ``skipped_too_long``; if a whole batch is excluded the loss is a zero connected to the graph.
    """

    name = "ctc"
    monitor = "cer"
    monitor_mode = "min"
    unit = "lines"
    counts = {"skipped_too_long": "lines", "unseen_chars": "chars"}
    output_ndim = 3  # label logits at every frame
    ensemble_combine = "labellings"  # members decoded jointly (convrnn.infer.views), not averaged per frame

    def __init__(self, alphabet: Sequence[str], *, reduction: str = "mean", normalize: Optional[str] = None,
                 bidi: Optional[str] = None):
        alphabet = list(alphabet)
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"CTC needs a non-empty alphabet of distinct symbols, got {alphabet!r}")
        if reduction not in ("mean", "sequence"):
            raise ValueError(f"reduction must be 'mean' or 'sequence', got {reduction!r}")
        self.alphabet, self.reduction = alphabet, reduction
        # the Unicode normal form of the texts the model learned (NFC, NFD, NFKC, NFKD), which word lists
        # and language-model texts are put in; None or "none": taken as they are
        self.normalize = normalize if normalize in ("NFC", "NFD", "NFKC", "NFKD") else None
        # the paragraph direction ("L" or "R") texts are put in display order with for the labels, and
        # readings back in logical order (convrnn.data.text.display_order); None: texts taken as they are
        if bidi not in (None, "L", "R"):
            raise ValueError(f"bidi must be 'L', 'R' or None, got {bidi!r}")
        self.bidi = bidi
        self.index = {ch: k + 1 for k, ch in enumerate(alphabet)}
        self.search: Optional[dict] = None  # beam search settings (with_decoding); None: greedy
        self.skipped_too_long = 0

    @property
    def num_outputs(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        """The labels of ``text``, in the order the model reads them (``visual``)."""
        text = self.visual(text)
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"text {text!r} has characters outside the alphabet: {unknown}")
        return [self.index[ch] for ch in text]

    def to_text(self, labels: Iterable[int]) -> str:
        return "".join(self.alphabet[k - 1] for k in labels)

    def visual(self, text: str) -> str:
        """A text as the model reads it: in display order, left to right (the text itself without bidi)."""
        return display_order(text, self.bidi) if self.bidi else text

    def reading(self, labels: Iterable[int]) -> str:
        """A decoded label sequence as text in the form the references have: whitespace runs collapsed to
        one space, none at either end (every reader of transcriptions normalises them so), and in
        logical order (with bidi)."""
        text = " ".join(self.to_text(labels).split())
        return logical_order(text, self.bidi) if self.bidi else text

    def with_targets(self, batch: dict) -> dict:
        """``batch`` with ``targets`` and ``target_lengths`` encoded from its ``texts`` (when it has none):
        characters outside the alphabet are left out of the targets, so the loss stays defined, but
        stay in the references, so CER and WER count them as errors."""
        if "targets" in batch:
            return batch
        labels = [[self.index[ch] for ch in self.visual(text) if ch in self.index] for text in batch["texts"]]
        flat = [k for lab in labels for k in lab]
        return {**batch, "targets": torch.tensor(flat, dtype=torch.long),
                "target_lengths": torch.tensor([len(lab) for lab in labels], dtype=torch.long)}

    def count(self, batch: dict) -> int:
        return len(batch["texts"]) if "texts" in batch else int(batch["target_lengths"].numel())

    def texts_from_targets(self, batch: dict) -> list[str]:
        targets, lengths = _concatenated(batch["targets"], batch["target_lengths"]), batch["target_lengths"]
        texts = [self.to_text(t.tolist()) for t in torch.split(targets.cpu(), lengths.cpu().tolist())]
        return [logical_order(t, self.bidi) for t in texts] if self.bidi else texts

    def _check_output(self, out: ModelOutput) -> torch.Tensor:
        if out.y.dim() != 3 or out.y.shape[-1] != self.num_outputs:
            raise ValueError(f"CTC expects logits (B, T, {self.num_outputs}) for {len(self.alphabet)} symbols "
                             f"+ blank, got shape {tuple(out.y.shape)}")
        b, t, _ = out.y.shape
        return torch.full((b,), t, dtype=torch.long, device=out.y.device) if out.lengths is None else out.lengths

    def per_sequence_loss(self, out: ModelOutput, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``(K,)`` of the included sequences (already divided by target length for 'mean')
        and the ``(B,)`` mask of included ones. Warns about and counts the excluded ones. For an
        ensemble's output (``out.members``), each sequence's loss is the mean of its members' losses."""
        batch = self.with_targets(batch)
        frames = self._check_output(out).long()
        target_lengths = batch["target_lengths"].long().to(frames.device)
        targets = _concatenated(batch["targets"], batch["target_lengths"]).long().to(frames.device)
        keep = required_frames(target_lengths, targets) <= frames  # (B,)
        if not keep.all():
            dropped = (~keep).nonzero().flatten().tolist()
            ids = batch.get("ids")
            names = [str(ids[i]) if ids is not None else f"#{i}" for i in dropped]
            self.skipped_too_long += len(dropped)
            log.warning("CTC: %d of %d targets need more frames than the output has and are left out of the "
                        "loss (ids: %s)", len(dropped), len(keep), ", ".join(names[:10]))
        if not keep.any():
            return out.y.new_zeros(0, dtype=torch.float32), keep
        sample = torch.repeat_interleave(keep, target_lengths)  # (S,) which labels belong to kept targets
        outputs = [out.y] if out.members is None else list(out.members)
        losses = torch.stack([
            F.ctc_loss(F.log_softmax(y.float(), dim=-1).transpose(0, 1)[:, keep],  # (B, T, V) -> (T, B, V)
                       targets[sample], frames[keep], target_lengths[keep], blank=BLANK, reduction="none",
                       zero_infinity=False)  # (K,)
            for y in outputs]).mean(0)
        if self.reduction == "mean":
            losses = losses / target_lengths[keep].clamp(min=1)
        return losses, keep

    def loss(self, out: ModelOutput, batch: dict) -> torch.Tensor:
        losses, _ = self.per_sequence_loss(out, batch)
        return losses.mean() if len(losses) else out.y.sum() * 0.0

    def new_metrics(self) -> CTCMetrics:
        return CTCMetrics(self)

    def state_dict(self) -> dict:
        return {"alphabet": list(self.alphabet)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CTCTask":
        return cls(state["alphabet"])

    def with_decoding(self, *, beam: Optional[int] = None, lexicon: Union[str, Lexicon, None] = None,
                      lm: Union[str, CharNgramLM, None] = None, lm_order: int = 3, lm_weight: float = 0.5) -> "CTCTask":
        """This task decoding by prefix beam search of width ``beam`` (10 when only a word list or a
        language model is given), restricted to the words of ``lexicon`` (a Lexicon, or a file of
        words), scored with a character n-gram ``lm`` (a CharNgramLM, or a UTF-8 text file to fit one of
        ``lm_order`` on); the same task, greedy, when none is given. Metrics (CER, WER) then use it.
        Files are put in the task's normal form first (an accented word written decomposed would never
        match a reading of composed text); words the alphabet cannot write are left out, with a warning."""
        if not beam and lexicon is None and lm is None:
            return self
        normal = (lambda t: unicodedata.normalize(self.normalize, t)) if self.normalize else (lambda t: t)
        form = lambda t: self.visual(normal(t))  # noqa: E731  (the search runs in display order)
        if isinstance(lexicon, str):
            # a word's punctuation goes with the word's own direction, as it stands inside a line
            words = sorted({display_order(normal(w), first_strong(w) or self.bidi) if self.bidi else normal(w)
                            for w in word_list(lexicon)})
            usable = [w for w in words if set(w) <= set(self.alphabet)]
            if not usable:  # every reading would come out empty
                none = "its one word cannot" if len(words) == 1 else f"none of its {len(words):,} words can"
                raise ConfigError(f"{lexicon}: {none} be written with the model's "
                                  f"alphabet ({''.join(self.alphabet)[:60]!r})")
            if len(usable) < len(words):
                unusable = [w for w in words if not set(w) <= set(self.alphabet)]
                missing = sorted({ch for w in unusable for ch in w} - set(self.alphabet))
                log.warning("%s: %s of %s words use characters the model cannot write (%s) and are left out, "
                            "e.g. %r", lexicon, f"{len(unusable):,}", f"{len(words):,}", "".join(missing)[:40],
                            unusable[0])
            lexicon = Lexicon(usable)
        if isinstance(lm, str):
            text = "\n".join(form(line) for line in text_file(lm).splitlines())
            if not set(text) & (set(self.alphabet) - {" "}):  # an empty text fits a model that scores nothing
                raise ConfigError(f"{lm}: the language-model text has no character of the model's alphabet"
                                  + ("" if text.strip() else " (it is empty)"))
            lm = CharNgramLM(lm_order).fit(text.splitlines())
        task = copy.copy(self)
        task.search = {"beam_width": beam or 10, "lexicon": lexicon, "char_lm": lm, "lm_weight": lm_weight}
        return task

    @torch.inference_mode()
    def decode(self, out: ModelOutput) -> list[str]:
        """Greedy transcription of every sequence of the batch; an ensemble's (``out.members``) is
        decoded jointly by a beam search of width ``ENSEMBLE_BEAM`` over its members (``beam_search``).
        A task made by :meth:`with_decoding` searches every sequence (members jointly) instead."""
        if self.search is not None:
            frames = self._check_output(out).tolist()
            logits = out.y if out.members is None else out.members.transpose(0, 1)  # (B, [K,] T, V)
            return [self.beam_decode(logits[b], length=frames[b], **self.search) for b in range(logits.shape[0])]
        if out.members is None:
            return [self.reading(labels) for labels in greedy_decode_batch(out.y, out.lengths)]
        log_probs = F.log_softmax(out.members.float(), dim=-1)  # (K, B, T, V)
        frames = self._check_output(out).tolist()
        return [self.reading(beam_search(log_probs[:, b], ENSEMBLE_BEAM, length=frames[b]))
                for b in range(log_probs.shape[1])]

    @torch.inference_mode()
    def beam_decode(self, logits: torch.Tensor, length: Optional[int] = None, **kwargs) -> str:
        """Prefix beam search on one sequence of logits ``(T, V)``, or ``(K, T, V)`` of an ensemble's
        members (searched jointly); keywords go to :func:`beam_search`."""
        log_probs = F.log_softmax(logits.float(), dim=-1)
        return self.reading(beam_search(log_probs, alphabet=self.alphabet, length=length, **kwargs))
