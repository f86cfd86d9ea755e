"""Edit distance and the text error rates built on it: CER (characters) and WER (words).

``cer`` and ``wer`` are corpus-level rates: total edits over total reference length, not the mean
of per-line rates, so long lines weigh more (the usual OCR/HTR convention).
"""
from __future__ import annotations

from typing import Hashable, Sequence


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``.

    Works on any sequences of hashable items (strings, lists of words, lists of label ids).
    Time ``O(len(a) * len(b))``, memory ``O(len(b))``.
    """
    if len(a) < len(b):
        a, b = b, a  # keep the row short
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i]
        for j, item_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1,  # delete item_a
                               current[j - 1] + 1,  # insert item_b
                               previous[j - 1] + (item_a != item_b)))  # substitute or keep
        previous = current
    return previous[-1]


def error_counts(refs: Sequence[str], hyps: Sequence[str], *, unit: str = "char") -> tuple[int, int]:
    """Total edits and total reference length over pairs of texts, in characters or whitespace words."""
    if len(refs) != len(hyps):
        raise ValueError(f"expected as many hypotheses as references, got {len(hyps)} and {len(refs)}")
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    edits = total = 0
    for ref, hyp in zip(refs, hyps):
        r, h = (ref, hyp) if unit == "char" else (ref.split(), hyp.split())
        edits += edit_distance(r, h)
        total += len(r)
    return edits, total


def _rate(edits: int, total: int) -> float:
    # No reference characters at all: report the raw edit count rather than divide by zero.
    return edits / total if total else float(edits)


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate: total character edits / total reference characters (may exceed 1)."""
    return _rate(*error_counts(refs, hyps, unit="char"))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate on whitespace-separated tokens: total word edits / total reference words."""
    return _rate(*error_counts(refs, hyps, unit="word"))
