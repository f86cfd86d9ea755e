"""The ``convrnn`` command line: a thin adapter over the library.

Every user error ends in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import click

from convrnn import __version__
from convrnn.errors import ConvrnnError

log = logging.getLogger("convrnn")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the moment of each record, not the stream at set-up:
    a caller that swaps stderr (pytest's capture, an embedding application) and later closes the old
    one must not leave the ``convrnn`` logger writing into a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    """The console shows INFO (WARNING under --quiet, DEBUG with -vv); a run's train.log always gets
    INFO, so the logger itself lets INFO through and the console handler filters."""
    from convrnn.progress import ConsoleFilter
    handler = _CurrentStderr()
    handler.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO))
    handler.setFormatter(logging.Formatter("%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ConsoleFilter())
    root = logging.getLogger("convrnn")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    root.propagate = False


def _quiet_after_subcommand(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``-q`` given after the subcommand (``convrnn train fonts -q``) means the same as before it."""
    if value:
        root = ctx.find_root()
        root.obj = {**(root.obj or {}), "quiet": True}
        for handler in logging.getLogger("convrnn").handlers:
            if isinstance(handler, _CurrentStderr):
                handler.setLevel(max(handler.level, logging.WARNING))


def _add_quiet_option(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _add_quiet_option(command)
        elif not any("--quiet" in p.opts for p in command.params):
            command.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                                               callback=_quiet_after_subcommand,
                                               help="as `convrnn -q`: warnings, results and a progress line a minute"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="convrnn")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
