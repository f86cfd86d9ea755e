"""``convrnn plot``: pictures of runs as PNG files.

``plot filters RUN [RUN ...] --out PNG`` draws each run's first convolution kernels (a row per run);
``plot curves RUN [RUN ...] --out PNG`` draws learning curves from the runs' metrics.csv. Other
modules add commands to the group: ``from convrnn.cli.plot import plot; plot.add_command(...)``.
"""
from __future__ import annotations

import click

from convrnn.cli.paths import UserPath


@click.group()
def plot() -> None:
    """Pictures of runs: first-layer filters, learning curves, a confusion matrix, a text line's CTC outputs."""


@plot.command()
@click.argument("runs", nargs=-1, required=True, type=UserPath())
@click.option("--out", type=UserPath(dir_okay=False), default="filters.png", show_default=True, help="PNG to write")
@click.option("--shared-scale", is_flag=True, help="one gray scale per run instead of one per kernel")
def filters(runs: tuple[str, ...], out: str, shared_scale: bool) -> None:
    """First convolution layer's kernels of each RUN, side by side (one panel per kernel)."""
    from convrnn.viz.plots import plot_filters
    result = plot_filters(list(runs), out, per_kernel_scale=not shared_scale)
    click.echo(f"wrote {result.path} ({' + '.join(str(n) for n in result.panels)} kernels)")


@plot.command()
@click.argument("runs", nargs=-1, required=True, type=UserPath())
@click.option("--out", type=UserPath(dir_okay=False), default="curves.png", show_default=True, help="PNG to write")
@click.option("--metric", "metrics", multiple=True, help="metric to draw (repeatable; default: loss and two "
              "validation metrics the runs share)")
def curves(runs: tuple[str, ...], out: str, metrics: tuple[str, ...]) -> None:
    """Learning curves of each RUN on shared axes (training and validation loss, validation metrics)."""
    from convrnn.viz.plots import plot_curves
    path = plot_curves(list(runs), out, metrics=list(metrics) or None)
    click.echo(f"wrote {path} ({len(runs)} run{'s' if len(runs) > 1 else ''})")


def register(cli: click.Group) -> None:
    if "plot" not in cli.commands:  # another module may have registered the group first
        cli.add_command(plot)
