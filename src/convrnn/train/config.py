"""Configuration: one dataclass per concern, typed overrides, JSON round trip.

A run's resolved configuration is ``{"recipe": ..., "model": {...}, "data": {...}, "train": {...}}``.
Overrides are ``section.key=value`` strings (or a dict); each value is parsed and checked against
the field's type, and an unknown key is an error that lists the known ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from convrnn.errors import ConfigError


def path_field(default: Any = "", *, keep: tuple[str, ...] = ()) -> Any:
    """A config field that holds a file or folder path (or a list of them): set from the command line
    or a config file, a relative path is made absolute against the working directory of that
    moment, so a run's config.json names its data wherever it is read from later. ``keep``: words
    that are not paths (``"sklearn"`` for bundled data) and stay as they are."""
    metadata = {"path": True, "keep": keep}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def absolute_path(value: Any, keep: tuple[str, ...] = ()) -> Any:
    """``value`` with ``~`` expanded and made absolute (a glob pattern stays a pattern); empty, None
    and the words of ``keep`` stay as they are; lists path by path."""
    if isinstance(value, (list, tuple)):
        return [absolute_path(v, keep) for v in value]
    if not value or not isinstance(value, str) or value in keep:
        return value
    return os.path.abspath(os.path.expanduser(value))


@dataclass
class ModelConfig:
    """Which model: a preset name, or an explicit spec that replaces the preset's."""

    preset: str = ""
    spec: str = ""


@dataclass
class TrainConfig:
    """How to train. Time and step limits combine: training stops at whichever comes first."""

    epochs: int = 10
    max_steps: int = 0            # 0 = no limit
    max_time: float = 0.0         # seconds of training (excluding validation); 0 = no limit
    batch_size: int = 64
    optimizer: str = "adam"       # adam, adamw, sgd, rmsprop
    lr: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.9         # sgd / rmsprop
    schedule: str = "constant"    # constant, cosine, step, onecycle
    warmup_steps: int = 0
    clip_grad_norm: float = 1.0   # 0 = off
    val_every: int = 0            # steps between validations; 0 = at each epoch end
    checkpoint_every: int = 200   # steps between `last` checkpoints (also at each epoch end)
    keep_checkpoints: int = 3     # step checkpoints kept for falling back when the newest is corrupt
    log_every: int = 20           # steps between logged training metrics
    seed: int = 0
    device: str = "auto"          # auto, cpu, cuda, cuda:N, mps
    threads: int = 0              # CPU threads for torch; 0 = the library default
    deterministic: bool = False
    early_stopping: int = 0       # validations without improvement before stopping; 0 = off
    val_batches: int = 0          # cap on validation batches; 0 = all
    run_dir: str = path_field()   # empty = runs/<recipe>-<timestamp>
    quiet: bool = False
    precision: str = "32"         # 32, bf16 (autocast) or fp16 (autocast + gradient scaler; CUDA only)
    compile: bool = False         # torch.compile the training forward pass
    ema: float = 0.0              # weight averaging: decay of the moving average (e.g. 0.999); 0 = off
    ensemble: int = 1             # members trained one after another on 1/K of the budget each, averaged
    memory_format: str = "auto"   # layout of 2-D convolutions: channels_last, contiguous, or auto (channels
                                  # last on the CPU when a convolution has 16 or more output channels)


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "onecycle")
PRECISIONS = ("32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def validate_train_config(cfg: TrainConfig) -> None:
    """Reject values no run could use, naming the key and what was expected."""
    checks = [
        (cfg.epochs >= 1, "train.epochs", "at least 1", cfg.epochs),
        (cfg.max_steps >= 0, "train.max_steps", "0 or more", cfg.max_steps),
        (cfg.max_time >= 0, "train.max_time", "0 or more seconds", cfg.max_time),
        (cfg.batch_size >= 1, "train.batch_size", "at least 1", cfg.batch_size),
        (cfg.ensemble >= 1, "train.ensemble", "at least 1 (1 = a single model)", cfg.ensemble),
        (cfg.lr > 0, "train.lr", "a positive number", cfg.lr),
        (cfg.optimizer in OPTIMIZERS, "train.optimizer", "one of " + ", ".join(OPTIMIZERS), cfg.optimizer),
        (cfg.schedule in SCHEDULES, "train.schedule", "one of " + ", ".join(SCHEDULES), cfg.schedule),
        (cfg.clip_grad_norm >= 0, "train.clip_grad_norm", "0 (off) or a positive norm", cfg.clip_grad_norm),
        (cfg.checkpoint_every >= 1, "train.checkpoint_every", "at least 1", cfg.checkpoint_every),
        (cfg.keep_checkpoints >= 1, "train.keep_checkpoints", "at least 1", cfg.keep_checkpoints),
        (cfg.log_every >= 1, "train.log_every", "at least 1", cfg.log_every),
        (cfg.ema == 0 or 0 < cfg.ema < 1, "train.ema", "0 (off) or a decay between 0 and 1, e.g. 0.999", cfg.ema),
        (cfg.precision in PRECISIONS, "train.precision", "one of " + ", ".join(PRECISIONS), cfg.precision),
        (cfg.memory_format in MEMORY_FORMATS, "train.memory_format", "one of " + ", ".join(MEMORY_FORMATS),
         cfg.memory_format),
    ]
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(key: str, raw: Any, typ: Any) -> Any:
    """Convert ``raw`` (a string from the command line, or a JSON value) to ``typ``."""
    origin = typing.get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return _parse_value(key, raw, args[0])
    if origin in (list, tuple):
        (item,) = typing.get_args(typ)[:1] or (str,)
        if isinstance(raw, str):
            raw = [r for r in raw.split(",") if r != ""] if raw else []
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {raw!r}")
        return [_parse_value(key, r, item) for r in raw]
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if typ is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {raw!r}") from None
    return raw


def apply_overrides(obj, overrides: dict[str, Any], section: str) -> None:
    """Set fields of dataclass ``obj`` from ``{key: value}``, type-checked; unknown keys are errors.
    Path fields (:func:`path_field`) are made absolute."""
    types_ = _field_types(type(obj))
    paths = {f.name: f.metadata.get("keep", ()) for f in dataclasses.fields(obj) if f.metadata.get("path")}
    for key, raw in overrides.items():
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=3)
            hint = f"; did you mean {', '.join(section + '.' + c for c in close)}?" if close else \
                f"; known keys: {', '.join(sorted(types_))}"
            raise ConfigError(f"unknown config key {section}.{key}{hint}")
        value = _parse_value(f"{section}.{key}", raw, types_[key])
        setattr(obj, key, absolute_path(value, paths[key]) if key in paths else value)


