"""``convrnn train RECIPE``: one command per registered recipe, its own options beside the common ones."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import click

from convrnn.cli.paths import UserPath

log = logging.getLogger(__name__)


def _common_train_options(f):
    opts = [
        click.option("--preset", "--model", "preset", help="model preset, fields optional: NAME[:FIELD=VALUE,...] "
                     "(`convrnn models` lists them)"),
        click.option("--spec", help="model spec string; replaces the preset (see docs/spec.md)"),
        click.option("--epochs", type=int, help="number of epochs"),
        click.option("--max-time", type=float, help="stop after this many seconds of training (0: no time limit)"),
        click.option("--max-steps", type=int, help="stop after this many optimizer steps (0: no step limit)"),
        click.option("--batch-size", type=int, help="batch size"),
        click.option("--lr", type=float, help="learning rate"),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps"),
        click.option("--threads", type=int, help="CPU threads for PyTorch; 0 = the cores the machine's load leaves idle"),
        click.option("--seed", type=int, help="random seed"),
        click.option("--precision", type=click.Choice(["32", "bf16", "fp16"]),
                     help="32, or bf16/fp16 mixed precision (fp16 on CUDA only)"),
        click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model"),
        click.option("--ema", type=float, metavar="DECAY",
                     help="validate and save a moving average of the weights (e.g. 0.999; 0 = off)"),
        click.option("--ensemble", type=int, metavar="K",
                     help="train K models one after another, each on 1/K of --max-time and of --max-steps, and "
                          "average them"),
        click.option("--run-dir", type=UserPath(file_okay=False), help="where to write the run (default runs/<recipe>-<time>)"),
        click.option("--config", "config_file", type=UserPath(),
                     help="a run's config.json to start a new run from (not with --resume)"),
        click.option("--resume", type=UserPath(), help="continue the run in this directory where it stopped, "
                     "with its own config.json (options and --set change it)"),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="any config field, e.g. --set train.schedule=cosine (repeatable)"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


_COMMON_KEYS = {"preset": "model.preset", "spec": "model.spec", "epochs": "train.epochs",
                "max_time": "train.max_time", "max_steps": "train.max_steps", "batch_size": "train.batch_size",
                "lr": "train.lr", "device": "train.device", "threads": "train.threads", "seed": "train.seed",
                "run_dir": "train.run_dir", "precision": "train.precision", "compile_": "train.compile",
                "ema": "train.ema", "ensemble": "train.ensemble"}


@click.group()
def train() -> None:
    """Train a recipe with its embedded defaults or your data (`convrnn train RECIPE --help`)."""


def _make_train_command(recipe_name: str):
    from convrnn.recipes import get_recipe
    from convrnn.train.config import parse_pairs

    recipe = get_recipe(recipe_name)

    @click.pass_context
    def command(ctx: click.Context, config_file, resume, sets, **kwargs):
        from convrnn.cli.progress import CountProgress, TrainProgress
        from convrnn.recipes.runner import train as run_train

        _refuse_empty(ctx, {"config_file": config_file, "resume": resume, **kwargs})
        overrides: dict = {}
        for name, key in _COMMON_KEYS.items():
            if kwargs.get(name) is not None:
                overrides[key] = kwargs[name]
        for opt in recipe.cli_options:
            value = kwargs.get(opt.flag.split("/")[0].lstrip("-").replace("-", "_"))  # "--a/--no-a" -> a
            if value is None or (opt.multiple and not value):
                continue
            overrides[opt.key] = list(value) if opt.multiple else value
        _refuse_set_over_option(overrides, parse_pairs(list(sets)), recipe)
        overrides.update(parse_pairs(list(sets)))
        quiet = ctx.find_root().obj["quiet"]
        where = RunWhere(resume)
        try:
            result = run_train(recipe_name, overrides, config_file=config_file, resume=resume,
                               callbacks=[CompileNotice(), where, *([TrainProgress(quiet=quiet)] if _reports() else [])],
                               progress=CountProgress(f"preparing {recipe_name} data", quiet=quiet) if _reports() else None)
        except KeyboardInterrupt:
            raise click.exceptions.Abort(where.interrupted(recipe_name)) from None
        from convrnn.train.distributed import shutdown

        shutdown()  # a torchrun job leaves its process group together; nothing for one process
        if result is not None and result.run is not None:  # only rank 0 of a torchrun job reports
            for line in results_block(result):
                click.echo(line)

    command.__doc__ = f"Train the {recipe.name} recipe: {recipe.description.rstrip('.')}."
    for opt in reversed(recipe.cli_options):
        kw = {"help": opt.help, "multiple": opt.multiple}
        if opt.is_flag:
            kw = {"help": opt.help, "is_flag": True, "default": None}
        else:
            kw["type"] = opt.type
        command = click.option(opt.flag, *opt.aliases, **kw)(command)
    command = _common_train_options(command)
    _show_defaults(train.command(name=recipe.name)(command), recipe)


def _show_defaults(command: click.Command, recipe) -> None:
    """Append the recipe's default to the help of each option that sets a config value: the options
    themselves default to None, so that a value given can be told from the recipe's own."""
    defaults = recipe.default_config()
    keys = {**_COMMON_KEYS, **{opt.flag.split("/")[0].lstrip("-").replace("-", "_"): opt.key
                               for opt in recipe.cli_options}}
    for param in command.params:
        key = keys.get(param.name or "")
        if key is None or not isinstance(param, click.Option) or "default" in (param.help or ""):
            continue
        section, _, field = key.partition(".")
        value = getattr(getattr(defaults, section, None), field, None)
        if value is None or value == "" or value == [] or isinstance(value, bool):
            continue
        param.help = f"{param.help or ''}  [default: {value:g}]" if isinstance(value, float) else \
            f"{param.help or ''}  [default: {value}]"


