"""``convrnn report RUN`` (one self-contained HTML page) and ``convrnn plot confusion RUN`` (PNG).

``plot confusion`` joins the shared ``plot`` group of :mod:`convrnn.cli.plot`; this module is
listed after ``plot`` in the tuple of ``_register``.
"""
from __future__ import annotations

from typing import Optional

import click

from convrnn.cli.paths import UserPath
from convrnn.cli.run import THREADS_HELP

SPLITS = click.Choice(["val", "test"])


@click.command()
@click.argument("run", type=UserPath())
@click.option("--out", type=UserPath(dir_okay=False), default=None, help="HTML file to write [default: RUN/report.html]")
@click.option("--split", type=SPLITS, default=None, help="data the recipe sections evaluate on "
              "[default: val; digits: test, whose sequences are longer than training's]")
@click.option("--max-batches", type=click.IntRange(min=1), default=20, show_default=True,
              help="evaluate at most this many batches (keeps a report to seconds)")
@click.option("--threads", type=click.IntRange(min=0), help=THREADS_HELP)
@click.pass_context
def report(ctx: click.Context, run: str, out: Optional[str], split: Optional[str], max_batches: int,
           threads: Optional[int]) -> None:
    """Write one self-contained HTML report of RUN: config, environment, model, throughput, curves,
    filters and the recipe's own views (confusion, per-length error, CTC alignments, samples)."""
    from convrnn.cli.progress import CountProgress
    from convrnn.train.threads import apply_threads
    from convrnn.viz.report import build_report

    if threads is not None:
        apply_threads(threads)
    quiet = (ctx.find_root().obj or {}).get("quiet", False)
    path = build_report(run, out, split=split, max_batches=max_batches,
                        progress=CountProgress("evaluating", quiet=quiet, unit="batches"),
                        data_progress=CountProgress("preparing data", quiet=quiet))
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


@click.command(name="confusion")
@click.argument("run", type=UserPath())
@click.option("--out", type=UserPath(dir_okay=False), default="confusion.png", show_default=True, help="PNG to write")
@click.option("--split", type=SPLITS, default="val", show_default=True, help="data to evaluate on")
@click.option("--max-batches", type=click.IntRange(min=1), default=20, show_default=True,
              help="evaluate at most this many batches")
@click.pass_context
def confusion(ctx: click.Context, run: str, out: str, split: str, max_batches: int) -> None:
    """Confusion matrix of a classification RUN (fonts, mnist) on its validation data."""
    from convrnn.cli.progress import CountProgress
    from convrnn.viz.confusion import plot_confusion

    quiet = (ctx.find_root().obj or {}).get("quiet", False)
    path = plot_confusion(run, out, split=split, max_batches=max_batches,
                          progress=CountProgress("evaluating", quiet=quiet, unit="batches"),
                          data_progress=CountProgress("preparing data", quiet=quiet))
    click.echo(f"wrote {path}")


def register(cli: click.Group) -> None:
    from convrnn.cli import plot as plot_commands

    plot_commands.register(cli)  # adds the shared group unless it is already there
    cli.commands["plot"].add_command(confusion)
    cli.add_command(report)
