"""Train a recipe, evaluate a run, predict with it: the library behind ``convrnn train|eval|predict``.

The CLI only parses arguments and prints; everything a run does is decided here, in this order:
config (recipe defaults < config file < overrides), the preset check, data, model, task, the check
that the task can score the model's output, run directory, training.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

import numpy as np
import torch

from convrnn.errors import CheckpointError, ConfigError
from convrnn.fields import check as check_fields
from convrnn.infer.evaluate import evaluate as evaluate_model
from convrnn.infer.run import load_run, run_data
from convrnn.infer.views import with_views
from convrnn.recipes.base import DataBundle, get_recipe
from convrnn.train.checkpoint import load_latest_checkpoint
from convrnn.train.config import RunConfig, load_config_file
from convrnn.train.ensemble import MEMBERS_DIR, train_ensemble
from convrnn.train.rundir import RunDir, new_run_dir
from convrnn.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_model_choice(cfg: RunConfig) -> None:
    """Before any data is made: the preset exists, takes the fields given, and is of a kind the recipe
    trains (a text-line model cannot classify fonts)."""
    from convrnn.spec.grammar import parse
    if cfg.model.spec:
        parse(cfg.model.spec)  # a spec that does not parse fails here
        return
    if not cfg.model.preset:
        return
    from convrnn.spec.presets import get_preset, list_models
    recipe = get_recipe(cfg.recipe)
    preset = get_preset(cfg.model.preset, **data_needs(cfg))  # an unknown preset or field fails here
    parse(preset.spec)  # and a field value the spec cannot take
    if preset.task not in recipe.fitting_tasks():
        fitting = [n for n in list_models() if get_preset(n).task in recipe.fitting_tasks()]
        raise ConfigError(f"preset {cfg.model.preset!r} is a model for {preset.task!r} outputs "
                          f"({preset.description}), which the {recipe.name} recipe does not train; its presets: "
                          f"{', '.join(fitting)} (`convrnn models` lists them all)")


def data_needs(cfg: RunConfig) -> dict:
    """What the recipe says the data needs of the model (``Recipe.model_fields``), for the fields the
    preset has."""
    from convrnn.spec.presets import preset_fields
    known = preset_fields(cfg.model.preset)
    return {k: v for k, v in get_recipe(cfg.recipe).model_fields(cfg.data).items() if k in known}


def model_for(cfg: RunConfig, bundle: DataBundle):
    """The model the run trains: the explicit spec, or the preset filled for the data (its input
    shape, its number of outputs, and the fields the recipe says the data needs)."""
    from convrnn.spec.builder import build_model
    if cfg.model.spec:
        return build_model(cfg.model.spec, tuple(bundle.input_shape), bundle.num_outputs)
    from convrnn.spec.presets import get_preset
    preset = get_preset(cfg.model.preset, num_outputs=bundle.num_outputs, input_shape=bundle.input_shape,
                        **data_needs(cfg))
    return build_model(preset.spec, tuple(bundle.input_shape), preset.num_outputs)


def build_trainer(cfg: RunConfig, *, callbacks: Iterable[Any] = (), progress: Optional[Callable] = None,
                  resume: Optional[str] = None) -> Trainer:
    """Data, model, task, run directory and trainer for ``cfg``; restores ``resume`` when given."""
    from convrnn.train.distributed import DistributedTrainer, init_from_env
    from convrnn.train.tensorboard import TensorBoardFilters

    recipe = get_recipe(cfg.recipe)
    check_fields(cfg.train, "train")  # before data and the run directory: a bad value leaves nothing on disk
    check_fields(cfg.data, "data")
    check_model_choice(cfg)
    ctx = init_from_env(cfg.train.device)  # one process unless started by torchrun (docs/scaling.md)
    seed_everything(cfg.train.seed)
    run_path = Path(resume or cfg.train.run_dir or new_run_dir(recipe.name)).absolute()
    if not resume and ctx.is_main and (run_path / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{run_path}: this run directory already holds a run; use --resume {run_path} to continue it")
    bundle = recipe.make_data(cfg.data, cfg.train, progress=progress)
    model = model_for(cfg, bundle)
    task = recipe.make_task(bundle.meta, tuple(model.output_shape))
    problem = task.output_problem(tuple(model.output_shape))
    if problem:
        raise ConfigError(f"model {model.spec!r} does not fit the {recipe.name} recipe: {problem}")
    cfg.train.run_dir = str(run_path)
    run_dir = RunDir(run_path) if ctx.is_main else None  # only rank 0 writes
    if run_dir is not None:
        cfg.save(run_path / "config.json")
        run_dir.attach_log()
    meta = {"recipe": recipe.name, "spec": model.spec, "input_shape": list(bundle.input_shape),
            "num_outputs": model.num_outputs, "config": cfg.to_dict(), "meta": bundle.meta}
    kind, extra = (DistributedTrainer, {"ctx": ctx}) if ctx.enabled else (Trainer, {})
    trainer = kind(model, task, bundle.train, bundle.val, cfg.train, run_dir=run_dir, checkpoint_meta=meta,
                   callbacks=[*callbacks, TensorBoardFilters(), *recipe.callbacks()], **extra)
    if resume:
        ckpt = load_latest_checkpoint(run_path)
        if ckpt.get("spec") != model.spec:
            raise CheckpointError(f"{resume}: the checkpoint's model ({ckpt.get('spec')!r}) differs from the "
                                  f"config's ({model.spec!r})")
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
    if not _has_checkpoint(run):
        raise ConfigError(f"--resume {resume}: the run stopped before its first checkpoint, so there is nothing "
                          f"to continue; start it again with `convrnn train {recorded} --config {saved}` "
                          f"(and delete {resume})")
    return get_recipe(recorded).config(overrides, config_file=str(saved))


def _has_checkpoint(run: Path) -> bool:
    return any(run.glob("checkpoints/*.pt")) or any(run.glob(f"{MEMBERS_DIR}/*/checkpoints/*.pt"))


def train(recipe_name: str, overrides: dict[str, Any] | None = None, *, config_file: Optional[str] = None,
          resume: Optional[str] = None, callbacks: Iterable[Any] = (),
          progress: Optional[Callable] = None) -> Optional[TrainResult]:
    """Train a recipe (or resume a run); the result of the finished run (None on the ranks of a
    torchrun job that do not write it). A new run whose start fails (bad data, a model that does not
    fit the recipe, an interruption before its first checkpoint) leaves no run directory behind."""
    if resume:
        cfg = resume_config(resume, recipe_name, overrides)
    else:
        recipe = get_recipe(recipe_name)
        cfg = recipe.config(overrides, config_file)
        recipe.resolve_data(cfg.data)  # pin implicit data choices in the saved config
    check_fields(cfg.train, "train")
    check_fields(cfg.data, "data")
    check_model_choice(cfg)
    run_path = Path(resume or cfg.train.run_dir or new_run_dir(cfg.recipe)).absolute()
    cfg.train.run_dir = str(run_path)
    created = not run_path.exists()
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
        if created and not _has_checkpoint(run_path):
            shutil.rmtree(run_path, ignore_errors=True)
        raise


class Evaluation(NamedTuple):
    """What ``evaluate`` measured: the metrics, the task that scored them (it formats them), and the
    checkpoint read (its path and step)."""

    metrics: dict
    task: Any
    checkpoint: Path
    step: int


def evaluate(run: str, *, split: str = "val", overrides: dict[str, Any] | None = None,
             progress: Optional[Callable] = None, shifts: int = 1, **decoding) -> Evaluation:
    """Metrics of a run's best checkpoint (or the checkpoint file given) on its validation (or test)
    data, rebuilt from its config. ``shifts`` > 1 reads every input that many times, moved by a pixel
    or so, and combines the views (``convrnn.infer.views.with_views``); ``decoding`` options (``beam``,
    ``lexicon``, ``lm``) go to the task (``Task.with_decoding``)."""
    loaded = load_run(run)
    task = loaded.task.with_decoding(**decoding)
    model = with_views(loaded.model, task, shifts)
    data = run_data(loaded, split, overrides=overrides, progress=progress)
    metrics = evaluate_model(model, task, data).compute()
    return Evaluation(metrics, task, loaded.checkpoint, int(loaded.ckpt.get("step", 0)))


def predict(run: str, inputs: list[str], *, shifts: int = 1, **options) -> list[str]:
    """The recipe's output lines for ``inputs`` (image files, page XML...), read by the run's model
    (with ``shifts`` views, as ``evaluate``)."""
    loaded = load_run(run)
    loaded = loaded._replace(model=with_views(loaded.model, loaded.task, shifts))
    return loaded.recipe.predict(loaded, inputs, **options)
