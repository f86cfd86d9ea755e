"""Benchmarks of the lines recipe (text-line recognition with CTC).

- ``lines_digits_cer``: test CER of ``crnn`` sized for ten digits (``DIGITS_CRNN``: 16 filters,
  LSTM 96, half the cost of a step of the default) on synthetic strings of 1..8 MNIST digits after at
  most 10 minutes of CPU training (2 threads), as an ensemble of ``ENSEMBLE`` members that share the
  budget (``--ensemble 2``), training lines warped in every batch (``DIGITS_WARP``), each test line
  read at ``SHIFTS`` offsets, all decoded jointly (``convrnn eval RUN --split test --shifts 4``);
  bfloat16 autocast where the CPU computes it natively. The ensemble read once, a single model of the
  same size and training (read once and shifted) and ``pham2014`` trained on the same data with the
  same budget (unwarped, as its committed baseline) are reported in the details.
- ``lines_text_cer``: test CER of ``crnn`` on synthetic printed lines whose texts never occur in
  training, after at most 20 minutes of CPU training.

Every training run goes through the recipe's normal path (``runner.train`` with ``train.max_time``).
"""
# B batch
from __future__ import annotations

import time

import torch

from bench.harness import SHARED_DATA, native_bf16

DIGITS_SECONDS = 540.0   # training seconds; with data and validation the run stays within 10 minutes
TEXT_SECONDS = 1200.0
# pham2014's learning rate: at 1e-3 (the recipe's default until 2026-12-01) it sat on the all-blank
# plateau (CER 1.0) for the first 800 steps of a 200 s run; at 1e-2 it fits a single batch in 100 steps.
# 3e-3 is between, and is now the recipe's default too; it stays pinned here so pham2014's budget
# does not follow a later change of the crnn default.
PHAM_LR = 3e-3
# and so is its optimizer: the recipe's AdamW with decay 0.2 (2026-12-02) was measured on crnn only, so
# pham2014 keeps the Adam without decay that its committed baseline was trained with
PHAM_OPTIMIZER = {"train.optimizer": "adam", "train.weight_decay": 0.0}
THREADS = 2
# lines_digits_cer's model: the crnn preset with 16 filters and LSTM 96 instead of 32 and 128. A step
# costs half the default's on a CPU without bfloat16, and there two of them read better than three
# default members, which get too few steps each (bench/notes/2026-12-02-lines-weight-decay-small-crnn-warps.md)
DIGITS_CRNN = {"filters": 16, "hidden_size": 96}
DIGITS_PRESET = "crnn:" + ",".join(f"{k}={v}" for k, v in DIGITS_CRNN.items())
# and its training lines warped afresh in every batch (a slant of up to 0.1 pixel per pixel of height, a
# bend of up to 1 pixel): unwarped, the small members memorise their lines (the same note)
DIGITS_WARP = {"data.slant": 0.1, "data.bend": 1.0}
ENSEMBLE = 2  # members of 270 s each
SHIFTS = 4  # test lines read at 0..3 pixels of offset: every phase of crnn's 4-pixel frame grid


