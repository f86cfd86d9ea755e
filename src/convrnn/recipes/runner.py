"""Turn a recipe name and overrides into a training run; evaluate and predict from a run.

This is the library behind ``convrnn train|eval|predict``: the CLI only parses arguments.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

import numpy as np
import torch

from convrnn.ensemble import MEMBERS_DIR
from convrnn.errors import CheckpointError, ConfigError
from convrnn.recipes import DataBundle, get_recipe
from convrnn.train.checkpoint import load_latest_checkpoint
from convrnn.train.config import (ModelConfig, RunConfig, TrainConfig, flatten_config_dict, load_config_file,
                                   validate_train_config)
from convrnn.train.rundir import RunDir, new_run_dir
from convrnn.train.trainer import Trainer

log = logging.getLogger(__name__)


def resolve_config(recipe_name: str, overrides: dict[str, Any] | None = None,
                   config_file: Optional[str] = None) -> RunConfig:
    """Defaults of the recipe, then a saved config file, then explicit overrides (last wins)."""
    recipe = get_recipe(recipe_name)
    cfg = RunConfig(recipe=recipe.name, model=ModelConfig(preset=recipe.default_preset),
                    data=recipe.data_config(), train=TrainConfig())
    cfg.override({f"train.{k}": v for k, v in recipe.train_defaults.items()})
    if config_file:
        saved = load_config_file(config_file)
        if saved["recipe"] != recipe.name:
            raise ConfigError(f"{config_file}: this config is for recipe {saved['recipe']!r}, not {recipe.name!r}")
        saved_flat = flatten_config_dict(saved)
        saved_flat.pop("train.run_dir", None)  # a re-run gets a fresh directory
        cfg.override(saved_flat)
    if overrides:
        cfg.override(overrides)
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_spec(cfg: RunConfig, bundle: DataBundle) -> str:
    """The spec the run trains: an explicit one, else the preset's, filled for this data."""
    if cfg.model.spec:
        return cfg.model.spec
    from convrnn.models import get_preset, preset_fields
    # preset fields the data decides (a head kind, per-step outputs, an activation), where the preset has them
    known = preset_fields(cfg.model.preset)
    wanted = bundle.meta.get("preset_fields", {}) if isinstance(bundle.meta, dict) else {}
    skipped = sorted(k for k in wanted if k not in known)
    if skipped:
        log.warning("preset %s has no field %s; ignored", cfg.model.preset, ", ".join(skipped))
    extra = {k: v for k, v in wanted.items() if k in known}
    # hints: fields a preset may use to fit the data (the digits op), silently skipped by presets without them
    hints = bundle.meta.get("preset_hints", {}) if isinstance(bundle.meta, dict) else {}
    extra.update({k: v for k, v in hints.items() if k in known and k not in extra})
    return get_preset(cfg.model.preset, num_outputs=bundle.num_outputs, input_shape=bundle.input_shape, **extra).spec


def build_trainer(cfg: RunConfig, *, callbacks: Iterable[Any] = (), progress: Optional[Callable] = None,
                  resume: Optional[str] = None) -> Trainer:
    """Data, model, task, run directory and trainer for ``cfg``; restores ``resume`` when given."""
    from convrnn.spec.builder import build_model

    from convrnn.train.distributed import DistributedTrainer, init_from_env

    recipe = get_recipe(cfg.recipe)
    validate_train_config(cfg.train)  # before data and the run directory: a bad value leaves nothing on disk
    check_model_choice(cfg)  # an unknown preset or field fails here, not after minutes of data
    ctx = init_from_env(cfg.train.device)  # one process unless started by torchrun (docs/scaling.md)
    seed_everything(cfg.train.seed)
    recipe.prepare(cfg)
    if resume:
        run_path = Path(resume)
    else:
        run_path = Path(cfg.train.run_dir) if cfg.train.run_dir else new_run_dir(recipe.name)
        if ctx.is_main and (run_path / "checkpoints" / "last.pt").exists():
            raise ConfigError(f"{run_path}: this run directory already holds a run; use --resume {run_path} to continue it")
    bundle = recipe.make_data(cfg.data, cfg.train, progress=progress)
    spec = model_spec(cfg, bundle)
    model = build_model(spec, tuple(bundle.input_shape), bundle.num_outputs)
    task = recipe.make_task(bundle.meta)
    check_output(model, task, recipe.name, spec)
    cfg.train.run_dir = str(run_path.absolute())
    run_dir = RunDir(run_path) if ctx.is_main else None  # only rank 0 writes
    if run_dir is not None:
        cfg.save(run_path / "config.json")
        run_dir.attach_log()
    meta = {"recipe": recipe.name, "spec": spec, "input_shape": list(bundle.input_shape),
            "num_outputs": bundle.num_outputs, "config": cfg.to_dict(), "meta": bundle.meta}
    from convrnn.train.tb_images import TensorBoardImages  # filters (and LM samples) in TensorBoard
    kind, extra = (DistributedTrainer, {"ctx": ctx}) if ctx.enabled else (Trainer, {})
    trainer = kind(model, task, bundle.train, bundle.val, cfg.train, run_dir=run_dir,
                   checkpoint_meta=meta, callbacks=[*callbacks, TensorBoardImages()], **extra)
    trainer.bundle = bundle
    if resume:
        ckpt = load_latest_checkpoint(run_path)
        if ckpt.get("spec") != spec:
            raise CheckpointError(f"{resume}: the checkpoint's model ({ckpt.get('spec')!r}) differs from the config's ({spec!r})")
        trainer.restore(ckpt)
        log.info("resumed %s at step %d (epoch %d, batch %d)", run_path, trainer.pos.step,
                 trainer.pos.epoch + 1, trainer.pos.batch_in_epoch)
    return trainer


