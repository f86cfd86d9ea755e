"""Ensembles: K members of one spec, each trained on 1/K of the budget with its own seed, combined.

Two runs of the same recipe that differ only in their seed misread different inputs, and a member
trained for part of the time reads nearly as well as one trained for all of it, so averaging the
members' beliefs removes most run-specific mistakes (docs/decisions.md). ``train.ensemble=K`` trains
K members one after another, each with ``max_time / K`` (and ``max_steps / K``) and seed
``seed + i``, into ``RUN/members/i``, then writes one checkpoint that holds them all
(``ckpt["ensemble"]``) as ``RUN/checkpoints/best.pt`` and ``last.pt``; ``eval``, ``predict`` and the
library load it like any other run (``convrnn.infer.views.EnsembleModel`` combines them).
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

from convrnn.errors import ConfigError, DataError
from convrnn.infer.evaluate import evaluate
from convrnn.infer.views import EnsembleModel
from convrnn.files import atomic_write_text
from convrnn.train.checkpoint import (load_checkpoint, load_latest_checkpoint, resumable_checkpoints, rng_state,
                                      save_checkpoint)
from convrnn.train.config import RunConfig, read_run_config
from convrnn.train.rundir import RunDir
from convrnn.train.runfiles import MEMBERS_DIR, describe_run_files, remove_run_files
from convrnn.train.trainer import Trainer, TrainResult, resume_refusal

log = logging.getLogger(__name__)

DONE_FILE = "done.json"


def member_config(cfg: RunConfig, i: int) -> RunConfig:
    """Member ``i``'s config: seed ``seed + i``, 1/K of the time and step budget, its own directory."""
    k, member = cfg.train.ensemble, copy.deepcopy(cfg)
    member.train.ensemble, member.train.seed = 1, cfg.train.seed + i
    member.train.max_time = cfg.train.max_time / k
    member.train.max_steps = max(1, cfg.train.max_steps // k) if cfg.train.max_steps else 0
    member.train.run_dir = str(Path(cfg.train.run_dir) / MEMBERS_DIR / str(i))
    return member


def _more_budget(member: RunConfig) -> bool:
    """Whether a finished member's limits (epochs, steps, time) are now larger than those it was
    trained with: a resume with a longer --max-time continues every member, not only an unfinished one."""
    try:
        before = read_run_config(Path(member.train.run_dir) / "config.json")["train"]
    except (DataError, KeyError, TypeError):
        return True  # nothing to compare with: let the member's own trainer decide (it stops at once if done)
    return any(float(getattr(member.train, key) or 0) != float(before.get(key) or 0)
               for key in ("epochs", "max_steps", "max_time"))


def _check_members_resume(cfg: RunConfig, members: list[int]) -> None:
    """Refuse a resume that one of ``members`` could not continue under (another optimizer, or another
    batch size or seed within an epoch) before any member trains on: a refused resume leaves the run
    as it was, not with its first members trained further."""
    for i in members:
        member = member_config(cfg, i)
        if not _has_checkpoint(Path(member.train.run_dir)):
            continue
        ckpt = load_latest_checkpoint(Path(member.train.run_dir), map_location="cpu")
        refusal = resume_refusal(ckpt.get("config"), member.to_dict(), epoch=ckpt.get("epoch", 0),
                                 batch_in_epoch=ckpt.get("batch_in_epoch", 0))
        if refusal:
            raise ConfigError(f"ensemble member {i + 1} of {cfg.train.ensemble}: {refusal}")


def _has_checkpoint(member_dir: Path) -> bool:
    """Whether a member run holds a checkpoint to continue from (what a resume falls back on included)."""
    return bool(resumable_checkpoints(member_dir))


def _clear_attempt(member_dir: Path, i: int, k: int) -> None:
    """Remove the run files an attempt at member ``i`` that stopped before its first checkpoint left in
    ``member_dir`` (metrics.csv, train.log, TensorBoard events, config.json, partial checkpoint writes);
    anything else there stays."""
    if not member_dir.is_dir():
        return
    names = describe_run_files(member_dir)
    kept = list((member_dir / "checkpoints").glob("*.pt"))  # a checkpoint is never removed here
    if remove_run_files(member_dir, keep=kept):
        log.info("ensemble member %d of %d had no checkpoint yet and starts again: removed the %s of its "
                 "interrupted attempt from %s", i + 1, k, names, member_dir)


def train_ensemble(cfg: RunConfig, *, build: Callable[[RunConfig, Optional[str]], Trainer],
                   resume: bool = False) -> TrainResult:
    """Train the ``cfg.train.ensemble`` members of the run in ``cfg.train.run_dir`` one after another
    (``build(member_cfg, resume_dir)`` makes each member's trainer), then validate the ensemble and save
    it as the run's checkpoint. A resumed run skips finished members (unless the resume gives them
    larger limits, which they then train on to) and continues the interrupted one from its own last
    checkpoint."""
    k, root = cfg.train.ensemble, Path(cfg.train.run_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train.ensemble: members are trained one after another in one process; "
                          "run without torchrun, or train single models with train.ensemble=1")
    members_dir = root / MEMBERS_DIR
    if not resume and (members_dir.exists() or (root / "checkpoints" / "best.pt").exists()):
        raise ConfigError(f"{root}: this run directory already holds a run; use --resume {root} to continue it")
    done_path = members_dir / DONE_FILE
    done = set(json.loads(done_path.read_text())) if done_path.is_file() else set()
    todo = [i for i in range(k) if i not in done or _more_budget(member_config(cfg, i))]
    if resume:
        _check_members_resume(cfg, todo)
    trainer = None
    for i in range(k):
        member = member_config(cfg, i)
        if i not in todo:
            continue
        again = _has_checkpoint(Path(member.train.run_dir))
        if not again:
            # a member killed before its first checkpoint starts again: without the files of that attempt
            # its new metrics.csv would follow the old rows (the same steps twice, or no header after a
            # kill that left the file empty), and its train.log and TensorBoard events would mix the two
            _clear_attempt(Path(member.train.run_dir), i, k)
        log.info("ensemble member %d of %d (seed %d, %s): %s", i + 1, k, member.train.seed,
                 f"{member.train.max_time:g} s" if member.train.max_time else "no time limit", member.train.run_dir)
        trainer = build(member, member.train.run_dir if again else None)
        trainer.later_members = sum(1 for j in todo if j > i)  # the time left shown is the ensemble's
        # the run a member belongs to, for what an interrupted training says (cli.train.RunWhere): the
        # member's directory alone cannot be continued as the ensemble
        trainer.ensemble_run = (root, k)
        if not (root / "config.json").exists():  # once the data and the member's run are set up
            cfg.save(root / "config.json")
        try:
            trainer.fit()
        finally:
            if trainer.run_dir is not None:
                trainer.run_dir.close()
        done.add(i)
        atomic_write_text(done_path, json.dumps(sorted(done)))
    if trainer is None:  # every member was done before: one's trainer, for the data and the task only
        trainer = build(member_config(cfg, 0), str(members_dir / "0"))
        trainer.run_dir.close()
    best = [load_checkpoint(members_dir / str(i), map_location="cpu") for i in range(k)]  # weights to combine
    last = [load_latest_checkpoint(members_dir / str(i), map_location="cpu") for i in range(k)]  # how far each got
    task = trainer.task
    model = EnsembleModel(best[0]["spec"], tuple(best[0]["input_shape"]), best[0]["num_outputs"], k,
                          task.ensemble_combine)
    for m, ckpt in zip(model.members, best):
        m.load_state_dict(ckpt["model"])
    metrics = evaluate(model, task, trainer.val_data).compute() if trainer.val_data is not None else {}
    step, epochs, seconds = sum(c["step"] for c in last), max(c["epoch"] for c in last), sum(c["train_time"] for c in last)
    log.info("ensemble of %d: validation %s", k, task.format_metrics(metrics))
    ckpt = {**{key: best[0][key] for key in ("recipe", "spec", "input_shape", "num_outputs", "meta")},
            "run_id": cfg.run_id, "config": cfg.to_dict(), "ensemble": {"members": k, "combine": task.ensemble_combine},
            "model": model.state_dict(), "step": step, "epoch": epochs, "batch_in_epoch": 0, "train_time": seconds,
            "metrics": metrics, "val_step": step, "best_step": step, "best_metrics": metrics, "rng": rng_state(),
            "task": task.state_dict()}
    run_dir = RunDir(root)
    try:
        cfg.save(root / "config.json")
        run_dir.log_metrics(step, epochs, "val", metrics)
        save_checkpoint(run_dir.checkpoints / "best.pt", ckpt)  # the ensemble is both the best and the last
        save_checkpoint(run_dir.checkpoints / "last.pt", ckpt)
    finally:
        run_dir.close()
    return TrainResult(root, step, epochs, seconds, metrics, step, step, metrics, task)
