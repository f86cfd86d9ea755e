"""A trained run, loaded: its model rebuilt from the checkpoint alone, its recipe and task, its data;
evaluated on a split (``convrnn eval``) or reading inputs (``convrnn predict``).

``load_run(path)`` takes a run directory (its best checkpoint, else its last) or a checkpoint file.
``run_data(loaded, split)`` rebuilds the run's validation or test data from its saved config, with the
data paths it recorded: data that moved is an error naming the path, never other data.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import torch

from convrnn.errors import CheckpointError, ConfigError, DataError, DataNotFound
from convrnn.infer.evaluate import evaluate
from convrnn.infer.views import with_views
from convrnn.recipes.base import Recipe, get_recipe
from convrnn.tasks.ctc import CTCTask
from convrnn.train.checkpoint import load_checkpoint, resolve_checkpoint
from convrnn.train.config import RunConfig, flatten_config_dict
from convrnn.train.rundir import check_checkpoint_of_run


class Loaded(NamedTuple):
    """A run's model (in eval mode), its checkpoint dict, recipe and task, and the checkpoint file read."""

    model: torch.nn.Module
    ckpt: dict
    recipe: Recipe
    task: Any
    checkpoint: Path


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint, from the checkpoint alone. Returns ``(model, ckpt)``.

    A checkpoint of a run directory (``path`` is the run, or a file in its ``checkpoints/``) must be that
    run's own: one copied in from another run, or a config.json edited to another recipe, is refused
    (``check_checkpoint_of_run``) rather than read with the wrong config."""
    from convrnn.spec.builder import build_model

    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file, map_location=map_location)
    if file.absolute().parent.name == "checkpoints":
        check_checkpoint_of_run(ckpt, file, file.absolute().parent.parent)
    missing = [key for key in ("spec", "input_shape", "model") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{file}: the checkpoint has no {' or '.join(missing)}, so no model can be built from "
                              f"it (a Trainer given a model that is not a spec model stores none: pass "
                              f"checkpoint_meta={{'spec': ..., 'input_shape': ..., 'num_outputs': ...}})")
    if ckpt.get("ensemble"):  # K members of the spec, combined (convrnn.infer.views)
        from convrnn.infer.views import EnsembleModel
        ens = ckpt["ensemble"]
        model = EnsembleModel(ckpt["spec"], tuple(ckpt["input_shape"]), ckpt.get("num_outputs"),
                              int(ens["members"]), str(ens["combine"]))
    else:
        model = build_model(ckpt["spec"], tuple(ckpt["input_shape"]), ckpt.get("num_outputs"))
    try:
        model.load_state_dict(ckpt["model"])  # copies into the parameters where they are (the CPU)...
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise CheckpointError(f"{file}: the checkpoint's weights do not fit its model {ckpt['spec']!r} "
                              f"({first[:200]})") from None
    model.to(map_location).eval()          # ...so the model goes where its checkpoint was mapped
    return model, ckpt


def load_run(run: str | Path, *, expect_recipe: Optional[str] = None, device: str = "cpu") -> Loaded:
    """The run directory or checkpoint file ``run``, loaded; ``expect_recipe`` refuses another recipe's.
    A checkpoint that is not its run directory's own is refused (see :func:`load_model`)."""
    path = resolve_checkpoint(run).absolute()
    model, ckpt = load_model(path, map_location=device)
    name = ckpt.get("recipe", "")
    if not name:
        raise CheckpointError(f"{run}: this checkpoint names no recipe (a Trainer used from Python wrote it), so it "
                              f"has no data reader or task to go with it; load its model with "
                              f"convrnn.infer.run.load_model")
    if expect_recipe and name != expect_recipe:
        raise CheckpointError(f"{run}: this checkpoint is of recipe {name!r}, not {expect_recipe!r}")
    recipe = get_recipe(name)
    return Loaded(model, ckpt, recipe, recipe.make_task(ckpt["meta"], tuple(model.output_shape)), path)


def run_config(loaded: Loaded, overrides: Optional[dict] = None) -> RunConfig:
    """The config the run was trained with (its recipe's defaults under it), with ``overrides``."""
    cfg = loaded.recipe.default_config()
    cfg.override(loaded.recipe.with_saved_defaults(flatten_config_dict(loaded.ckpt["config"])))
    if overrides:
        cfg.override(overrides)
    return cfg


def run_data(loaded: Loaded, split: str, *, overrides: Optional[dict] = None,
             progress: Optional[Callable] = None):
    """The ``split`` (val or test) data of a loaded run, rebuilt from its config (with ``overrides``). The
    run's own data path that names nothing (a run evaluated away from its data) says how to give it;
    a path the user gave is named alone."""
    trained = ((loaded.ckpt.get("config") or {}).get("data") or {}).get("normalize")
    given = (overrides or {}).get("data.normalize")
    if given is not None and trained is not None and str(given) != str(trained):  # references in another form
        raise ConfigError(f"--set data.normalize={given}: this run was trained on texts in Unicode form {trained}, "
                          f"and reads in that form; leave the setting out to score it in its own")
    cfg = run_config(loaded, overrides)
    try:
        return loaded.recipe.make_split(cfg.data, cfg.train, split, loaded.ckpt["meta"], progress=progress)
    except DataNotFound as e:
        if (overrides or {}).get(f"data.{split}"):
            raise
        raise DataNotFound(f"{e}; give this run's {split} data with --set data.{split}=PATH") from None


class Evaluation(NamedTuple):
    """What ``evaluate_run`` measured: the metrics, the task that scored them (it formats them), the
    checkpoint read (its path and step) and the split scored."""

    metrics: dict
    task: Any
    checkpoint: Path
    step: int
    split: str = "val"


