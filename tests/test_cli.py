"""CLI smoke tests: a tiny fonts run end to end, and user errors as one line with exit code 2."""
import json

import numpy as np
import pytest
from PIL import Image

from convrnn.cli import main


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


TINY = ["--samples-per-font", "60", "--max-steps", "6", "--batch-size", "16", "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "fonts", "--run-dir", str(run), *TINY])
    assert exc.value.code == 0
    return run


def test_train_writes_a_complete_run(trained_run):
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["recipe"] == "fonts" and cfg["train"]["max_steps"] == 6 and cfg["data"]["samples_per_font"] == 60
    assert (trained_run / "checkpoints" / "last.pt").is_file()
    assert (trained_run / "checkpoints" / "best.pt").is_file()
    assert (trained_run / "metrics.csv").read_text().startswith("step,epoch,split,metric,value,time")
    assert list(trained_run.glob("events.out.tfevents.*"))


def test_predict_and_eval(trained_run, capsys, tmp_path):
    img = tmp_path / "line.png"
    rng = np.random.default_rng(0)
    Image.fromarray((255 - rng.integers(0, 255, size=(16, 64))).astype(np.uint8)).save(img)
    code, out, err = run_cli(capsys, "predict", str(trained_run), str(img))
    assert code == 0, err
    path, name, prob = out.strip().split("\t")
    assert path == str(img) and name in {"DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10"}
    assert 0.0 < float(prob) <= 1.0
    code, out, err = run_cli(capsys, "eval", str(trained_run))
    assert code == 0, err
    assert "accuracy:" in out
    code, out, err = run_cli(capsys, "eval", str(trained_run / "checkpoints" / "last.pt"))  # the last weights
    assert code == 0, err
    assert "accuracy:" in out


def test_resume_continues_the_same_run(trained_run, capsys):
    code, out, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(trained_run), "--max-steps", "8")
    assert code == 0, err
    steps = {int(line.split(",")[0]) for line in (trained_run / "metrics.csv").read_text().splitlines()[1:]}
    assert max(steps) == 8


@pytest.mark.parametrize("argv, message", [
    (["train", "fonts", "--fonts", "/nonexistent/font.ttf"], "/nonexistent/font.ttf"),
    (["train", "fonts", "--text", "/nonexistent/text.txt"], "/nonexistent/text.txt"),
    (["train", "fonts", "--preset", "fwk"], "did you mean: fwtk"),
    (["train", "fonts", "--preset", "fwtk:filterz=3"], "has no field 'filterz'"),
    (["train", "fonts", "--set", "train.epochz=3"], "train.epochz"),
    (["train", "fontz"], "fontz"),
    (["summary", "cols lstm:8 clss:last", "--input", "1,16,64"], "'clss:last' at position 12"),
    (["predict", "/nonexistent/run", "x.png"], "/nonexistent/run"),
])
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("preset, message", [("crnn:filterz=16", "has no field 'filterz'"),
                                             ("crnn:filters=sixteen", "filters: expected int, got 'sixteen'")])
def test_a_bad_preset_field_fails_before_the_data_is_made(capsys, tmp_path, preset, message):
    code, out, err = run_cli(capsys, "train", "lines", "--synthetic", "digits", "--preset", preset,
                             "--run-dir", str(tmp_path / "run"))
    assert code == 2 and message in err
    assert "preparing" not in err and not (tmp_path / "run").exists()


def test_summary_reads_a_preset_with_fields(capsys):
    code, out, err = run_cli(capsys, "summary", "crnn:filters=16,hidden_size=96", "--input", "1,32,64")
    assert code == 0, err
    assert "spec: conv:16,3x3" in out and "lstm:96,bi" in out
    # a spec of one token has a colon too, and is still read as a spec
    code, out, err = run_cli(capsys, "summary", "conv:8,3x3", "--input", "1,16,16")
    assert code == 0, err
    assert "params: 80" in out


@pytest.mark.parametrize("flag, value", [("--ema", "1.5"), ("--lr", "-1")])
def test_bad_training_value_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "fonts", flag, value, *TINY)
    assert code == 2 and f"train.{flag[2:]}: expected" in err.strip().splitlines()[-1], err
    assert list(tmp_path.iterdir()) == []  # no half-made run directory


def test_text_not_utf8(capsys, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 3)
    code, _, err = run_cli(capsys, "train", "fonts", "--text", str(bad), "--run-dir", str(tmp_path / "r"))
    assert code == 2 and str(bad) in err and "UTF-8" in err
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_checkpoint_of_another_recipe_is_refused(trained_run):
    from convrnn.errors import CheckpointError
    from convrnn.recipes.runner import load_run
    with pytest.raises(CheckpointError, match="recipe 'fonts', not 'digits'"):
        load_run(str(trained_run), expect_recipe="digits")


def test_summary_and_preview(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "summary", "fwtk", "--batch-size", "8")
    assert code == 0 and "Recurrent" in out and "training memory" in out
    png = tmp_path / "p.png"
    code, out, err = run_cli(capsys, "fonts", "preview", "--out", str(png), "--samples", "3")
    assert code == 0, err
    assert Image.open(png).size[0] > 3 * 64