def _refuse_set_over_option(options: dict, sets: dict, recipe) -> None:
    """A --set of a key that a named option also gave, to another value, is an error: one of the two
    would be dropped without a word (``--data a.txt --set data.path=b.txt`` trained on b.txt)."""
    from convrnn.errors import ConfigError

    flags = {key: flag for flag, key in ((f"--{n.rstrip('_').replace('_', '-')}", k) for n, k in _COMMON_KEYS.items())}
    flags.update({opt.key: opt.flag.split("/")[0] for opt in recipe.cli_options})
    for key, value in sets.items():
        if key in options and str(options[key]) != str(value):
            raise ConfigError(f"--set {key}={value}: {flags.get(key, 'an option')} gives {key} too "
                              f"({options[key]}); give it once")


def _refuse_empty(ctx: click.Context, values: dict) -> None:
    """An option given an empty text (``--data "$DIR"`` with DIR unset) is an error: leaving the option
    out means the default, and an empty value quietly becoming the default would train on other data."""
    from convrnn.errors import ConfigError

    for param in ctx.command.params:
        value = values.get(param.name)
        texts = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, str) and not v.strip() for v in texts):
            flag = max(param.opts, key=len) if getattr(param, "opts", None) else param.name
            raise ConfigError(f"{flag}: empty value (an unset shell variable?); leave the option out to use "
                              f"its default")


def _reports() -> bool:
    """Whether this process shows training progress: not the other ranks of a torchrun job."""
    from convrnn.train.distributed import env_context
    return env_context().is_main


