"""The benchmarks import convrnn inside their functions (so that listing them stays fast): every such
import must name something that exists, or a benchmark fails only when someone runs it."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def convrnn_imports():
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convrnn"):
                for alias in node.names:
                    yield pytest.param(node.module, alias.name, id=f"{path.name}:{node.lineno}:{alias.name}")


@pytest.mark.parametrize("module, name", list(convrnn_imports()))
def test_bench_imports_of_convrnn_exist(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, f"{module}.{name}"


def test_a_kept_copiste_run_stands_for_a_new_one_only_with_the_same_settings(monkeypatch):
    """A setting added to convrnn after a run was kept counts as the same when it has its default."""
    import copy

    monkeypatch.syspath_prepend(str(BENCH.parent))
    from bench.copiste import _resolved_config, same_config

    now = _resolved_config({"data.data": "pages/*.xml", "train.max_time": 3600.0})
    kept = copy.deepcopy(now)
    del kept["data"]["bidi"]  # a run kept before the setting existed
    assert same_config(kept, now) and same_config(now, now)
    changed = copy.deepcopy(now)
    changed["data"]["bidi"] = "none"
    assert not same_config(kept, changed)
    changed = copy.deepcopy(now)
    changed["train"]["lr"] = 1.0
    assert not same_config(kept, changed)
    del kept["train"]  # a section missing: another config
    assert not same_config(kept, now)
