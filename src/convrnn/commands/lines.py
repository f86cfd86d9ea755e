"""``convrnn plot ctc RUN LINE.png --out PNG``: per-frame character probabilities under the line image.

Adds the ``ctc`` command to the ``plot`` group of :mod:`convrnn.commands.plot`.
"""
# B batch, T frames, V labels (blank + alphabet)
from __future__ import annotations

import click


@click.command(name="ctc")
@click.argument("run", type=click.Path())
@click.argument("image", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default="ctc.png", show_default=True, help="PNG to write")
def ctc(run: str, image: str, out: str) -> None:
    """Draw a lines run's per-frame character probabilities for IMAGE, aligned under the image."""
    import torch

    from convrnn.data.lines import prepare_line
    from convrnn.recipes.lines import LinesCTCTask, run_lines
    from convrnn.recipes.runner import load_run
    from convrnn.viz.ctc_plot import plot_ctc

    model, ckpt, _ = load_run(run, expect_recipe="lines")
    alphabet = ckpt["meta"]["alphabet"]
    output = run_lines(model, ckpt, [image])  # an ensemble's y: its members' mean frame probabilities
    n = int(output.lengths[0])
    probs = torch.softmax(output.y[0, :n].float(), dim=-1).numpy()  # (T, V)
    text = LinesCTCTask(alphabet).decode(output)[0]
    pixels = prepare_line(image, int(ckpt["input_shape"][1]))
    path = plot_ctc(pixels, probs, alphabet, out, text=text)
    how = "joint beam search of its members" if output.members is not None else "greedy"
    click.echo(f"wrote {path} ({n} frames, text {text!r}, {how})")


def register(cli: click.Group) -> None:
    from convrnn.commands import plot as plot_commands

    plot_commands.register(cli)  # adds the group unless it is already there
    cli.commands["plot"].add_command(ctc)
