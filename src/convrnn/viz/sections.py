"""Report sections that several recipes show: for classifiers, the confusion matrix and the most
confident mistakes.

Shape:
    classification evaluation: logits ``(B, V)``, labels ``(B,)``; confusion ``(V, V)`` truth x prediction;
    inputs ``(B, C, H, W)`` ink in 0..1, shown dark on white.
"""
# B batch, C channels, H height, W width, V classes
from __future__ import annotations

import numpy as np
import torch

from convrnn.viz.html import (EvalContext, Section, captioned, esc, evaluate_metrics, figure_img, missing, note, sample_id,
                              table, thumbnail)

MISCLASSIFIED = 16   # misclassified images shown for classification runs


def classify_sections(ctx: EvalContext, *, shown: int = MISCLASSIFIED) -> list[Section]:
    """Classification runs: the confusion matrix of the best checkpoint on the split, and its most confident
    mistakes (up to ``shown`` images with the true and predicted class)."""
    from convrnn.viz.confusion import confusion_figure
    classes = list(ctx.ckpt["meta"].get("classes") or ctx.task.classes)
    wrong = []  # (-probability, true index, predicted index, id, image (H, W) ink), most confident first

    def keep_mistakes(out, batch) -> None:
        probs = out.y.float().softmax(dim=-1)  # (B, V)
        p, pred = probs.max(dim=-1)
        for k in torch.nonzero(pred != batch["y"]).flatten().tolist():
            image = batch["x"][k].reshape(-1, batch["x"].shape[-1])  # (C, H, W) -> (C*H, W); C is 1 here
            wrong.append((-float(p[k]), int(batch["y"][k]), int(pred[k]), sample_id(batch, k), image.numpy().copy()))
        wrong.sort(key=lambda w: w[0])  # stable: ties stay in data order
        del wrong[shown:]

    acc = evaluate_metrics(ctx, keep_mistakes)
    confusion = getattr(acc, "confusion", None)
    if confusion is None:
        return [missing("Confusion matrix", f"the {ctx.task.name} task's metrics keep no confusion matrix")]
    counts = confusion.cpu().numpy()
    n = int(counts.sum())
    errors = n - int(np.trace(counts))
    accuracy = float(np.trace(counts)) / max(n, 1)
    fig = confusion_figure(counts, classes, title=f"{ctx.split}: {n} samples, accuracy {accuracy:.3f}")
    body = (figure_img(fig, "confusion matrix", css_class="wide")
            + note(f"Best checkpoint on {n} {ctx.split} samples (at most {ctx.max_batches} batches). "
                   "Rows: true class, columns: predicted class; cells show counts, colour the row share."))
    per_class = [(c, int(counts[i].sum()), f"{counts[i, i] / max(counts[i].sum(), 1):.3f}")
                 for i, c in enumerate(classes)]
    body += table(["class", "samples", "recall"], per_class, numeric=(1, 2))
    sections = [Section("Confusion matrix", body, "confusion")]
    if wrong:
        tiles = "".join(captioned("sample", thumbnail(image, f"{ctx.split} sample {sid}: {classes[t]} read as {classes[q]}"),
                                  f'true <b>{esc(classes[t])}</b><br>predicted <b>{esc(classes[q])}</b> '
                                  f'<span class="p">(p {-neg_p:.2f})</span>')
                        for neg_p, t, q, sid, image in wrong)
        shown_note = (f"The {len(wrong)} most confident of the {errors} misclassified {ctx.split} samples"
                      if errors > len(wrong) else f"All {errors} misclassified {ctx.split} samples")
        mistakes = (f'<div class="samples">{tiles}</div>'
                    + note(f"{shown_note} (errors {errors}/{n}), the most confident first; p is the "
                           "probability the best checkpoint gave its (wrong) prediction."))
    else:
        mistakes = note(f"No misclassified samples: the best checkpoint reads all {n} {ctx.split} samples right.")
    sections.append(Section("Misclassified examples", mistakes, "misclassified"))
    return sections
