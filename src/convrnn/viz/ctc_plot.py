"""CTC alignments under the line image: per-frame character probabilities, one curve per character.

Frame ``t`` of ``T`` valid frames covers columns ``[t * W / T, (t + 1) * W / T)`` of a ``W``-pixel
line, so the probability axis shares the image's x axis: a peak sits under the glyph it reads.
"""
# H height, W width, T frames, V labels (blank + alphabet)
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from convrnn.files import atomic_write_with, check_writable

BLANK = 0


def frame_centers(num_frames: int, width: int) -> np.ndarray:
    """The x (pixel) centre of each of ``num_frames`` frames spread over ``width`` pixels: ``(T,)``."""
    step = width / max(num_frames, 1)
    return (np.arange(num_frames) + 0.5) * step


def characters_to_show(probs: np.ndarray, alphabet: Sequence[str], *, threshold: float = 0.1,
                       limit: int = 12) -> list[int]:
    """Labels (>= 1) that win a frame (what greedy decoding emits), then those whose probability reaches
    ``threshold`` on some frame, each group most confident first: an untrained model's winners, all far
    below the threshold, are drawn too."""
    peaks = probs[:, 1:].max(axis=0)  # (T, V) -> (V-1,)
    winners = {int(k) for k in probs.argmax(axis=1) if k != BLANK}
    ranked = [int(k) + 1 for k in np.argsort(-peaks, kind="stable")]
    order = [k for k in ranked if k in winners] + [k for k in ranked if k not in winners and peaks[k - 1] >= threshold]
    return order[:limit]


def plot_ctc(image: np.ndarray, probs: np.ndarray, alphabet: Sequence[str], out_png: str | Path, *,
             text: Optional[str] = None, title: Optional[str] = None) -> Path:
    """Draw ``image`` (uint8 ``(H, W)``, ink bright) over ``probs`` (``(T, V)`` per-frame softmax,
    label 0 the blank) and write ``out_png`` atomically. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_writable(out_png, png=True)  # an unwritable ``out_png`` fails before any drawing
    if probs.ndim != 2 or probs.shape[1] != len(alphabet) + 1:
        raise ValueError(f"expected probabilities (T, {len(alphabet) + 1}) for {len(alphabet)} characters "
                         f"+ blank, got shape {probs.shape}")
    height, width = image.shape
    t = frame_centers(probs.shape[0], width)
    fig_w = min(max(6.0, width / 40.0), 30.0)
    fig, (ax_img, ax_p) = plt.subplots(2, 1, sharex=True, figsize=(fig_w, 4.2),
                                       gridspec_kw={"height_ratios": [max(height / width * fig_w, 0.6), 2.2]})
    ax_img.imshow(255 - image, cmap="gray", aspect="auto", extent=(0, width, height, 0), vmin=0, vmax=255)
    ax_img.set_yticks([])
    ax_img.set_title(title or (f"greedy: {text!r}" if text is not None else "CTC alignment"), fontsize=10)
    for edge in np.arange(probs.shape[0] + 1) * (width / max(probs.shape[0], 1)):
        ax_img.axvline(edge, color="tab:blue", alpha=0.15, linewidth=0.5)
    ax_p.plot(t, probs[:, BLANK], color="0.6", linestyle="--", linewidth=1.0, label="blank")
    cmap = plt.get_cmap("tab20")
    best = probs.argmax(axis=1)
    for n, label in enumerate(characters_to_show(probs, alphabet)):
        color = cmap(n % 20)
        ax_p.plot(t, probs[:, label], color=color, linewidth=1.3, label=repr(alphabet[label - 1]))
        wins = best == label
        starts = wins & np.concatenate([[True], ~wins[:-1]])  # first frame of each run the label wins
        for frame in np.flatnonzero(starts):  # name the character where CTC emits it
            ax_p.annotate(alphabet[label - 1], (t[frame], probs[frame, label]), textcoords="offset points",
                          xytext=(0, 3), ha="center", fontsize=8, color=color)
    top = float(probs.max())
    ax_p.set_ylim(0, 1.08 if top > 0.5 else top * 1.25)  # a flat, unsure model's curves stay visible
    if top <= 0.5:
        ax_p.set_title(f"no probability exceeds {top:.2g} on any frame: the model is still unsure (early "
                       f"training?)", fontsize=8, loc="left")
    ax_p.set_xlim(0, width)
    ax_p.set_xlabel("x (pixels of the scaled line); one tick per frame")
    ax_p.set_ylabel("p(label | frame)")
    ax_p.set_xticks(t, minor=True)
    ax_p.legend(loc="upper right", fontsize=7, ncol=min(6, 1 + len(ax_p.lines) // 2), framealpha=0.8)
    fig.tight_layout()
    out = Path(out_png)
    try:
        # through the one safe writer: a symlink's target gets the PNG, a folder, FIFO or device at
        # ``out`` is refused (never replaced), and a failure leaves no temporary file behind
        atomic_write_with(out, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return out
