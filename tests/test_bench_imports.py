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


def test_a_speed_ratio_is_the_median_of_the_rounds_ratios(monkeypatch):
    """One round that a side ran through a fast spell of the machine does not decide the ratio, as it
    decides the ratio of the best rounds (given beside it)."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    from bench.harness import paired_ratio

    ours, theirs = [600.0, 580.0, 590.0, 610.0, 570.0], [630.0, 900.0, 620.0, 640.0, 600.0]
    got = paired_ratio(ours, theirs)
    assert got["round_ratios"] == [0.952, 0.644, 0.952, 0.953, 0.95]
    assert got["value"] == pytest.approx(590.0 / 620.0)  # the middle of the five ratios
    assert got["best_over_best"] == pytest.approx(610.0 / 900.0)
