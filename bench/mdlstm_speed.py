"""MDLSTM speed: anti-diagonal MDLSTM2d against the obvious per-cell loop, forward + backward.

Workload: 8 text lines of 32x256, 4 scanning directions, 16 units per direction, 1 input channel,
2 CPU threads. The per-cell loop (one small matmul per cell and direction, like the reference in
tests/test_mdlstm.py, in float32) takes minutes at full width, so it runs on the first
``BASELINE_COLUMNS`` columns and its time is scaled by ``256 / BASELINE_COLUMNS``: its cost per
cell does not depend on the width, so linear scaling is fair to it.
"""
# B batch, C channels, H height, W width, N hidden units
from __future__ import annotations

import json
import time

import torch

from convrnn.layers.mdlstm import SCAN_DIRECTIONS, MDLSTM2d

BATCH, CHANNELS, HEIGHT, WIDTH, HIDDEN, DIRECTIONS = 8, 1, 32, 256, 16, 4
BASELINE_COLUMNS = 16
TARGET = 20.0


def per_cell_mdlstm(m: MDLSTM2d, x: torch.Tensor) -> torch.Tensor:
    """Per-cell 2-D LSTM: a Python loop over every (direction, i, j); (B, C, H, W) -> (B, D*N, H, W)."""
    b, _, height, width = x.shape
    zero = x.new_zeros(b, m.hidden_size)
    outs = []
    for k, (flip_h, flip_w) in enumerate(SCAN_DIRECTIONS[:m.directions]):
        dims = [d for d, f in ((2, flip_h), (3, flip_w)) if f]
        xk = x.flip(dims) if dims else x
        h, c = {}, {}
        for i in range(height):
            for j in range(width):
                z = (xk[:, :, i, j] @ m.weight_ih[k].T + h.get((i, j - 1), zero) @ m.weight_hh_left[k].T
                     + h.get((i - 1, j), zero) @ m.weight_hh_up[k].T + m.bias[k])
                gi, gfl, gfu, go, gg = z.chunk(5, dim=1)
                c[i, j] = (torch.sigmoid(gfl) * c.get((i, j - 1), zero) + torch.sigmoid(gfu) * c.get((i - 1, j), zero)
                           + torch.sigmoid(gi) * torch.tanh(gg))
                h[i, j] = torch.sigmoid(go) * torch.tanh(c[i, j])
        rows = [torch.stack([h[i, j] for j in range(width)], dim=-1) for i in range(height)]  # H x (B, N, W)
        hk = torch.stack(rows, dim=-2)  # -> (B, N, H, W)
        outs.append(hk.flip(dims) if dims else hk)
    return torch.cat(outs, dim=1)


def _time_fwd_bwd(fn, x: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` forward + backward wall times, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        x = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        fn(x).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = MDLSTM2d(CHANNELS, HIDDEN, directions=DIRECTIONS)
    x = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH)
    repeats = 1 if quick else 3

    _time_fwd_bwd(m, x[..., :32], 1)  # warm-up
    fast = _time_fwd_bwd(m, x, repeats)

    columns = BASELINE_COLUMNS // 2 if quick else BASELINE_COLUMNS
    with torch.no_grad():  # the two implementations agree on the timed subset
        gap = (per_cell_mdlstm(m, x[..., :columns]) - m(x[..., :columns])).abs().max().item()
    slow_subset = _time_fwd_bwd(lambda t: per_cell_mdlstm(m, t), x[..., :columns], 1)
    slow = slow_subset * WIDTH / columns

    torch.set_num_threads(1)  # for reference: small per-step ops gain little from a second thread
    fast_one_thread = _time_fwd_bwd(m, x, repeats)
    torch.set_num_threads(2)

    ratio = slow / fast
    return {
        "name": "mdlstm_speedup",
        "metric": "forward+backward time ratio per-cell / anti-diagonal",
        "value": ratio, "unit": "x", "target": TARGET, "baseline": slow, "met": ratio >= TARGET,
        "details": {
            "workload": f"batch {BATCH}, {CHANNELS}x{HEIGHT}x{WIDTH} images, {DIRECTIONS} directions, "
                        f"{HIDDEN} units, float32, 2 threads",
            "anti_diagonal_seconds": fast,
            "anti_diagonal_seconds_1_thread": fast_one_thread,
            "anti_diagonal_steps": HEIGHT + WIDTH - 1,
            "note": "wall-clock times on a shared 2-core machine; other jobs running at the same time inflate both sides",
            "per_cell_seconds_estimated": slow,
            "per_cell_seconds_measured": slow_subset,
            "per_cell_note": f"per-cell loop timed on the first {columns} of {WIDTH} columns and scaled "
                             f"linearly by {WIDTH / columns:g} (its cost per cell is constant)",
            "per_cell_steps": DIRECTIONS * HEIGHT * WIDTH,
            "max_abs_difference_on_subset": gap,
            "repeats": repeats, "quick": quick,
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
