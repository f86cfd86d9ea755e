"""Recipes: data + default preset + task + everything shown about them, registered by name.

A recipe is one class in one module; registering it makes ``convrnn train <name>`` appear in the CLI
with the recipe's own options next to the common ones, and ``eval``, ``predict``, ``report`` and
``export`` work on its runs. Nothing outside ``convrnn.recipes`` names a recipe.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from convrnn.errors import ConfigError
from convrnn.train.config import ModelConfig, RunConfig, TrainConfig, flatten_config_dict, load_config_file


@dataclass(frozen=True)
class CliOption:
    """A recipe-specific command-line option mapped onto a config key (``section.key``)."""

    flag: str                  # e.g. "--fonts"
    key: str                   # e.g. "data.fonts"
    help: str
    type: Any = str            # click type
    multiple: bool = False
    is_flag: bool = False
    aliases: tuple = ()        # other spellings of the flag, e.g. ("--text",) for a recipe reading text


class Predictions(list):
    """A recipe's ``predict`` output lines; ``unread`` says, one entry each, which inputs could not be
    read at all (the output holds the others), so that the command line can end with an error."""

    def __init__(self, lines=(), unread=()):
        super().__init__(lines)
        self.unread = list(unread)


@dataclass
class DataBundle:
    """What a recipe's data step returns."""

    train: Any                 # BatchSource
    val: Any                   # BatchSource or None
    input_shape: tuple         # per sample, no batch
    num_outputs: int           # what the data asks of the model's head (classes, labels, possible values)
    meta: dict                 # stored in checkpoints: class names, alphabet, vocabulary, image size...
    test: Any = None           # optional held-out BatchSource

    def split(self, name: str):
        """The BatchSource of ``name`` (val or test); a ConfigError when the data has none."""
        data = self.test if name == "test" else self.val
        if data is None:
            raise missing_split(name)
        return data


def missing_split(name: str, hint: str = "") -> ConfigError:
    return ConfigError(f"this run's data has no {name} split" + (f" ({hint})" if hint else ""))


DOES_NOT_FIT = "the data does not fit this run's model"  # check_meta's context when eval data is refused


def _shown(value: Any) -> str:
    """A meta value in an error line: sizes of long collections, the value of anything short."""
    if isinstance(value, dict) and "chars" in value:  # a vocabulary
        value = value["chars"]
    if isinstance(value, (list, tuple, str, dict)) and len(str(value)) > 40:
        return f"{len(value)} entries" if not isinstance(value, str) else f"{len(value)} characters"
    return repr(value)


def check_meta(keys: tuple[str, ...], checkpoint: dict, data: dict, context: str, *, error=ConfigError) -> None:
    """The entries ``keys`` of a data meta equal a checkpoint's (where the checkpoint records them);
    else ``error``, one line that names each entry that differs, with both values."""
    diffs = [f"{k} {_shown(data.get(k))} where the checkpoint has {_shown(checkpoint[k])}"
             for k in keys if k in checkpoint and data.get(k) != checkpoint[k]]
    if diffs:
        raise error(f"{context}: " + "; ".join(diffs))


