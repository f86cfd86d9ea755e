"""Every registered recipe, the same way: a few steps, resume, eval, predict (sample for a language
model), export and report, through the command line in this process."""
from __future__ import annotations

import json

import pytest

from convrnn.recipes import list_recipes

from helpers import CORPUS, TINY_RECIPES, predict_inputs, run_cli


def test_every_recipe_has_a_tiny_setting():
    assert sorted(TINY_RECIPES) == list_recipes()  # a new recipe adds its entry, and so gets these tests


@pytest.mark.parametrize("recipe", list_recipes())
def test_a_few_steps_then_resume_eval_predict_export_report(recipe, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    options = [o.replace("{corpus}", str(corpus)) for o in TINY_RECIPES[recipe]]
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", recipe, *options, "--max-steps", "3", "--threads", "1",
                             "--set", "train.checkpoint_every=2", "--run-dir", str(run))
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["recipe"] == recipe
    code, out, err = run_cli(capsys, "-q", "train", recipe, "--resume", str(run), "--max-steps", "5")
    assert code == 0 and "trained:    5 steps" in out and "stopped by the step limit (--max-steps)" in out, err
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and out.startswith(f"checkpoint: {run / 'checkpoints' / 'best.pt'}") and "loss: " in out, err
    inputs = predict_inputs(recipe, tmp_path)
    if inputs:
        code, out, err = run_cli(capsys, "predict", str(run), *inputs)
        assert code == 0 and out.strip(), err
    else:
        code, out, err = run_cli(capsys, "sample", str(run), "--length", "20", "--seed", "0", "--threads", "1")
        assert code == 0 and len(out.strip()) >= 10, err
    code, out, err = run_cli(capsys, "export", str(run))
    assert code == 0 and (run / "model.onnx").stat().st_size > 1000, err
    code, out, err = run_cli(capsys, "report", str(run), "--max-batches", "2")
    assert code == 0 and "Not available" not in (run / "report.html").read_text(), err