class RunWhere:
    """Trainer callback that remembers the run directory, to say after an interruption what was kept.

    A member of an ensemble trains in ``RUN/members/N`` but is continued only as part of its ensemble:
    the advice names the ensemble's run (``trainer.ensemble_run``, set by ``train_ensemble``), and what
    it keeps is read from the members' checkpoints when the interruption comes. ``resume`` is the run
    a resume was given: interrupted before it trained on, that run is still there to continue."""

    def __init__(self, resume: Optional[str] = None):
        self.path: Optional[Path] = None
        self.ensemble: Optional[tuple[Path, int]] = None  # (the ensemble's run directory, its member count)
        self.resume = resume

    def on_train_start(self, trainer) -> None:
        self.path = trainer.run_dir.path if trainer.run_dir is not None else None
        self.ensemble = getattr(trainer, "ensemble_run", None)

    def interrupted(self, recipe: str) -> str:
        from convrnn.train.checkpoint import resumable_checkpoints
        from convrnn.train.runfiles import MEMBERS_DIR

        if self.ensemble is not None:
            run, k = self.ensemble
            kept = [i + 1 for i in range(k) if resumable_checkpoints(run / MEMBERS_DIR / str(i))]
            if not kept:  # the first member's first checkpoint had not come: the run was removed
                return "interrupted before the first checkpoint; nothing was kept"
            if len(kept) == 1:
                what = f"the last checkpoint of ensemble member {kept[0]} of {k}"
            else:
                what = f"the last checkpoints of ensemble members {', '.join(map(str, kept[:-1]))} and {kept[-1]} of {k}"
            return (f"interrupted: {display_path(run)} keeps {what}; continue the ensemble with "
                    f"`convrnn train {recipe} --resume {display_path(run)}`")
        if self.path is None:
            if self.resume:  # refused or stopped before training went on: the run is there as it was
                return (f"interrupted before training went on; {display_path(self.resume)} keeps its checkpoints; "
                        f"continue it with `convrnn train {recipe} --resume {display_path(self.resume)}`")
            return "interrupted before training started; nothing was kept"
        last = self.path / "checkpoints" / "last.pt"
        if not last.exists():
            return "interrupted before the first checkpoint; nothing was kept"
        return (f"interrupted: {display_path(self.path)} keeps its last checkpoint; continue it with "
                f"`convrnn train {recipe} --resume {display_path(self.path)}`")


class CompileNotice:
    """Trainer callback: a line at the start of a run that compiles its model, since torch.compile
    works during the first steps without a word and that time is training time (``--max-time``)."""

    def on_train_start(self, trainer) -> None:
        if trainer.cfg.compile:
            log.info("compiling the model (torch.compile): the first steps take longer; the time counts "
                     "against --max-time")


def display_path(path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# the option that moves each limit: a run given --max-time alone can end earlier at the recipe's epoch
# limit, and the user should see which one to raise
LIMIT_OPTIONS = {"epochs": "--epochs", "time": "--max-time", "steps": "--max-steps",
                 "early_stopping": "validation stopped improving; train.early_stopping"}


def results_block(result) -> list[str]:
    """What a finished training prints once: the run, how long it trained, its final validation and
    the best checkpoint (which eval, predict and export use)."""
    from convrnn.train.trainer import STOPPING_LIMITS  # loaded by the training that made the result
    from convrnn.wording import plural

    task = result.task
    stopped = (f"; stopped by {STOPPING_LIMITS[result.stopped_by]} ({LIMIT_OPTIONS[result.stopped_by]})"
               if result.stopped_by else "")
    lines = [f"run:        {display_path(result.run)}",
             f"trained:    {plural(result.step, 'step')}, {plural(result.epochs, 'epoch')} completed, "
             f"{result.train_time:.1f} s{stopped}"]
    if result.metrics:
        lines.append(f"final:      {task.format_metrics(result.metrics)}  (validation at step {result.val_step:,})")
    if result.best_step >= 0:
        lines.append(f"best:       {task.format_metrics(result.best_metrics)}  (step {result.best_step:,}, "
                     f"checkpoints/best.pt: what eval, predict and export use)")
    return lines


def register(cli: click.Group) -> None:
    from convrnn.recipes import list_recipes
    for name in list_recipes():
        _make_train_command(name)
    cli.add_command(train)


