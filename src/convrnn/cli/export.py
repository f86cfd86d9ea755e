"""``convrnn export RUN --format onnx [--out FILE]``: a run's best model as ONNX (see convrnn.infer.export)."""
from __future__ import annotations

from typing import Optional

import click

from convrnn.cli.paths import UserPath


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("run", type=UserPath())
    @click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
    @click.option("--out", type=UserPath(dir_okay=False), help="output file (default RUN/model.onnx)")
    def export(run: str, fmt: str, out: Optional[str]) -> None:
        """Export a run (its best checkpoint) or a checkpoint file; language models export one step with state."""
        from convrnn.infer.export import OPSET, export_run_steps

        path, one_step = export_run_steps(run, out, fmt)
        note = ("one step with its state: feed the state back in, a symbol at a time" if one_step else
                "every sequence of a batch runs to its full length: batch lines or steps of equal length, or "
                "one at a time")
        click.echo(f"wrote {path} ({path.stat().st_size / 1024:,.0f} KiB, ONNX opset {OPSET}; {note})")
