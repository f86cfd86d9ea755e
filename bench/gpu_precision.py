"""``gpu_precision``: training throughput of every recipe with bf16, fp16 and --compile against fp32.

Each recipe's default preset and batch size train through convrnn's own ``Trainer._train_step`` (the
exact step ``convrnn train`` runs: autocast, GradScaler, clipping, optimizer) on the recipe's real
batches; after warm-up steps (which include compilation) the timed steps give samples/s (chars/s for
charlm). ``float(loss)`` in each step synchronises the GPU, so wall time is honest.

Run on a CUDA machine: ``CONVRNN_MNIST_DIR=<mnist> CONVRNN_CHARLM_TEXT=<input.txt> python -m bench gpu_precision``.
Without MNIST the digits and mnist recipes fall back to scikit-learn's 8x8 digits (noted in details).
On a machine without CUDA it measures on the CPU with bf16 only (not a result: the JSON says so).
"""
# B batch
from __future__ import annotations

import json
import logging
import os
import time

import torch

RECIPES = ("fonts", "digits", "mnist", "lines", "charlm")
MODES = {"fp32": {"train.precision": "32"}, "bf16": {"train.precision": "bf16"},
         "fp16": {"train.precision": "fp16"}, "compile": {"train.precision": "32", "train.compile": True}}
DATA = {  # small data sets: throughput needs batches, not a converged model
    "fonts": {"data.samples_per_font": 400},
    "digits": {},
    "mnist": {},
    "lines": {"data.synthetic": "text", "data.num_train": 512, "data.num_val": 32, "data.num_test": 0},
    "charlm": {},
}

log = logging.getLogger(__name__)


def _bundle(recipe_name: str, device: str):
    from convrnn.recipes import get_recipe
    from convrnn.recipes.runner import seed_everything

    overrides = {"train.device": device, **DATA[recipe_name]}
    if recipe_name == "charlm" and os.environ.get("CONVRNN_CHARLM_TEXT"):
        overrides["data.path"] = os.environ["CONVRNN_CHARLM_TEXT"]
    recipe = get_recipe(recipe_name)
    cfg = recipe.config(overrides)
    recipe.resolve_data(cfg.data)
    seed_everything(0)
    return cfg, recipe, recipe.make_data(cfg.data, cfg.train)


def measure(recipe_name: str, mode: dict, cfg, recipe, bundle, warmup: int, steps: int) -> dict:
    """Units per second of ``steps`` training steps after ``warmup`` ones, through the Trainer."""
    import copy

    from convrnn.train.trainer import Trainer

    cfg = copy.deepcopy(cfg)
    cfg.override(mode)
    torch.manual_seed(0)
    model = recipe.build_model(cfg, bundle)
    trainer = Trainer(model, recipe.make_task(bundle.meta, tuple(model.output_shape)), bundle.train, None, cfg.train)
    batches, epoch = [], 0
    while len(batches) < warmup + steps:  # the same real batches for every mode
        batches.extend(bundle.train.batches(epoch))
        epoch += 1
    total = warmup + steps
    t_start = time.perf_counter()
    units, timed, losses = 0, 0.0, []
    for i, batch in enumerate(batches[:total]):
        if trainer.task.stateful and i == 0:
            trainer.state = None
        if i == warmup:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, n = trainer._train_step(batch, total)
        losses.append(loss)
        if i >= warmup:
            units += n
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    timed = time.perf_counter() - t0
    return {"rate": units / timed, "unit": f"{trainer.task.unit}/s", "warmup_s": t0 - t_start,
            "first_loss": losses[0], "last_loss": losses[-1], "steps": steps}


def run(quick: bool = False) -> dict:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cudnn.benchmark = True
    modes = MODES if cuda else {k: MODES[k] for k in ("fp32", "bf16")}
    warmup, steps = (3, 5) if quick else (10, 40)
    partial = os.environ.get("CONVRNN_BENCH_PARTIAL")  # a file rewritten after each recipe (long GPU runs)
    table: dict = {}
    speedups = []
    for name in RECIPES:
        cfg, recipe, bundle = _bundle(name, device)
        rows = {}
        for mode, overrides in modes.items():
            try:
                rows[mode] = measure(name, overrides, cfg, recipe, bundle, warmup + (10 if "compile" in mode else 0), steps)
            except Exception as e:  # a mode that fails on this recipe is recorded, not fatal
                log.exception("%s %s failed", name, mode)
                rows[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        base = rows["fp32"].get("rate")
        for mode, row in rows.items():
            if base and row.get("rate"):
                row["speedup_vs_fp32"] = round(row["rate"] / base, 3)
                if mode != "fp32":
                    speedups.append(row["speedup_vs_fp32"])
        table[name] = {"batch_size": cfg.train.batch_size, "preset": cfg.model.preset,
                       "input_shape": list(bundle.input_shape),
                       "data": bundle.meta.get("source", "") if isinstance(bundle.meta, dict) else "", **rows}
        if partial:
            with open(partial, "w") as f:
                json.dump(table, f, indent=2)
        log.info("%s: %s", name, {m: r.get("speedup_vs_fp32", r.get("error")) for m, r in rows.items()})
    best = max(speedups) if speedups else None
    return {
        "metric": "best training speedup (samples/s) over fp32 among bf16, fp16 and compile, any recipe",
        "value": best, "unit": "x", "target": None, "baseline": 1.0,
        "baseline_note": "fp32 eager on the same device, same batches, same Trainer step",
        "met": None,
        "details": {"device": torch.cuda.get_device_name(0) if cuda else "cpu (not a GPU result)",
                    "warmup_steps": warmup, "timed_steps": steps,
                    "mnist_dir": os.environ.get("CONVRNN_MNIST_DIR", ""), "recipes": table},
    }
