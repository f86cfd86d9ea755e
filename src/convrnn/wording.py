"""Small helpers for the wording of user-facing messages."""
from __future__ import annotations


def plural(n: int, word: str) -> str:
    """A count and its noun, singular for exactly one: ``1 step``, ``3,750 steps``. ``word`` is the
    singular; the plural adds an ``s`` (give nouns whose plural is regular)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
