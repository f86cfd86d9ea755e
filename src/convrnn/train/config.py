"""Configuration: one dataclass per concern, typed overrides, JSON round trip.

A run's resolved configuration is ``{"recipe": ..., "model": {...}, "data": {...}, "train": {...}}``.
Overrides are ``section.key=value`` strings (or a dict); each value is parsed and checked against
the field's type, and an unknown key is an error that suggests the close ones.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrnn.errors import ConfigError
from convrnn.fields import apply_overrides, checked, one_of, path_field, seed_field


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "onecycle")
PRECISIONS = ("32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass
class ModelConfig:
    """Which model: a preset name, or an explicit spec that replaces the preset's."""

    preset: str = ""
    spec: str = ""


@dataclass
class TrainConfig:
    """How to train. Time and step limits combine: training stops at whichever comes first."""

    epochs: int = checked(10, lambda v: v >= 1, "at least 1")
    max_steps: int = checked(0, lambda v: v >= 0, "0 or more")       # 0 = no limit
    max_time: float = checked(0.0, lambda v: v >= 0, "0 or more seconds")  # of training (not validation); 0 = no limit
    batch_size: int = checked(64, lambda v: v >= 1, "at least 1")
    optimizer: str = one_of("adam", *OPTIMIZERS)
    lr: float = checked(3e-3, lambda v: v > 0, "a positive number")
    weight_decay: float = checked(0.0, lambda v: v >= 0, "0 or more")
    momentum: float = checked(0.9, lambda v: 0 <= v < 1, "0 or more, below 1")  # sgd / rmsprop
    schedule: str = one_of("constant", *SCHEDULES)
    warmup_steps: int = checked(0, lambda v: v >= 0, "0 or more")
    clip_grad_norm: float = checked(1.0, lambda v: v >= 0, "0 (off) or a positive norm")
    val_every: int = checked(0, lambda v: v >= 0, "0 or more")  # steps between validations; 0 = at each epoch end
    checkpoint_every: int = checked(200, lambda v: v >= 1, "at least 1")  # steps between `last` checkpoints (and each epoch end)
    keep_checkpoints: int = checked(3, lambda v: v >= 1, "at least 1")  # step checkpoints kept to fall back on
    log_every: int = checked(20, lambda v: v >= 1, "at least 1")  # steps between logged training metrics
    seed: int = seed_field()
    device: str = "auto"          # auto, cpu, cuda, cuda:N, mps
    threads: int = checked(0, lambda v: v >= 0, "0 or more")  # CPU threads for torch; 0 = the cores the machine's load leaves idle
    deterministic: bool = False
    early_stopping: int = checked(0, lambda v: v >= 0, "0 (off) or more")  # validations without improvement before stopping
    val_batches: int = checked(0, lambda v: v >= 0, "0 (all) or more")  # cap on validation batches
    run_dir: str = path_field()   # empty = runs/<recipe>-<timestamp>
    precision: str = one_of("32", *PRECISIONS)  # 32, bf16 (autocast) or fp16 (autocast + gradient scaler; CUDA only)
    compile: bool = False         # torch.compile the training forward pass
    ema: float = checked(0.0, lambda v: v == 0 or 0 < v < 1, "0 (off) or a decay between 0 and 1, e.g. 0.999")
    ensemble: int = checked(1, lambda v: v >= 1, "at least 1 (1 = a single model)")  # members trained one after another
    # layout of 2-D convolutions: channels last on the CPU when a convolution has 16 or more output channels (auto)
    memory_format: str = one_of("auto", *MEMORY_FORMATS)


@dataclass
class RunConfig:
    """A run's whole configuration: recipe name plus one dataclass per concern."""

    recipe: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    # the run's identity, set when a run is created and kept by a resume; every checkpoint of the run
    # records it, so a checkpoint copied in from another run is refused (empty: a run made before ids)
    run_id: str = ""

    def to_dict(self) -> dict:
        ids = {"run_id": self.run_id} if self.run_id else {}
        return {"recipe": self.recipe, **ids, "model": dataclasses.asdict(self.model),
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
        from convrnn.files import atomic_write_text
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
    for section in ("model", "data", "train"):
        if not isinstance(data.get(section) or {}, dict):
            raise ConfigError(f"{path}: '{section}' must be an object of key: value settings, "
                              f"got {type(data[section]).__name__}")
    return data


def read_run_config(cfg_file: Path) -> dict:
    """A run directory's ``config.json`` as written, for reading what the run recorded (its recipe, id,
    settings); a file that cannot be read or parsed, or that is not a JSON object, is one DataError."""
    from convrnn.errors import DataError

    try:
        cfg = json.loads(Path(cfg_file).read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{cfg_file}: cannot read the run's config ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{cfg_file}: expected the run's JSON config, could not parse it ({e})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_file}: expected a JSON object of config sections, got {type(cfg).__name__}")
    return cfg


def flatten_config_dict(data: dict) -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (for re-applying a saved config)."""
    out = {}
    for section in ("model", "data", "train"):
        for key, value in (data.get(section) or {}).items():
            out[f"{section}.{key}"] = value
    return out
