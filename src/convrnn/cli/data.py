"""``convrnn data download mnist --to DIR``: fetch the four MNIST files (resumable, checksummed, atomic)."""
from __future__ import annotations

from typing import Optional

import click

from convrnn.cli.paths import UserPath


@click.group()
def data() -> None:
    """Datasets: download what a recipe can use."""


@data.group()
def download() -> None:
    """Download a dataset (the only commands that use the network)."""


@download.command(name="mnist")
@click.option("--to", "to", type=UserPath(file_okay=False), default=None,
              help="folder to write to (default $CONVRNN_MNIST_DIR, else ~/.cache/convrnn/mnist)")
@click.option("--base-url", multiple=True, help="mirror to download from (repeatable, tried in order; "
              "default: the usual MNIST mirrors)")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait on the network")
@click.pass_context
def download_mnist_cmd(ctx: click.Context, to: Optional[str], base_url: tuple[str, ...], timeout: float) -> None:
    """Download MNIST's four IDX files into --to; files already there with the right checksum are kept."""
    from convrnn.data.download import MIRRORS, download_mnist
    from convrnn.data.mnist import resolve_data_dir
    from convrnn.cli.progress import CountProgress

    quiet = (ctx.find_root().obj or {}).get("quiet", False)
    bars: dict[str, CountProgress] = {}

    def progress(name: str, done: int, total: Optional[int]) -> None:
        if name not in bars:
            bars[name] = CountProgress(f"downloading {name}", quiet=quiet, unit="bytes")
        bars[name](done, total if total is not None else max(done, 1))

    directory = resolve_data_dir(to)
    paths = download_mnist(directory, base_url=list(base_url) or MIRRORS, progress=progress, timeout=timeout)
    for p in paths:
        click.echo(str(p))
    click.echo(f"MNIST is in {directory}: train with `convrnn train digits --data-dir {directory}`")


def register(cli: click.Group) -> None:
    if "data" not in cli.commands:
        cli.add_command(data)