def resume_config(resume: str, recipe_name: Optional[str] = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The saved config of the run directory ``resume`` (with ``overrides``), checked: a run of
    another recipe than ``recipe_name``, or one that stopped before its first checkpoint, is an error."""
    run = Path(resume)
    saved = run / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{resume}: not a run directory (no config.json)")
    recorded = load_config_file(str(saved))["recipe"]
    if recipe_name and recorded != recipe_name:
        raise ConfigError(f"--resume {resume}: this is a run of recipe {recorded!r}, not {recipe_name!r}; "
                          f"continue it with `convrnn train {recorded} --resume {resume}`")
    ckdir = run / "checkpoints"
    if not (ckdir / "last.pt").is_file() and not any(ckdir.glob("step-*.pt")) and not (run / MEMBERS_DIR).is_dir():
        raise ConfigError(f"--resume {resume}: the run stopped before its first checkpoint, so there is nothing "
                          f"to continue; start it again with `convrnn train {recorded} --config {saved}` "
                          f"(and delete {resume})")
    cfg = resolve_config(recorded, config_file=str(saved))
    if overrides:
        cfg.override(overrides)
    return cfg


def train(recipe_name: str, overrides: dict[str, Any] | None = None, *, config_file: Optional[str] = None,
          resume: Optional[str] = None, callbacks: Iterable[Any] = (), progress: Optional[Callable] = None) -> Trainer:
    """Train a recipe (or resume a run) and return the finished trainer.

    A new run whose start fails (bad data, a model that does not fit the recipe, an interruption
    before its first checkpoint) leaves no run directory behind."""
    if resume:
        cfg = resume_config(resume, recipe_name, overrides)
    else:
        cfg = resolve_config(recipe_name, overrides, config_file)
        get_recipe(cfg.recipe).resolve_data(cfg.data)  # pin implicit data choices in the saved config
    check_model_choice(cfg)
    run_path = Path(resume or cfg.train.run_dir or new_run_dir(cfg.recipe)).absolute()
    cfg.train.run_dir = str(run_path)
    created = not run_path.exists()
    try:
        if cfg.train.ensemble > 1:
            return train_ensemble(cfg, callbacks=callbacks, progress=progress, resume=resume)
        trainer = build_trainer(cfg, callbacks=callbacks, progress=progress, resume=resume)
        try:
            trainer.fit()
        finally:
            if trainer.run_dir is not None:
                trainer.run_dir.close()
        return trainer
    except BaseException:
        if created and not _has_checkpoint(run_path):
            shutil.rmtree(run_path, ignore_errors=True)
        raise


def _has_checkpoint(run: Path) -> bool:
    return any(run.glob("checkpoints/*.pt")) or any(run.glob(f"{MEMBERS_DIR}/*/checkpoints/*.pt"))


def check_model_choice(cfg: RunConfig) -> None:
    """Before any data is made: the preset exists, takes the fields given, and is of a kind the recipe
    trains (a text-line model cannot classify fonts)."""
    if cfg.model.spec or not cfg.model.preset:
        return
    from convrnn.models import get_preset, list_models
    recipe = get_recipe(cfg.recipe)
    preset = get_preset(cfg.model.preset)  # an unknown preset or field fails here
    if recipe.preset_tasks and preset.task not in recipe.preset_tasks:
        fitting = [n for n in list_models() if get_preset(n).task in recipe.preset_tasks]
        raise ConfigError(f"preset {cfg.model.preset!r} is a model for {preset.task!r} outputs "
                          f"({preset.description}), which the {recipe.name} recipe does not train; its presets: "
                          f"{', '.join(fitting)} (`convrnn models` lists them all)")


def check_output(model, task, recipe_name: str, spec: str) -> None:
    """The model's output shape is one the task can score (a per-step head for a classifier, say, is not)."""
    problem = task.output_problem(tuple(model.output_shape))
    if problem:
        raise ConfigError(f"model {spec!r} does not fit the {recipe_name} recipe: {problem}")


def train_ensemble(cfg: RunConfig, *, callbacks: Iterable[Any] = (), progress: Optional[Callable] = None,
                   resume: Optional[str] = None) -> Trainer:
    """Train ``train.ensemble`` members one after another into ``RUN/members/i``, each on 1/K of the
    time and step budget with seed ``seed + i``, then validate their average and save it as the run's
    ``best`` checkpoint (convrnn.ensemble). A resumed run skips finished members and continues the
    interrupted one from its own last checkpoint. Returns a trainer holding the ensemble."""
    import copy
    import json
    import os

    from convrnn.ensemble import DONE_FILE, MEMBERS_DIR, EnsembleModel
    from convrnn.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

    k = cfg.train.ensemble
    validate_train_config(cfg.train)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train.ensemble: members are trained one after another in one process; "
                          "run without torchrun, or train single models with train.ensemble=1")
    recipe = get_recipe(cfg.recipe)
    if recipe.ensemble_refusal:
        raise ConfigError(f"train.ensemble: not for recipe {recipe.name}: {recipe.ensemble_refusal}; use train.ensemble=1")
    root = Path(resume) if resume else (Path(cfg.train.run_dir) if cfg.train.run_dir else new_run_dir(recipe.name))
    members_dir = root / MEMBERS_DIR
    if not resume and (members_dir.exists() or (root / "checkpoints" / "best.pt").exists()):
        raise ConfigError(f"{root}: this run directory already holds a run; use --resume {root} to continue it")
    cfg.train.run_dir = str(root)
    done_path = members_dir / DONE_FILE
    done = set(json.loads(done_path.read_text())) if done_path.is_file() else set()
    member_trainer = None
    for i in range(k):
        if i in done:
            continue
        member = copy.deepcopy(cfg)
        member.train.ensemble, member.train.seed = 1, cfg.train.seed + i
        member.train.max_time = cfg.train.max_time / k
        member.train.max_steps = max(1, cfg.train.max_steps // k) if cfg.train.max_steps else 0
        path = members_dir / str(i)
        member.train.run_dir = str(path)
        again = (path / "checkpoints" / "last.pt").exists()
        log.info("ensemble member %d of %d (seed %d, %s): %s", i + 1, k, member.train.seed,
                 f"{member.train.max_time:g} s" if member.train.max_time else "no time limit", path)
        member_trainer = build_trainer(member, callbacks=callbacks, progress=progress,
                                       resume=str(path) if again else None)
        if not (root / "config.json").exists():  # once the data and the member's run are set up
            cfg.save(root / "config.json")
        try:
            member_trainer.fit()
        finally:
            if member_trainer.run_dir is not None:
                member_trainer.run_dir.close()
        done.add(i)
        atomic_write_text(done_path, json.dumps(sorted(done)))
    if member_trainer is None:  # every member was done before: the data only, for validation
        recipe.prepare(cfg)
        bundle = recipe.make_data(cfg.data, cfg.train, progress=progress)
    else:
        bundle = member_trainer.bundle
    best = [load_checkpoint(members_dir / str(i), map_location="cpu") for i in range(k)]  # weights to average
    last = [load_latest_checkpoint(members_dir / str(i), map_location="cpu") for i in range(k)]  # how far each got
    meta = {key: best[0][key] for key in ("recipe", "spec", "input_shape", "num_outputs", "meta")}
    task = recipe.make_task(meta["meta"])
    model = EnsembleModel(meta["spec"], tuple(meta["input_shape"]), meta["num_outputs"], k, task.ensemble_combine)
    for m, ckpt in zip(model.members, best):
        m.load_state_dict(ckpt["model"])
    run_dir = RunDir(root)
    cfg.save(root / "config.json")
    ens_cfg = copy.deepcopy(cfg.train)
    ens_cfg.ensemble = 1  # the trainer only validates the finished ensemble
    meta = {**meta, "config": cfg.to_dict(), "ensemble": {"members": k, "combine": task.ensemble_combine}}
    trainer = Trainer(model, task, bundle.train, bundle.val, ens_cfg, run_dir=run_dir, checkpoint_meta=meta)
    trainer.bundle = bundle
    trainer.pos.step = sum(c["step"] for c in last)
    trainer.pos.epoch = max(c["epoch"] for c in last)
    trainer.pos.train_time = sum(c["train_time"] for c in last)
    model.eval()
    metrics = trainer.evaluate(bundle.val) if bundle.val is not None else {}
    trainer.last_val = dict(metrics)
    log.info("ensemble of %d: validation %s", k, ", ".join(f"{n} {v:.4g}" for n, v in metrics.items()))
    try:
        run_dir.log_metrics(trainer.pos.step, trainer.pos.epoch, "val", metrics)
        ckpt = trainer.checkpoint()
        save_checkpoint(run_dir.checkpoints / "best.pt", ckpt)  # the ensemble is both the best and the last
        save_checkpoint(run_dir.checkpoints / "last.pt", ckpt)
    finally:
        run_dir.close()
    return trainer


def load_run(run: str, *, expect_recipe: Optional[str] = None, device: str = "cpu"):
    """``(model, ckpt, recipe)`` from a run directory or checkpoint file."""
    from convrnn.train.checkpoint import load_model
    model, ckpt = load_model(run, map_location=device)
    recipe_name = ckpt.get("recipe", "")
    if expect_recipe and recipe_name != expect_recipe:
        raise CheckpointError(f"{run}: this checkpoint is of recipe {recipe_name!r}, not {expect_recipe!r}")
    return model, ckpt, get_recipe(recipe_name)


class Evaluation(NamedTuple):
    """What ``evaluate`` measured: the metrics, the task that scored them (it formats them), and the
    checkpoint read (its path and step)."""

    metrics: dict
    task: Any
    checkpoint: Path
    step: int


def evaluate(run: str, *, split: str = "val", overrides: dict[str, Any] | None = None,
             progress: Optional[Callable] = None, shifts: int = 1) -> Evaluation:
    """Metrics of a run's best checkpoint (or the checkpoint file given) on its validation (or test)
    data, rebuilt from its config. ``shifts`` > 1 reads every input that many times, moved by a pixel
    or so, and combines the views (``with_shifts``)."""
    from convrnn.train.checkpoint import resolve_checkpoint
    path = resolve_checkpoint(run).absolute()
    model, ckpt, recipe = load_run(str(path))
    cfg = resolve_config(recipe.name)
    cfg.override(flatten_config_dict(ckpt["config"]))
    if overrides:
        cfg.override(overrides)
    task = recipe.make_task(ckpt["meta"])
    model = with_shifts(model, task, recipe.name, shifts)
    bundle = recipe.make_data(cfg.data, cfg.train, progress=progress)
    data = bundle.test if split == "test" else bundle.val
    if data is None:
        raise ConfigError(f"recipe {recipe.name} has no {split} split")
    cfg.train.device = "cpu" if not torch.cuda.is_available() else cfg.train.device
    trainer = Trainer(model, task, bundle.train, data, cfg.train)
    return Evaluation(trainer.evaluate(data), task, path, int(ckpt.get("step", 0)))


def with_shifts(model, task, recipe_name: str, shifts: int):
    """``model`` itself for ``shifts`` 1; else, for CTC line recognisers, its
    :class:`~convrnn.ensemble.ShiftedViews` (moved right by 0..shifts-1 pixels, decoded jointly), and for
    other models of images its :class:`~convrnn.ensemble.MovedViews` (the image and its first
    shifts-1 one-pixel moves, distributions multiplied, values averaged)."""
    from convrnn.ensemble import MOVES, MovedViews, ShiftedViews

    if shifts == 1:
        return model
    if shifts < 1:
        raise ConfigError(f"shifts must be >= 1, got {shifts}")
    if task.ensemble_combine == "labellings":
        return ShiftedViews(model, shifts)
    if len(model.input_shape) < 3:
        raise ConfigError(f"shifts: reading shifted copies applies to models of images, not to recipe {recipe_name} "
                          f"(its input is {tuple(model.input_shape)})")
    if shifts > len(MOVES) + 1:
        raise ConfigError(f"shifts: at most {len(MOVES) + 1} for recipe {recipe_name} (the image and its eight "
                          f"one-pixel moves), got {shifts}")
    return MovedViews(model, shifts, task.ensemble_combine)


def predict(run: str, inputs: list[str], *, shifts: int = 1, **options) -> list[str]:
    model, ckpt, recipe = load_run(run)
    model = with_shifts(model, recipe.make_task(ckpt["meta"]), recipe.name, shifts)
    return recipe.predict(model, ckpt, inputs, **options)