def _train_and_test(overrides: dict, shifts: int = 1) -> dict:
    """Train the lines recipe with ``overrides``; test CER of the best checkpoint on the test split
    (also read at ``shifts`` offsets and decoded jointly, as ``test_shifted``, when ``shifts`` > 1):
    what `convrnn eval RUN --split test --shifts N` computes."""
    from bench.harness import trained
    from convrnn.infer.evaluate import evaluate
    from convrnn.infer.views import ShiftedViews

    with trained("lines", {**overrides, "train.threads": THREADS}) as (result, loaded, bundle, wall):
        model, task = loaded.model, loaded.task
        test = evaluate(model, task, bundle.test).compute()
        shifted = {}
        if shifts > 1:
            t1 = time.perf_counter()
            shifted = {"test_shifted": evaluate(ShiftedViews(model, shifts), task, bundle.test).compute(),
                       "shifts": shifts, "test_shifted_seconds": round(time.perf_counter() - t1, 1)}
        cfg = loaded.ckpt["config"]["train"]
        return {"test": test, "final_val": dict(result.metrics), "best_val_cer": result.best_metrics.get("cer"),
                "members": int(overrides.get("train.ensemble", 1)),
                "steps": result.step, "training_seconds": round(result.train_time, 1),
                "wall_seconds_incl_data_and_validation": round(wall, 1), "spec": model.spec,
                "optimizer": {"name": cfg["optimizer"], "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]},
                "train_lines": len(bundle.train.dataset), "val_lines": len(bundle.val.dataset),
                "test_lines": len(bundle.test.dataset), **shifted}


def _digits_data(quick: bool) -> dict:
    return {"data.synthetic": "digits", "data.max_digits": 8, "data.mnist_dir": str(SHARED_DATA / "mnist"),
            "data.num_train": 2000 if quick else 20000, "data.num_val": 200 if quick else 1000,
            "data.num_test": 200 if quick else 2000}


def lines_digits_cer(quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    budget = 20.0 if quick else DIGITS_SECONDS
    data = _digits_data(quick)
    precision = "bf16" if native_bf16() else "32"
    crnn = {**data, **DIGITS_WARP, "model.preset": DIGITS_PRESET, "train.max_time": budget,
            "train.precision": precision}
    ensemble = _train_and_test({**crnn, "train.ensemble": ENSEMBLE}, SHIFTS)
    single = _train_and_test(crnn, SHIFTS)
    pham = _train_and_test({**data, "model.preset": "pham2014", "train.max_time": budget, "train.lr": PHAM_LR,
                            **PHAM_OPTIMIZER})
    value = float(ensemble["test_shifted"]["cer"])
    return {
        "metric": f"test CER, synthetic strings of 1..8 MNIST digits, crnn ({DIGITS_CRNN['filters']} filters, LSTM "
                  f"{DIGITS_CRNN['hidden_size']}) --ensemble {ENSEMBLE} (members share the budget), training lines "
                  f"warped (slant {DIGITS_WARP['data.slant']:g}, bend {DIGITS_WARP['data.bend']:g}), each line read at "
                  f"{SHIFTS} offsets, decoded jointly, <= 10 min on 2 CPU threads",
        "value": value, "unit": "fraction", "target": 0.01, "target_text": "<= 0.01", "met": value <= 0.01,
        "baseline": float(pham["test"]["cer"]),
        "baseline_note": "pham2014 (the MDLSTM model of Pham et al. 2014) on the same data with the same training budget",
        "details": {"crnn_ensemble": ensemble, "crnn_single": single,
                    "ensemble_read_once_cer": float(ensemble["test"]["cer"]),
                    "single_cer": float(single["test"]["cer"]), "single_shifted_cer": float(single["test_shifted"]["cer"]),
                    "pham2014": pham, "pham2014_lr": PHAM_LR, "budget_training_seconds": budget,
                    "crnn_precision": precision, "shifts": SHIFTS, "crnn_fields": DIGITS_CRNN,
                    "crnn_warp": DIGITS_WARP,
                    "command": "convrnn train lines --synthetic digits --mnist-dir ../shared/data/mnist"
                               f" --preset {DIGITS_PRESET} --ensemble {ENSEMBLE} --max-time {budget:g} "
                               + " ".join(f"--set {k}={v:g}" for k, v in DIGITS_WARP.items())
                               + (" --precision bf16" if precision == "bf16" else "")
                               + f" --run-dir RUN && convrnn eval RUN --split test --shifts {SHIFTS}",
                    "quick": quick},
    }


def lines_text_cer(quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    budget = 20.0 if quick else TEXT_SECONDS
    data = {"data.synthetic": "text", "data.num_train": 2000 if quick else 30000,
            "data.num_val": 200 if quick else 1000, "data.num_test": 200 if quick else 2000}
    crnn = _train_and_test({**data, "model.preset": "crnn", "train.max_time": budget})
    value = float(crnn["test"]["cer"])
    return {
        "metric": "test CER, synthetic printed lines (5 matplotlib fonts, augmented) of held-out text, crnn",
        "value": value, "unit": "fraction", "target": 0.02, "target_text": "<= 0.02", "met": value <= 0.02,
        "baseline": None, "details": {**crnn, "budget_training_seconds": budget, "quick": quick},
    }