EVAL_TRAIN_KEYS = ("train.batch_size",)  # the training settings that evaluating reads


def eval_split(split: Optional[str], overrides: Optional[dict] = None) -> str:
    """The split ``eval`` scores: ``split`` when given, else the one whose data ``overrides`` name
    (``data.test`` alone: test), else val. Data given for the other split than the one scored would not
    be read, so that is refused rather than scoring the run's own pages under the user's name for them."""
    unused = [k for k in (overrides or {}) if not k.startswith("data.") and k not in EVAL_TRAIN_KEYS]
    if unused:  # the checkpoint fixes the model and training; a setting eval does not read is not taken silently
        raise ConfigError(f"--set {unused[0]}: eval takes data settings (data.KEY=VALUE) and "
                          f"{', '.join(EVAL_TRAIN_KEYS)}; the model and its training are the checkpoint's")
    for key in ("data.val", "data.test"):  # an unset shell variable would score the run's own data instead
        if key in (overrides or {}) and not str(overrides[key] or "").strip():
            raise ConfigError(f"--set {key}=: empty value (an unset shell variable?); give the data to score, "
                              f"or leave the setting out to score the run's own")
    given = [s for s in ("val", "test") if (overrides or {}).get(f"data.{s}")]
    if split is None:
        return given[0] if len(given) == 1 else "val"
    if given and split not in given:
        other = given[0]
        raise ConfigError(f"--set data.{other}={overrides[f'data.{other}']}: scoring the {split} split does not "
                          f"read the {other} data; add --split {other}, or give it as data.{split}")
    return split


def evaluate_run(run: str, *, split: Optional[str] = None, overrides: dict[str, Any] | None = None,
                 progress: Optional[Callable] = None, shifts: int = 1,
                 eval_progress: Optional[Callable[[int, int], None]] = None, **decoding) -> Evaluation:
    """Metrics of a run's best checkpoint (or the checkpoint file given) on its validation (or test)
    data, rebuilt from its config. ``shifts`` > 1 reads every input that many times, moved by a pixel
    or so, and combines the views (``convrnn.infer.views.with_views``); ``decoding`` options (``beam``,
    ``lexicon``, ``lm``) go to the task (``Task.with_decoding``). ``progress`` follows the data's
    preparation, ``eval_progress(done, total)`` the batches scored."""
    split = eval_split(split, overrides)
    loaded = load_run(run)
    given = [f"--{k}" for k, v in decoding.items() if v is not None]
    if given and not isinstance(loaded.task, CTCTask):  # said as predict says it, in the user's terms
        raise ConfigError(f"{', '.join(given)}: for text-line runs only; {run} is a {loaded.recipe.name} run")
    task = loaded.task.with_decoding(**decoding)
    model = with_views(loaded.model, task, shifts)
    data = run_data(loaded, split, overrides=overrides, progress=progress)
    metrics = evaluate(model, task, data, progress=eval_progress).compute()
    return Evaluation(metrics, task, loaded.checkpoint, int(loaded.ckpt.get("step", 0)), split)


def predict(run: str, inputs: list[str], *, shifts: int = 1, progress: Optional[Callable] = None,
            **options) -> list[str]:
    """The recipe's output lines for ``inputs`` (image files, page XML...), read by the run's model
    (with ``shifts`` views, as ``evaluate_run``); ``progress(done, total)`` as a recipe that reports
    progress (the lines recipe) reads them. An empty input (an unset shell variable) is refused: as a
    path it names the working folder, whose files would be read in its place. One path may be given
    as a string; no input at all is refused, and so is a path with a tab, newline or carriage return
    in it, which would break the one ``path<TAB>result`` line printed per input."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [str(given) for given in inputs]
    if not inputs:
        raise DataError("no inputs given: give image files, page XML or folders of them")
    for k, given in enumerate(inputs):
        if not given.strip():
            raise DataError(f"{given!r}: an empty path as input {k + 1} of {len(inputs)} (an unset shell variable?)")
    _refuse_output_breaking(inputs)
    loaded = load_run(run)
    accepted = inspect.signature(loaded.recipe.predict).parameters
    ignored = [k for k, v in options.items() if v is not None and k not in accepted]
    if progress is not None and "progress" in accepted:
        options["progress"] = progress
    if ignored:  # a recipe that does not take an option would drop it silently
        raise ConfigError(f"{', '.join('--' + k for k in ignored)}: for text-line runs only; {run} is a "
                          f"{loaded.recipe.name} run")
    loaded = loaded._replace(model=with_views(loaded.model, loaded.task, shifts))
    return loaded.recipe.predict(loaded, inputs, **options)


# characters of a path that would break predict's output, one ``path<TAB>result`` line per input
OUTPUT_BREAKING = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}


def _refuse_output_breaking(inputs: list[str]) -> None:
    """A DataError naming (as ``repr``) the first path predict would print that holds a tab, newline
    or carriage return: an input given, or a page XML file that an input folder or glob pattern names.
    Printed as it is, such a path would add a column or a row to the output a script parses."""
    from convrnn.data.pages import page_sources

    for given in inputs:
        named = [given]
        try:  # the page XML files a folder or pattern names are printed with their own paths
            named += [str(p) for p in page_sources(given) or []]
        except (DataError, OSError):  # a source that cannot be read: the recipe that reads it says so
            pass
        for name in named:
            what = next((w for c, w in OUTPUT_BREAKING.items() if c in name), None)
            if what is not None:
                where = "" if name == given else f" (from the input {given})"
                raise DataError(f"{name!r}{where}: {what} in the path would break predict's output of one "
                                f"path<TAB>result line per input; rename the file")
