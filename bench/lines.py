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
- ``lines_vs_kraken``: kraken's test CER divided by convrnn's, both trained on the same folder of
  digit lines (written out by convrnn) for the same wall-clock budget; kraken runs from its own
  virtual environment (``/tmp/kraken-venv`` or ``$KRAKEN_VENV``) through ``ketos train`` / ``ketos test``.

Every training run goes through the recipe's normal path (``runner.train`` with ``train.max_time``).
"""
# B batch
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import SHARED_DATA, native_bf16

DIGITS_SECONDS = 540.0   # training seconds; with data and validation the run stays within 10 minutes
TEXT_SECONDS = 1200.0
KRAKEN_SECONDS = 600.0
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


# ------------------------------------------------------------------------------------------- kraken

def _kraken_venv() -> Path:
    return Path(os.environ.get("KRAKEN_VENV", "/tmp/kraken-venv"))


def _ketos(*args: str, timeout: float, cwd: str) -> subprocess.CompletedProcess:
    ketos = _kraken_venv() / "bin" / "ketos"
    cmd = [str(ketos), "--threads", str(THREADS), "-d", "cpu", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _kraken_train(train_dir: Path, val_dir: Path, out: Path, budget: float) -> tuple[Path | None, float, str]:
    """``ketos train`` for ``budget`` wall seconds (then interrupted); the best checkpoint as weights."""
    ketos = _kraken_venv() / "bin" / "ketos"
    val_list = out / "val.txt"
    out.mkdir(parents=True, exist_ok=True)
    val_list.write_text("\n".join(sorted(str(p) for p in val_dir.glob("*.png"))) + "\n")
    cmd = [str(ketos), "--threads", str(THREADS), "-d", "cpu", "train", "-f", "path", "-o", str(out / "model"),
           "-e", str(val_list), "-q", "fixed", "-N", "1000", "-B", "16",
           *sorted(str(p) for p in train_dir.glob("*.png"))]
    t0 = time.perf_counter()
    with open(out / "ketos_train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(out), stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # Lightning stops gracefully on an interrupt
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    ckpts = list((out / "model").glob("checkpoint_*.ckpt"))
    if not ckpts:
        tail = (out / "ketos_train.log").read_text(errors="replace")[-600:]
        return None, wall, f"ketos train left no checkpoint within {budget:.0f} s (log tail: {tail!r})"
    score = lambda p: float(re.findall(r"-([0-9.]+)\.ckpt$", p.name)[0]) if re.search(r"-([0-9.]+)\.ckpt$", p.name) else -1.0  # noqa: E731
    best = max(ckpts, key=lambda p: (score(p), p.stat().st_mtime))
    weights = out / "best.safetensors"
    conv = _ketos("convert", "-o", str(weights), str(best), timeout=300, cwd=str(out))
    if conv.returncode != 0 or not weights.exists():
        return None, wall, f"ketos convert failed (rc {conv.returncode}): {conv.stderr[-400:]}"
    return weights, wall, ""


def _kraken_test(weights: Path, test_dir: Path, cwd: Path) -> tuple[float | None, str]:
    res = _ketos("test", "-f", "path", "-B", "16", "-m", str(weights),
                 *sorted(str(p) for p in test_dir.glob("*.png")), timeout=900, cwd=str(cwd))
    chars = re.search(r"^(\d+)\s+Characters", res.stdout, re.M)
    errors = re.search(r"^(\d+)\s+Errors", res.stdout, re.M)
    if res.returncode != 0 or not chars or not errors:
        return None, f"ketos test failed (rc {res.returncode}): {(res.stderr or res.stdout)[-400:]}"
    return int(errors.group(1)) / max(int(chars.group(1)), 1), ""


def lines_vs_kraken(quick: bool = False) -> dict:
    from convrnn.data.lines import write_line_folder
    from convrnn.data.synthetic_lines import digit_lines

    torch.set_num_threads(THREADS)
    budget = 30.0 if quick else KRAKEN_SECONDS
    sizes = {"train": 300 if quick else 5000, "val": 50 if quick else 500, "test": 100 if quick else 1000}
    result = {"metric": "kraken test CER / convrnn test CER, same folder of digit lines, same wall-clock budget",
              "unit": "ratio", "target": 1.0, "target_text": ">= 1 (convrnn at least as good)", "baseline": None}
    ketos = _kraken_venv() / "bin" / "ketos"
    if not ketos.exists():
        reason = (f"kraken is not installed at {ketos}: create it with `python3 -m venv /tmp/kraken-venv && "
                  f"/tmp/kraken-venv/bin/pip install kraken` (see bench/README.md, 'kraken')")
        return {**result, "value": None, "met": None, "details": {"reason": reason}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mnist = str(SHARED_DATA / "mnist")
        folders = {split: write_line_folder(digit_lines(n, split=split, max_digits=8, mnist_dir=mnist), root / split)
                   for split, n in sizes.items()}
        ours = _train_and_test({"data.data": str(folders["train"]), "data.val": str(folders["val"]),
                                "data.test": str(folders["test"]), "model.preset": "crnn",
                                "train.max_time": budget}, str(root / "convrnn"))
        kraken_budget = ours["wall_seconds_incl_data_and_validation"]
        weights, kraken_wall, reason = _kraken_train(folders["train"], folders["val"], root / "kraken", kraken_budget)
        kraken_cer = None
        if weights is not None:
            kraken_cer, reason = _kraken_test(weights, folders["test"], root / "kraken")
        log_tail = (root / "kraken" / "ketos_train.log").read_text(errors="replace")[-1500:] \
            if (root / "kraken" / "ketos_train.log").exists() else ""
        shutil.rmtree(root / "kraken" / "model", ignore_errors=True)
    our_cer = float(ours["test"]["cer"])
    value = None if kraken_cer is None else kraken_cer / max(our_cer, 1e-4)
    version = subprocess.run([str(ketos), "--version"], capture_output=True, text=True).stdout.strip()
    return {**result, "value": value, "met": None if value is None else value >= 1.0,
            "details": {"convrnn": ours, "kraken_cer": kraken_cer, "kraken_wall_seconds": round(kraken_wall, 1),
                        "kraken_version": version, "kraken_reason": reason or None,
                        "kraken_setup": "default VGSL model, ketos train -f path -B 16 -q fixed, interrupted at "
                                        "convrnn's wall time; best checkpoint by validation accuracy",
                        "kraken_log_tail": log_tail, "lines": sizes, "quick": quick,
                        "ratio_note": "convrnn CER floored at 1e-4 in the ratio"}}
