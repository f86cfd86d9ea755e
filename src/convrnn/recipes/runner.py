"""Train a recipe: the library behind ``convrnn train`` (``convrnn.infer.run`` evaluates and predicts).

The CLI only parses arguments and prints; everything a run does is decided here, in this order:
config (recipe defaults < config file < overrides), the preset check, data, model, task, the check
that the task can score the model's output, run directory, training.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from convrnn.errors import CheckpointError, ConfigError
from convrnn.fields import check as check_fields
from convrnn.recipes.base import check_meta, get_recipe
from convrnn.train.checkpoint import load_latest_checkpoint
from convrnn.train.config import RunConfig, load_config_file
from convrnn.train.ensemble import MEMBERS_DIR, train_ensemble
from convrnn.train.rundir import RunDir, RunLock, check_checkpoint_of_run, new_run_dir, new_run_id
from convrnn.train.runfiles import describe_run_files, other_entries, remove_run_files, run_file_paths
from convrnn.train.threads import apply_threads
from convrnn.train.trainer import Trainer, TrainResult, autocast_dtype, resolve_device

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(cfg: RunConfig, *, callbacks: Iterable[Any] = (), progress: Optional[Callable] = None,
                  resume: Optional[str] = None) -> Trainer:
    """Data, model, task, run directory and trainer for ``cfg``; restores ``resume`` when given.
    Takes no lock on the run directory: :func:`train` holds it while it builds and runs the trainer."""
    held = _HeldRecords()  # what is said before the run directory exists (the data read) goes into train.log too
    logging.getLogger("convrnn").addHandler(held)
    try:
        trainer, run_dir = _build(cfg, callbacks, progress, resume)
    finally:
        logging.getLogger("convrnn").removeHandler(held)
    if run_dir is not None:
        run_dir.attach_log(earlier=held.records)
    if resume:
        log.info("resumed %s at step %d (epoch %d, batch %d)", run_dir.path if run_dir else resume, trainer.pos.step,
                 trainer.pos.epoch + 1, trainer.pos.batch_in_epoch)
    return trainer


class _HeldRecords(logging.Handler):
    """Keeps the log records it is given, for a log file opened after they were made."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _build(cfg: RunConfig, callbacks, progress, resume) -> tuple[Trainer, Optional[RunDir]]:
    from convrnn.train.distributed import DistributedTrainer, init_from_env
    from convrnn.train.tensorboard import TensorBoardFilters

    recipe = get_recipe(cfg.recipe)
    check_fields(cfg.train, "train")  # before data and the run directory: a bad value leaves nothing on disk
    check_fields(cfg.data, "data")
    recipe.check_model(cfg)
    # a device or precision this machine lacks is refused before the data is read (minutes, for pages)
    device = resolve_device(cfg.train.device)
    autocast_dtype(cfg.train.precision, device)
    if device.type == "cpu":
        apply_threads(cfg.train.threads)  # before the data: cutting pages uses as many processes
    ctx = init_from_env(cfg.train.device)  # one process unless started by torchrun (docs/scaling.md)
    seed_everything(cfg.train.seed)
    run_path = Path(resume or cfg.train.run_dir or new_run_dir(recipe.name)).absolute()
    if not resume and ctx.is_main and (run_path / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{run_path}: this run directory already holds a run; use --resume {run_path} to continue it")
    bundle = recipe.make_data(cfg.data, cfg.train, progress=progress)
    model = recipe.build_model(cfg, bundle)
    task = recipe.make_task(bundle.meta, tuple(model.output_shape))
    problem = task.output_problem(tuple(model.output_shape))
    if problem:
        raise ConfigError(f"model {model.spec!r} does not fit the {recipe.name} recipe: {problem}")
    cfg.train.run_dir = str(run_path)
    ckpt = None
    if resume:  # checked before anything is written: a refused resume leaves the run as it was
        ckpt = load_latest_checkpoint(run_path)
        check_checkpoint_of_run(ckpt, run_path / "checkpoints" / "last.pt", run_path)
        if ckpt.get("spec") != model.spec:
            raise CheckpointError(f"{resume}: the checkpoint's model ({ckpt.get('spec')!r}) differs from the "
                                  f"config's ({model.spec!r})")
        check_meta(recipe.input_meta + recipe.label_meta, ckpt.get("meta") or {}, bundle.meta,
                   f"--resume {resume}: the data no longer matches the checkpoint", error=CheckpointError)
    run_dir = RunDir(run_path) if ctx.is_main else None  # only rank 0 writes
    meta = {"recipe": recipe.name, "run_id": cfg.run_id, "spec": model.spec, "input_shape": list(bundle.input_shape),
            "num_outputs": model.num_outputs, "config": cfg.to_dict(), "meta": bundle.meta}
    kind, extra = (DistributedTrainer, {"ctx": ctx}) if ctx.enabled else (Trainer, {})
    # the trainer refuses a device or precision this machine lacks, and restore a change the checkpoint
    # cannot continue under, both before config.json is written: a refused resume leaves the run as it was
    trainer = kind(model, task, bundle.train, bundle.val, cfg.train, run_dir=run_dir, checkpoint_meta=meta,
                   callbacks=[*callbacks, TensorBoardFilters(), *recipe.callbacks()], **extra)
    if ckpt is not None:
        trainer.restore(ckpt)
    if run_dir is not None:
        cfg.save(run_path / "config.json")
    return trainer, run_dir


def resume_config(resume: str, recipe_name: Optional[str] = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The saved config of the run directory ``resume`` (with ``overrides``), checked: a run of
    another recipe than ``recipe_name``, or one that stopped before its first checkpoint, is an error."""
    run = Path(resume)
    saved = run / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{resume}: not a run directory (no config.json)")
    recorded_config = load_config_file(str(saved))
    recorded = recorded_config["recipe"]
    if recipe_name and recorded != recipe_name:
        raise ConfigError(f"--resume {resume}: this is a run of recipe {recorded!r}, not {recipe_name!r}; "
                          f"continue it with `convrnn train {recorded} --resume {resume}`")
    if not _has_checkpoint(run):
        raise ConfigError(f"--resume {resume}: the run stopped before its first checkpoint, so there is nothing "
                          f"to continue; start it again with `convrnn train {recorded} --config {saved}`, "
                          f"then {_deletion_advice(run, resume)}")
    cfg = get_recipe(recorded).config(overrides, config_file=str(saved))
    _check_resume_changes(resume, cfg, get_recipe(recorded).config(None, config_file=str(saved)))
    cfg.run_id = str(recorded_config.get("run_id") or "")  # the run keeps its identity (none for older runs)
    return cfg


def _check_resume_changes(resume: str, cfg: RunConfig, was: RunConfig) -> None:
    """Before any data is read (cutting pages takes minutes): a resume that changes the model or the
    input height cannot go on from the checkpoint and is refused; one that changes the validation data
    is warned about, since the best checkpoint is then chosen across two sets of lines."""
    if cfg.model != was.model:
        raise CheckpointError(f"--resume {resume}: a resumed run keeps its model; the options give another "
                              f"({cfg.model.spec or cfg.model.preset} for {was.model.spec or was.model.preset}): "
                              f"train a new run for it")
    height = getattr(cfg.data, "height", None)
    if height != getattr(was.data, "height", None):
        raise CheckpointError(f"--resume {resume}: a resumed run keeps its input height "
                              f"({getattr(was.data, 'height', None)}, not {height}): train a new run for another")
    if getattr(cfg.data, "val", None) != getattr(was.data, "val", None):
        log.warning("--resume %s: validation now on %s, where the run's best checkpoint was chosen on %s: its "
                    "best is picked across the two", resume, cfg.data.val or "lines cut from --data",
                    was.data.val or "lines cut from --data")


def _has_checkpoint(run: Path) -> bool:
    return any(run.glob("checkpoints/*.pt")) or any(run.glob(f"{MEMBERS_DIR}/*/checkpoints/*.pt"))


def refuse_used_run_dir(run: Path) -> None:
    """A new training (not a resume) into ``run`` when it already holds a run is refused: one with a
    checkpoint is continued with --resume; the files of one stopped before its first checkpoint are deleted first."""
    if _has_checkpoint(run) or (run / MEMBERS_DIR).exists():
        raise ConfigError(f"{run}: this run directory already holds a run; use --resume {run} to continue it, "
                          f"or give another --run-dir")
    held = [name for name in ("config.json", "train.log", "metrics.csv") if (run / name).exists()]
    if held:
        raise ConfigError(f"{run}: this run directory already holds a run ({held[0]}) that stopped before its "
                          f"first checkpoint, so there is nothing to --resume; {_deletion_advice(run, run)} to "
                          f"start it again there, or give another --run-dir")


def _deletion_advice(run: Path, shown) -> str:
    """How to clear the run directory ``run`` (named ``shown``) of a run that kept nothing: delete the
    folder where it holds only convrnn's files, else those files by name, since the folder also holds
    the user's own (a folder given as --run-dir that was there before)."""
    if not other_entries(run):
        return f"delete {shown}"
    return f"delete its run files {describe_run_files(run)} from {shown} (not the folder: it holds other files too)"


def refuse_resume_options(resume: str, config_file: Optional[str], overrides: dict[str, Any]) -> None:
    """A resume continues the run in ``resume`` with its own config.json: another config file, or a
    run directory other than ``resume``, would be ignored, so either is an error."""
    if config_file:
        raise ConfigError(f"--config {config_file}: a resumed run continues with its own config.json; "
                          f"change values with --set SECTION.KEY=VALUE")
    wanted = overrides.get("train.run_dir")
    if wanted and Path(str(wanted)).resolve() != Path(resume).resolve():
        raise ConfigError(f"--run-dir {wanted}: a resumed run stays in its own directory {resume}; leave "
                          f"--run-dir out, or copy the run there and resume the copy")


def train(recipe_name: str, overrides: dict[str, Any] | None = None, *, config_file: Optional[str] = None,
          resume: Optional[str] = None, callbacks: Iterable[Any] = (),
          progress: Optional[Callable] = None) -> Optional[TrainResult]:
    """Train a recipe (or resume a run); the result of the finished run (None on the ranks of a
    torchrun job that do not write it). A new run whose start fails (bad data, a model that does not
    fit the recipe, an interruption before its first checkpoint) leaves no run directory behind; in a
    folder that existed before, it removes the files it wrote there and leaves everything else.

    The process that writes the run (rank 0) holds the run directory's lock (:class:`RunLock`) from
    before the data is read until it returns: a second training or resume of the same directory is
    refused while this one runs. A new run gets a fresh ``run_id``; a resumed one keeps its own."""
    from convrnn.train.distributed import env_context

    main = env_context().is_main  # the other ranks of a torchrun job neither write the run nor lock it
    lock = None
    try:
        if resume:
            refuse_resume_options(resume, config_file, overrides or {})
            if main and Path(resume).is_dir():  # before reading it: a run in training is refused as such
                lock = RunLock.acquire(Path(resume).absolute(), resume=True)
            cfg = resume_config(resume, recipe_name, overrides)
        else:
            recipe = get_recipe(recipe_name)
            cfg = recipe.config(overrides, config_file)
            recipe.resolve_data(cfg.data)  # pin implicit data choices in the saved config
            cfg.run_id = new_run_id()
        check_fields(cfg.train, "train")
        check_fields(cfg.data, "data")
        get_recipe(cfg.recipe).check_model(cfg)
        run_path = Path(resume or cfg.train.run_dir or new_run_dir(cfg.recipe)).absolute()
        cfg.train.run_dir = str(run_path)
        before = None  # convrnn's files in a run directory that was there before this run (the user's now)
        if main and not resume:
            lock = RunLock.acquire(run_path)
            refuse_used_run_dir(run_path)
            if not lock.created:
                before = set(run_file_paths(run_path))
        try:
            if cfg.train.ensemble > 1:
                refusal = get_recipe(cfg.recipe).ensemble_refusal
                if refusal:
                    raise ConfigError(f"train.ensemble: not for recipe {cfg.recipe}: {refusal}; use train.ensemble=1")
                return train_ensemble(cfg, resume=bool(resume), build=lambda member, again: build_trainer(
                    member, callbacks=callbacks, progress=progress, resume=again))
            trainer = build_trainer(cfg, callbacks=callbacks, progress=progress, resume=resume)
            try:
                trainer.fit()
            finally:
                if trainer.run_dir is not None:
                    trainer.run_dir.close()
            return trainer.result()
        except BaseException:
            if lock is not None and not resume and not _has_checkpoint(run_path):
                # a new run that failed or was interrupted before its first checkpoint keeps nothing: the
                # run directory it made goes; in a folder that was there before, only what it wrote there
                if lock.created:
                    lock.discard()
                elif before is not None:
                    remove_run_files(run_path, keep=before)
            raise
    finally:
        if lock is not None:
            lock.release()
