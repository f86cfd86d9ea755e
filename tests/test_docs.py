"""What a reader of the README meets: its library snippet runs, and its tables name every recipe and
every command there is."""
from __future__ import annotations

import re
from pathlib import Path

from convrnn.recipes import list_recipes

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_library_snippet_runs():
    (code,) = re.findall(r"## As a library\n\n```python\n(.*?)```", README, re.S)
    exec(compile(code, "README.md", "exec"), {})


def test_the_recipes_table_names_every_recipe():
    table = README.split("## Recipes", 1)[1].split("\n\n", 2)[1]
    named = re.findall(r"^\| \[`(\w+)`\]", table, re.M)
    assert sorted(named) == list_recipes()


def test_the_commands_table_names_every_command():
    from convrnn.cli import _register, cli
    if not cli.commands:
        _register()
    table = README.split("## Commands", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"^\| `convrnn (\w+)", table, re.M))
    assert named == set(cli.commands)


def test_the_training_from_python_example_in_the_spec_docs_runs_and_learns():
    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"## Training from Python\n.*?```python\n(.*?)```", text, re.S)
    import torch
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "docs/spec.md", "exec"), scope)
    metrics = scope["trainer"].result().metrics  # the last validation, which fit() returned
    assert metrics["accuracy"] > 0.5  # one epoch of a small model on 8x8 digits: well above chance (0.1)
    assert len(scope["task"].predict(scope["again"](scope["images"][:2]))) == 2