@click.option("-q", "--quiet", is_flag=True, help="warnings, results and a plain progress line a minute (no bars, no INFO logs)")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Convolutional-recurrent sequence models: train, evaluate, predict, inspect."""
    _setup_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet}


# ----------------------------------------------------------------------------------------- train

def _common_train_options(f):
    opts = [
        click.option("--preset", "--model", "preset", help="model preset (see `convrnn models`)"),
        click.option("--spec", help="model spec string; replaces the preset (see docs/spec.md)"),
        click.option("--epochs", type=int, help="number of epochs"),
        click.option("--max-time", type=float, help="stop after this many seconds of training"),
        click.option("--max-steps", type=int, help="stop after this many optimizer steps"),
        click.option("--batch-size", type=int, help="batch size"),
        click.option("--lr", type=float, help="learning rate"),
        click.option("--device", help="auto, cpu, cuda, cuda:N or mps"),
        click.option("--threads", type=int, help="CPU threads for PyTorch"),
        click.option("--seed", type=int, help="random seed"),
        click.option("--precision", type=click.Choice(["32", "bf16", "fp16"]),
                     help="32, or bf16/fp16 mixed precision (fp16 on CUDA only)"),
        click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model"),
        click.option("--ema", type=float, metavar="DECAY",
                     help="validate and save a moving average of the weights (e.g. 0.999; 0 = off)"),
        click.option("--ensemble", type=int, metavar="K",
                     help="train K models one after another, each on 1/K of the time, and average them"),
        click.option("--run-dir", type=click.Path(file_okay=False), help="where to write the run (default runs/<recipe>-<time>)"),
        click.option("--config", "config_file", type=click.Path(), help="a run's config.json to start from"),
        click.option("--resume", type=click.Path(), help="continue the run in this directory where it stopped"),
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


@cli.group()
def train() -> None:
    """Train a recipe (fonts, ...) with its embedded defaults or your data."""


def _make_train_command(recipe_name: str):
    from convrnn.recipes import get_recipe
    from convrnn.train.config import parse_pairs

    recipe = get_recipe(recipe_name)

    @click.pass_context
    def command(ctx: click.Context, config_file, resume, sets, **kwargs):
        from convrnn.progress import CountProgress, TrainProgress
        from convrnn.recipes.runner import train as run_train

        overrides: dict = {}
        for name, key in _COMMON_KEYS.items():
            if kwargs.get(name) is not None:
                overrides[key] = kwargs[name]
        for opt in recipe.cli_options:
            value = kwargs.get(opt.flag.split("/")[0].lstrip("-").replace("-", "_"))  # "--a/--no-a" -> a
            if value is None or (opt.multiple and not value):
                continue
            overrides[opt.key] = list(value) if opt.multiple else value
        overrides.update(parse_pairs(list(sets)))
        quiet = ctx.find_root().obj["quiet"]
        trainer = run_train(recipe_name, overrides, config_file=config_file, resume=resume,
                            callbacks=[TrainProgress(quiet=quiet)],
                            progress=CountProgress(f"preparing {recipe_name} data", quiet=quiet))
        from convrnn.train.distributed import shutdown

        report = [] if trainer.run_dir is None else results_block(trainer)  # only rank 0 of a torchrun job
        del trainer  # its DDP wrapper holds the process group
        shutdown()  # a torchrun job leaves its process group together; nothing for one process
        for line in report:
            click.echo(line)

    command.__doc__ = f"Train the {recipe.name} recipe: {recipe.description}."
    for opt in reversed(recipe.cli_options):
        kw = {"help": opt.help, "multiple": opt.multiple}
        if opt.is_flag:
            kw = {"help": opt.help, "is_flag": True, "default": None}
        else:
            kw["type"] = opt.type
        command = click.option(opt.flag, **kw)(command)
    command = _common_train_options(command)
    train.command(name=recipe.name)(command)


def display_path(path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def results_block(trainer) -> list[str]:
    """What a finished training prints once: the run, how long it trained, its final validation and
    the best checkpoint (which eval, predict and export use)."""
    pos, task = trainer.pos, trainer.task
    lines = [f"run:        {display_path(trainer.run_dir.path)}",
             f"trained:    {pos.step:,} steps, {pos.epoch} epochs completed, {pos.train_time:.1f} s"]
    if trainer.last_val:
        lines.append(f"final:      {task.format_metrics(trainer.last_val)}  (validation at step {trainer.val_step:,})")
    if pos.best_step >= 0:
        lines.append(f"best:       {task.format_metrics(trainer.best_metrics)}  (step {pos.best_step:,}, "
                     f"checkpoints/best.pt: what eval, predict and export use)")
    return lines


def _register_train_commands() -> None:
    from convrnn.recipes import list_recipes
    for name in list_recipes():
        _make_train_command(name)


# ------------------------------------------------------------------------------- eval / predict

SHIFTS_HELP = ("read every input N times: a line moved right by 0..N-1 pixels, all views decoded jointly (CTC "
               "recipes); other images as drawn and moved one pixel right, left, down, up, then diagonally "
               "(N <= 9), the views' distributions multiplied (values averaged)")


@cli.command(name="eval")
@click.argument("run", type=click.Path())
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override the run's data config")
@click.option("--shifts", type=click.IntRange(min=1), default=1, show_default=True,
              help=SHIFTS_HELP)
@click.pass_context
def eval_cmd(ctx: click.Context, run: str, split: str, sets, shifts: int) -> None:
    """Evaluate a run's best checkpoint on its validation data."""
    from convrnn.progress import CountProgress
    from convrnn.recipes.runner import evaluate
    from convrnn.train.config import parse_pairs

    result = evaluate(run, split=split, overrides=parse_pairs(list(sets)), shifts=shifts,
                      progress=CountProgress("preparing data", quiet=ctx.find_root().obj["quiet"]))
    click.echo(f"checkpoint: {result.checkpoint} (step {result.step:,})")
    click.echo(f"split: {split}")
    for line in result.task.metric_lines(result.metrics):
        click.echo(line)


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--beam", type=click.IntRange(min=1), help="CTC recipes: prefix beam search of this width")
@click.option("--lexicon", type=click.Path(dir_okay=False), help="CTC recipes: word list constraining the beam")
@click.option("--shifts", type=click.IntRange(min=1), default=1, show_default=True,
              help=SHIFTS_HELP)
@click.option("--out", type=click.Path(file_okay=False), help="lines recipe: write each ALTO/PAGE XML input "
              "into this folder with the recognised text of its lines")
def predict(run: str, inputs: tuple[str, ...], beam: Optional[int], lexicon: Optional[str], shifts: int,
            out: Optional[str]) -> None:
    """Predict with a trained run: one line per input (per text line of a page XML input)."""
    from convrnn.recipes.runner import predict as run_predict
    options = {k: v for k, v in (("beam", beam), ("lexicon", lexicon), ("out", out)) if v is not None}
    options["shifts"] = shifts
    for line in run_predict(run, list(inputs), **options):
        click.echo(line)


# ------------------------------------------------------------------------------ models / summary