class Recipe:
    """Base class. Subclasses set the class attributes and implement ``make_data`` and ``make_task``;
    the other hooks have defaults. The class docstring's first paragraph is the recipe's
    ``description`` (the help of ``convrnn train NAME``)."""

    name: str = ""
    description: str = ""
    default_preset: str = ""
    preset_tasks: tuple[str, ...] = ()  # the kinds of preset (Preset.task) it trains; empty = the default's kind
    data_config: type = type(None)
    cli_options: tuple[CliOption, ...] = ()
    train_defaults: dict[str, Any] = {}
    ensemble_refusal: str = ""  # why train.ensemble cannot average this recipe's models; empty = it can
    report_split: str = "val"   # the split the report's recipe sections evaluate on, when the run has it
    # Data meta entries a checkpoint is tied to. input_meta: what its model reads (line height, image size
    # and scale, text unit); data built for eval must have the checkpoint's. label_meta: what its outputs
    # mean (classes, alphabet, vocabulary); eval maps other data onto the checkpoint's where the recipe
    # can, and resuming a run needs both equal, so that changed data never silently changes what an
    # output means.
    input_meta: tuple[str, ...] = ()
    label_meta: tuple[str, ...] = ()
    # Settings added after runs were already made, with the value such a run trained with: a saved
    # config (a run's config.json, read to resume, evaluate or start from) that lacks one gets it
    saved_defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "description" not in cls.__dict__ and cls.__doc__:
            cls.description = " ".join(cls.__doc__.strip().split("\n\n")[0].split())

    def fitting_tasks(self) -> tuple[str, ...]:
        """The kinds of preset this recipe trains: ``preset_tasks``, else its default preset's kind."""
        from convrnn.spec.presets import get_preset
        return self.preset_tasks or (get_preset(self.default_preset).task,)

    # ----- configuration ---------------------------------------------------------------------------
    def default_config(self) -> RunConfig:
        """This recipe's defaults: its preset, its data config, TrainConfig with ``train_defaults``."""
        cfg = RunConfig(recipe=self.name, model=ModelConfig(preset=self.default_preset), data=self.data_config(),
                        train=TrainConfig())
        return cfg.override({f"train.{k}": v for k, v in self.train_defaults.items()})

    def config(self, overrides: dict[str, Any] | None = None, config_file: Optional[str] = None) -> RunConfig:
        """Defaults, then a saved config file, then explicit overrides (last wins)."""
        cfg = self.default_config()
        given: set[str] = set()
        if config_file:
            saved = load_config_file(config_file)
            if saved["recipe"] != self.name:
                raise ConfigError(f"{config_file}: this config is for recipe {saved['recipe']!r}, not {self.name!r}")
            flat = flatten_config_dict(saved)
            flat.pop("train.run_dir", None)  # a re-run gets a fresh directory
            flat = self.with_saved_defaults(flat)
            cfg.override(flat)
            given.update(flat)
        if overrides:
            cfg.override(overrides)
            given.update(overrides)
        self.settle_defaults(cfg, given, set(overrides or ()))
        return cfg

    def with_saved_defaults(self, flat: dict[str, Any]) -> dict[str, Any]:
        """A saved config's settings (``section.key``) with ``saved_defaults`` for the ones it lacks."""
        return {**{k: v for k, v in self.saved_defaults.items() if k not in flat}, **flat}

    def settle_defaults(self, cfg: RunConfig, given: set[str], overridden: set[str] = frozenset()) -> None:
        """Defaults that depend on other settings, filled in place; ``given`` names the keys
        (``section.key``) that the caller or a saved config set, which are left alone; ``overridden``
        those the caller set (over a saved config's). Default: none."""

    def resolve_data(self, data_cfg) -> None:
        """At the start of a new run: settle implicit data choices in place (where the data comes
        from when no path was given), so the saved config names exactly what the run read."""

    def model_fields(self, data_cfg) -> dict[str, Any]:
        """Preset fields the data needs of the model (what the target is, a value per step...):
        given to the preset where it has them. Default: none."""
        return {}

    # ----- the model -------------------------------------------------------------------------------
    def check_model(self, cfg: RunConfig) -> None:
        """Before any data is made: the spec parses, or the preset exists, takes the fields given and
        is of a kind this recipe trains (a text-line model cannot classify fonts)."""
        from convrnn.spec.grammar import parse
        from convrnn.spec.presets import get_preset, list_models
        if cfg.model.spec or not cfg.model.preset:
            parse(cfg.model.spec)
            return
        preset = get_preset(cfg.model.preset, **self._needs(cfg))  # an unknown preset or field fails here
        parse(preset.spec)  # and a field value the spec cannot take
        if preset.task not in self.fitting_tasks():
            fitting = [n for n in list_models() if get_preset(n).task in self.fitting_tasks()]
            raise ConfigError(f"preset {cfg.model.preset!r} ({preset.description}) is not a model the {self.name} "
                              f"recipe trains; its presets: {', '.join(fitting)} (`convrnn models` lists them all)")

    def build_model(self, cfg: RunConfig, bundle: DataBundle):
        """The model a run trains: the explicit spec, or the preset filled for the data (its input
        shape, its number of outputs, and what ``model_fields`` says the data needs)."""
        from convrnn.spec.builder import build_model
        from convrnn.spec.presets import get_preset
        if cfg.model.spec:
            return build_model(cfg.model.spec, tuple(bundle.input_shape), bundle.num_outputs)
        preset = get_preset(cfg.model.preset, num_outputs=bundle.num_outputs, input_shape=bundle.input_shape,
                            **self._needs(cfg))
        return build_model(preset.spec, tuple(bundle.input_shape), preset.num_outputs)

    def _needs(self, cfg: RunConfig) -> dict[str, Any]:
        """``model_fields`` of the data, for the fields the chosen preset has."""
        from convrnn.spec.presets import preset_fields
        known = preset_fields(cfg.model.preset)
        return {k: v for k, v in self.model_fields(cfg.data).items() if k in known}

    # ----- data, task, inference -------------------------------------------------------------------
    def make_data(self, data_cfg, train_cfg, *, progress: Optional[Callable] = None) -> DataBundle:
        raise NotImplementedError

    def make_split(self, data_cfg, train_cfg, split: str, meta: dict, *, progress: Optional[Callable] = None):
        """The ``split`` (val or test) data of a trained run whose checkpoint holds data ``meta``, for
        ``eval`` and ``report``: by default the whole data rebuilt (``make_data``), which must give the
        checkpoint's ``input_meta`` and ``label_meta``, and its split. Recipes override it to read a split
        on its own (so that evaluating it neither reads nor needs the training data) or to map other
        data's labels onto the checkpoint's."""
        bundle = self.make_data(data_cfg, train_cfg, progress=progress)
        check_meta(self.input_meta + self.label_meta, meta, bundle.meta, DOES_NOT_FIT)
        return bundle.split(split)

    def make_task(self, meta: dict, output_shape: tuple):
        """The task of a model whose output has ``output_shape`` (batch first) on data of ``meta``:
        from these alone, so a checkpoint rebuilds the task it was trained with."""
        raise NotImplementedError

    def predict(self, loaded, inputs: list[str], **options) -> list[str]:
        """One line per input (or per line of a page...) for a loaded run (``convrnn.infer.run.Loaded``);
        a :class:`Predictions` when some inputs could not be read."""
        raise ConfigError(f"recipe {self.name} has no predict")

    # ----- what is shown about it ------------------------------------------------------------------
    def report_sections(self, ctx) -> list:
        """The recipe's own sections of ``convrnn report`` (``convrnn.viz.html.Section``), built from
        an evaluation context (``convrnn.viz.html.EvalContext``). Default: none."""
        return []

    def callbacks(self) -> list:
        """Extra trainer callbacks for this recipe's runs (generated samples in TensorBoard...)."""
        return []

    def commands(self) -> list:
        """Extra click commands: ``(group name or None, command)`` pairs (``convrnn fonts preview``,
        ``convrnn plot ctc``)."""
        return []


_RECIPES: dict[str, type] = {}


def register_recipe(cls):
    """Class decorator: make a recipe available by its ``name``."""
    _RECIPES[cls.name] = cls
    return cls


def _load_builtin() -> None:
    from convrnn.recipes import charlm, digits, fonts, lines, mnist  # noqa: F401  (each registers itself)


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
