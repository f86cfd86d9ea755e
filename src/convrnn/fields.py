"""Config dataclass fields: typed values, path fields, and the one check every config goes through.

A config is a plain dataclass. Its fields say, in their metadata, what a value must be:

    height: int = checked(32, lambda v: v >= 8, "at least 8")
    data: str = path_field()            # made absolute when set

``parse_value`` reads a value given as text (``--set data.height=48``) by the field's declared type,
``apply_overrides`` sets fields from ``{key: value}`` (an unknown key is an error naming the close ones)
and ``check(config, section)`` runs every field's own check, then the dataclass's
``check_together()`` for rules between fields, with one message format:
``data.height: expected at least 8, got 4``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import field
from typing import Any, Callable, Union

from convrnn.errors import ConfigError


def checked(default: Any, check: Callable[[Any], bool], expects: str) -> Any:
    """A field whose value must pass ``check``; ``expects`` says what it must be, for the error."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "expects": expects})
    return field(default=default, metadata={"check": check, "expects": expects})


def seed_field(default: int = 0) -> Any:
    """A random seed: numpy and torch take 0 to 2**32 - 1."""
    return checked(default, lambda v: 0 <= v < 2**32, "0 to 2**32 - 1")


def one_of(default: Any, *choices: Any) -> Any:
    """A field whose value is ``default`` or one of ``choices``."""
    allowed = tuple(dict.fromkeys((default, *choices)))
    return checked(default, lambda v: v in allowed, "one of " + ", ".join(str(c) for c in allowed if c != ""))


def path_field(default: Any = "", *, keep: tuple[str, ...] = ()) -> Any:
    """A field that holds a file or folder path (or a list of them): set from the command line or a
    config file, a relative path is made absolute against the working directory of that moment, so
    a run's config.json names its data wherever it is read from later. ``keep``: words that are not
    paths (``"sklearn"`` for bundled data) and stay as they are."""
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


def check(config: Any, section: str) -> None:
    """Every field's own check, then ``config.check_together()`` when the dataclass has one (it
    returns ``(ok, key, expects, got)`` rows). Raises ConfigError naming the first bad value."""
    rows = []
    for f in dataclasses.fields(config):
        test = f.metadata.get("check")
        if test is not None:
            value = getattr(config, f.name)
            rows.append((bool(test(value)), f.name, f.metadata["expects"], value))
    together = getattr(config, "check_together", None)
    if together is not None:
        rows += together()
    for ok, key, expects, got in rows:
        if not ok:
            raise ConfigError(f"{section}.{key}: expected {expects}, got {got!r}")


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_value(key: str, raw: Any, typ: Any) -> Any:
    """Convert ``raw`` (a string from the command line, or a JSON value) to ``typ``; ``key`` names
    the value in the error."""
    origin = typing.get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return parse_value(key, raw, args[0])
    if origin in (list, tuple):
        (item,) = typing.get_args(typ)[:1] or (str,)
        if isinstance(raw, str) and raw.lstrip().startswith("["):  # a JSON list: data.fonts=["a.ttf","b.ttf"]
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}: {raw!r} starts like a JSON list but is not one ({e.msg}); give a JSON "
                                  f"list or a comma-separated one") from None
        elif isinstance(raw, str):
            raw = [r for r in raw.split(",") if r != ""] if raw else []
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {raw!r}")
        return [parse_value(key, r, item) for r in raw]
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


def apply_overrides(obj: Any, overrides: dict[str, Any], section: str) -> None:
    """Set fields of dataclass ``obj`` from ``{key: value}``, each parsed by its type; unknown keys are
    errors that name the close ones. Path fields (:func:`path_field`) are made absolute."""
    types_ = field_types(type(obj))
    paths = {f.name: f.metadata.get("keep", ()) for f in dataclasses.fields(obj) if f.metadata.get("path")}
    for key, raw in overrides.items():
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=3)
            hint = f"; did you mean {', '.join(section + '.' + c for c in close)}?" if close else \
                f"; known keys: {', '.join(sorted(types_))}"
            raise ConfigError(f"unknown config key {section}.{key}{hint}")
        value = parse_value(f"{section}.{key}", raw, types_[key])
        setattr(obj, key, absolute_path(value, paths[key]) if key in paths else value)