@dataclass
class RunConfig:
    """A run's whole configuration: recipe name plus one dataclass per concern."""

    recipe: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "model": dataclasses.asdict(self.model),
                "data": dataclasses.asdict(self.data) if self.data is not None else {},
                "train": dataclasses.asdict(self.train)}

    def override(self, pairs: dict[str, Any] | list[str]) -> "RunConfig":
        """Apply ``section.key=value`` overrides in place; returns self."""
        if isinstance(pairs, list):
            pairs = parse_pairs(pairs)
        by_section: dict[str, dict] = {}
        for dotted, value in pairs.items():
            section, _, key = dotted.partition(".")
            if not key or section not in ("model", "data", "train"):
                raise ConfigError(f"config key {dotted!r}: expected section.key with section one of model, data, train")
            by_section.setdefault(section, {})[key] = value
        for section, values in by_section.items():
            apply_overrides(getattr(self, section), values, section)
        return self

    def save(self, path: Path) -> None:
        from convrnn.train.checkpoint import atomic_write_text
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``["train.lr=1e-3", ...]`` -> ``{"train.lr": "1e-3"}``; a pair without ``=`` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected section.key=value, e.g. train.lr=1e-3")
        out[key.strip()] = value
    return out


def load_config_file(path: str) -> dict:
    """Read a run's ``config.json`` (as written by a previous run)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON config file ({e})") from None
    if not isinstance(data, dict) or "recipe" not in data:
        raise ConfigError(f"{path}: expected a convrnn run config with a 'recipe' key")
    return data


def flatten_config_dict(data: dict) -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (for re-applying a saved config)."""
    out = {}
    for section in ("model", "data", "train"):
        for key, value in (data.get(section) or {}).items():
            out[f"{section}.{key}"] = value
    return out
