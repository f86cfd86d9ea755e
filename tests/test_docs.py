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
