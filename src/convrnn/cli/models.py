"""``convrnn models`` (the presets) and ``convrnn summary SPEC|PRESET`` (shapes, parameters, memory)."""
from __future__ import annotations

from typing import Optional

import click


@click.command()
def models() -> None:
    """List the model presets: name, the recipes that train it, what it is."""
    from convrnn.recipes import get_recipe, list_recipes
    from convrnn.spec.presets import get_preset, list_models
    recipes = [get_recipe(r) for r in list_recipes()]
    for name in list_models():
        preset = get_preset(name)
        fits = ",".join(r.name for r in recipes if preset.task in r.fitting_tasks()) or "-"
        click.echo(f"{name:15s} {fits:14s} {preset.description}")


def _parse_input_shape(text: str) -> tuple:
    try:
        return tuple(None if p.strip().lower() in ("", "none", "?") else int(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated sizes like 1,16,64, got {text!r}") from None


@click.command()
@click.argument("spec")
@click.option("--input", "input_shape", help="input shape per sample: C,H,W (image) or T,C,H,W (sequence); "
              "default: the preset's")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="batch size for the memory estimate")
@click.option("--num-outputs", type=click.IntRange(min=1), default=None,
              help="classes/outputs of the head (default: the preset's)")
def summary(spec: str, input_shape: Optional[str], batch_size: int, num_outputs: Optional[int]) -> None:
    """Per-layer shapes, parameters and a training-memory estimate for SPEC (a spec string or a preset name)."""
    from convrnn.spec.presets import get_preset, list_models
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


def register(cli: click.Group) -> None:
    cli.add_command(models)
    cli.add_command(summary)
