"""Recipes: data + preset model + task + metrics, registered by name.

A recipe is a small class; registering it makes ``convrnn train <name>`` appear in the CLI with the
recipe's own options next to the common training options.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from convrnn.errors import ConfigError


@dataclass(frozen=True)
class CliOption:
    """A recipe-specific command-line option mapped onto a config key (``section.key``)."""

    flag: str                  # e.g. "--fonts"
    key: str                   # e.g. "data.fonts"
    help: str
    type: Any = str            # click type
    multiple: bool = False
    is_flag: bool = False


@dataclass
class DataBundle:
    """What a recipe's data step returns."""

    train: Any                 # BatchSource
    val: Any                   # BatchSource or None
    input_shape: tuple         # per sample, no batch
    num_outputs: int
    meta: dict                 # stored in checkpoints: class names, vocabulary, image size...
    test: Any = None           # optional held-out BatchSource


class Recipe:
    """Base class. Subclasses set the class attributes and implement the hooks."""

    name: str = ""
    description: str = ""
    default_preset: str = ""
    data_config: type = type(None)
    cli_options: tuple[CliOption, ...] = ()
    train_defaults: dict[str, Any] = {}
    ensemble_refusal: str = ""  # why train.ensemble cannot average this recipe's models; empty = it can
    preset_tasks: tuple[str, ...] = ()  # the kinds of preset (Preset.task) this recipe trains; empty = any

    def resolve_data(self, data_cfg) -> None:
        """At the start of a new run: settle implicit data choices in place (where the data comes
        from when no path was given), so the saved config names exactly what the run read.
        Default: nothing to settle."""

    def prepare(self, cfg) -> None:
        """Settle data choices that depend on the model (a ``RunConfig``), before ``make_data``; the
        resolved config is what the run saves. Default: nothing to settle."""

    def make_data(self, data_cfg, train_cfg, *, progress: Optional[Callable] = None) -> DataBundle:
        raise NotImplementedError

    def make_task(self, meta: dict):
        raise NotImplementedError

    def predict(self, model, ckpt: dict, inputs: list[str], **options) -> list[str]:
        raise NotImplementedError(f"recipe {self.name} has no predict")


_RECIPES: dict[str, Callable[[], Recipe]] = {}


def register_recipe(cls):
    """Class decorator: make a recipe available by its ``name``."""
    _RECIPES[cls.name] = cls
    return cls


def _load_builtin() -> None:
    from convrnn.recipes import fonts  # noqa: F401  (registers itself)
    from convrnn.recipes import charlm  # noqa: F401
    from convrnn.recipes import lines  # noqa: F401
    from convrnn.recipes import digits, mnist  # noqa: F401


def list_recipes() -> list[str]:
    _load_builtin()
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    _load_builtin()
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=3)
        hint = f"; did you mean: {', '.join(close)}?" if close else f"; known recipes: {', '.join(sorted(_RECIPES))}"
        raise ConfigError(f"unknown recipe {name!r}{hint}")
    return _RECIPES[name]()
