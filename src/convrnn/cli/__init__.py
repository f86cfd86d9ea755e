"""The ``convrnn`` command line: a thin adapter over the library.

Every user error ends in one line on stderr and exit code 2, never a traceback. The commands live in
the modules of this package (each with ``register(cli)``, listed in the tuple of ``_register``) and in the
recipes (``Recipe.commands``: ``convrnn fonts preview``, ``convrnn plot ctc``).
"""
from __future__ import annotations

import logging
import os
import sys
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
    from convrnn.cli.progress import ConsoleFilter
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
    # the other processes of a torchrun job (RANK > 0) train in step with rank 0, which alone reports
    # progress; they keep to warnings and errors, as under --quiet
    quiet = quiet or os.environ.get("RANK", "0") not in ("", "0")
    _setup_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet}



# ------------------------------------------------------------------------------------------ main

def _recipe_commands() -> None:
    """Each recipe's own commands, in the group it names (made when it is not there yet)."""
    from convrnn.recipes import get_recipe, list_recipes
    for name in list_recipes():
        for group_name, command in get_recipe(name).commands():
            group = cli
            if group_name:
                if group_name not in cli.commands:
                    cli.add_command(click.Group(group_name, help=f"Commands of the {name} recipe."))
                group = cli.commands[group_name]
            group.add_command(command)


def _register() -> None:
    from convrnn.cli import data, export, models, plot, report, run, sample, train
    for module in (train, run, models, sample, plot, report, data, export):
        module.register(cli)
    _recipe_commands()
    _add_quiet_option(cli)


def main(argv: Optional[list[str]] = None) -> None:
    from convrnn.cli.progress import stop_all
    if not cli.commands:
        try:
            _register()  # the heavy imports (torch): a second or two, in which Ctrl-C is as welcome as later
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    try:
        _run(argv)
    finally:
        stop_all()  # a bar still drawn when a command fails would garble the error line


def _run(argv: Optional[list[str]]) -> None:
    from convrnn.cli.progress import stop_all
    try:
        cli.main(args=argv, prog_name="convrnn", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        stop_all()
        message = e.format_message()
        if message.startswith("Got unexpected extra argument") and ("/" in message or "." in message):
            # several values after an option that takes one: an unquoted pattern the shell expanded, or
            # files listed after one --fonts
            message = message[:300] + ("..." if len(message) > 300 else "") + (
                "; an option takes one value: repeat it for each (--fonts a.ttf --fonts b.ttf), and quote a "
                "pattern such as 'pages/*.xml', or the shell expands it into many arguments")
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as e:  # click's form of Ctrl-C; a training says what it kept
        stop_all()  # the message on a line of its own, not after a bar
        click.echo(str(e) or "interrupted", err=True)
        sys.exit(130)
    except ConvrnnError as e:
        stop_all()
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        stop_all()
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