@cli.command()
def models() -> None:
    """List the model presets."""
    from convrnn.models import get_preset, list_models
    for name in list_models():
        click.echo(f"{name:12s} {get_preset(name).description}")


def _parse_input_shape(text: str) -> tuple:
    try:
        return tuple(None if p.strip().lower() in ("", "none", "?") else int(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated sizes like 1,16,64, got {text!r}") from None


@cli.command()
@click.argument("spec")
@click.option("--input", "input_shape", help="input shape per sample: C,H,W (image) or T,C,H,W (sequence); "
              "default: the preset's")
@click.option("--batch-size", type=int, default=32, show_default=True, help="batch size for the memory estimate")
@click.option("--num-outputs", type=int, default=None, help="classes/outputs of the head (default: the preset's)")
def summary(spec: str, input_shape: Optional[str], batch_size: int, num_outputs: Optional[int]) -> None:
    """Per-layer shapes, parameters and a training-memory estimate for SPEC (a spec string or a preset name)."""
    from convrnn.models import get_preset, list_models
    from convrnn.spec.builder import build_model

    from convrnn.spec.grammar import op_names

    shape = _parse_input_shape(input_shape) if input_shape else None
    name = spec.strip().partition(":")[0]
    if " " not in spec.strip() and name not in list_models() and name not in op_names():
        get_preset(name)  # neither a preset nor an op: the unknown-preset error, with the closest names
    # a preset, maybe with fields (crnn:filters=16); a one-token spec such as conv:8,3x3 is not one
    if " " not in spec.strip() and name in list_models():
        overrides = {k: v for k, v in (("num_outputs", num_outputs), ("input_shape", shape)) if v is not None}
        preset = get_preset(spec, **overrides)
        spec_text, shape, n_out = preset.spec, shape or preset.input_shape, num_outputs
        if n_out is None:
            n_out = getattr(preset, "num_outputs", None)
    else:
        if shape is None:
            raise click.UsageError("--input C,H,W is required with a spec string")
        spec_text, n_out = spec, num_outputs
    model = build_model(spec_text, shape, n_out)
    click.echo(str(model.summary(batch_size=batch_size)))


# ----------------------------------------------------------------------------------------- fonts

@cli.group()
def fonts() -> None:
    """The fonts dataset: preview what the model sees."""


@fonts.command()
@click.option("--fonts", "font_paths", multiple=True, help="font file or folder (repeatable); default: bundled faces")
@click.option("--text", type=click.Path(), help="UTF-8 text file (default: embedded text)")
@click.option("--out", type=click.Path(dir_okay=False), default="fonts-preview.png", show_default=True)
@click.option("--samples", type=int, default=8, show_default=True, help="samples per font")
@click.option("--height", type=int, default=16, show_default=True)
@click.option("--width", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def preview(font_paths, text, out, samples, height, width, seed) -> None:
    """Write a PNG grid of rendered samples, one row per font."""
    from convrnn.data.fonts import load_text_lines, preview_grid, resolve_fonts
    if samples < 1 or height < 4 or width < 4:
        raise click.BadParameter("--samples must be at least 1 and --height/--width at least 4")
    specs = resolve_fonts(list(font_paths))
    path = preview_grid(specs, load_text_lines(text), out, samples=samples, height=height, width=width, seed=seed)
    click.echo(f"wrote {path} ({len(specs)} fonts x {samples} samples)")


# ------------------------------------------------------------------------------------------ main

# Further command groups live in convrnn/commands/<name>.py, each with ``register(cli)``; adding a
# group means adding its module name here, never growing this file.
COMMAND_MODULES: tuple[str, ...] = ("sample", "plot", "data", "lines", "report", "export")


def _register_command_modules() -> None:
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(f"convrnn.commands.{name}").register(cli)


def main(argv: Optional[list[str]] = None) -> None:
    from convrnn.progress import stop_all
    if not train.commands:
        _register_train_commands()
        _register_command_modules()
        _add_quiet_option(cli)
    try:
        _run(argv)
    finally:
        stop_all()  # a bar still drawn when a command fails would garble the error line


def _run(argv: Optional[list[str]]) -> None:
    try:
        cli.main(args=argv, prog_name="convrnn", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except ConvrnnError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: the last checkpoint is intact; continue with --resume RUN", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
