"""CLI smoke tests: a tiny fonts run end to end, and user errors as one line with exit code 2."""
import json

import numpy as np
import pytest
from PIL import Image


from helpers import run_cli, train_cli



TINY = ["--samples-per-font", "60", "--max-steps", "6", "--batch-size", "16", "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), *TINY)
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


def test_a_leading_tilde_in_run_input_and_out_paths_is_the_home_folder(trained_run, capsys, tmp_path, monkeypatch):
    """Quoted, or after ``=``, ``~`` reaches the program unexpanded: every path argument expands it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs").symlink_to(trained_run.parent, target_is_directory=True)
    img = tmp_path / "line.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(16, 64)).astype(np.uint8)).save(img)
    code, out, err = run_cli(capsys, "eval", f"~/runs/{trained_run.name}")
    assert code == 0, err
    assert "accuracy:" in out
    code, out, err = run_cli(capsys, "predict", f"~/runs/{trained_run.name}", "~/line.png")
    assert code == 0, err
    assert out.split("\t")[0] == str(img)
    code, out, err = run_cli(capsys, "plot", "curves", f"~/runs/{trained_run.name}", "--out=~/curves.png")
    assert code == 0, err
    assert (tmp_path / "curves.png").is_file()


@pytest.mark.parametrize("name, what", [("tab\there.png", "a tab"), ("new\nline.png", "a newline"),
                                        ("cr\rhere.png", "a carriage return")])
def test_predict_refuses_a_path_that_would_break_its_output_lines(trained_run, capsys, tmp_path, name, what):
    """predict prints one ``path<TAB>result`` line per input: a tab or line break in a path would add a
    column or a row, so such a path is refused, named as repr, before anything is printed."""
    img = tmp_path / name
    Image.fromarray(np.full((16, 64), 200, dtype=np.uint8)).save(img, format="PNG")
    code, out, err = run_cli(capsys, "predict", str(trained_run), str(img))
    assert code == 2 and out == ""
    assert _one_error_line(err) == (f"error: {str(img)!r}: {what} in the path would break predict's output of one "
                                    f"path<TAB>result line per input; rename the file")


def test_predict_refuses_page_xml_in_a_folder_whose_name_would_break_its_output(trained_run, capsys, tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    page = pages / "a\tb.xml"
    page.write_text("<PcGts/>", encoding="utf-8")
    for given in (str(pages), str(pages / "*.xml")):  # its path is printed, not the folder's or pattern's
        code, out, err = run_cli(capsys, "predict", str(trained_run), given)
        assert code == 2 and out == ""
        assert _one_error_line(err).startswith(f"error: {str(page)!r} (from the input {given}): a tab in the path")


def test_resume_continues_the_same_run(trained_run, capsys, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)  # the module's run stays as the other tests expect it
    code, out, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--max-steps", "8")
    assert code == 0, err
    steps = {int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]}
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
    from convrnn.infer.run import load_run
    with pytest.raises(CheckpointError, match="recipe 'fonts', not 'digits'"):
        load_run(str(trained_run), expect_recipe="digits")


def test_summary_and_preview(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "summary", "fwtk", "--batch-size", "8")
    assert code == 0 and "Recurrent" in out and "training memory" in out
    png = tmp_path / "p.png"
    code, out, err = run_cli(capsys, "fonts", "preview", "--out", str(png), "--samples", "3")
    assert code == 0, err
    assert Image.open(png).size[0] > 3 * 64


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def _charlm_corpus(path, chars: int):
    path.write_text(("to be or not to be " * (chars // 19 + 1))[:chars], encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case", ["preset_of_another_recipe", "empty_checkpoint", "config_as_checkpoint",
                                  "unknown_summary_preset", "resume_another_recipe", "resume_before_checkpoint",
                                  "tiny_corpus", "missing_data_dir", "missing_mnist_dir", "predict_charlm"])
def test_bad_inputs_are_one_line_exit_2_and_leave_no_run(capsys, tmp_path, monkeypatch, trained_run, case):
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    if case == "preset_of_another_recipe":
        argv, message = ["train", "fonts", "--preset", "crnn"], "is not a model the fonts recipe trains; its presets: "
    elif case == "empty_checkpoint":
        (tmp_path / "empty.pt").write_bytes(b"")
        before.add(tmp_path / "empty.pt")
        argv, message = ["eval", "empty.pt"], "empty.pt: the file is empty (0 bytes), not a checkpoint"
    elif case == "config_as_checkpoint":
        argv, message = ["eval", str(trained_run / "config.json")], "config.json: this is a json file, not a checkpoint"
    elif case == "unknown_summary_preset":
        argv, message = ["summary", "nope"], "unknown model 'nope'"
    elif case == "resume_another_recipe":
        argv, message = ["train", "digits", "--resume", str(trained_run)], "this is a run of recipe 'fonts', not 'digits'"
    elif case == "resume_before_checkpoint":
        run = tmp_path / "killed"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text((trained_run / "config.json").read_text())
        before.add(run)
        argv, message = ["train", "fonts", "--resume", str(run)], "stopped before its first checkpoint"
    elif case == "tiny_corpus":
        argv = ["train", "charlm", "--data", _charlm_corpus(tmp_path / "tiny.txt", 40)]
        before.add(tmp_path / "tiny.txt")
        message = "40 characters are too few: with --batch-size 32 and --seq-len 64"
    elif case == "missing_data_dir":
        argv, message = ["train", "digits", "--data-dir", "no-such-dir"], f"--data-dir={tmp_path / 'no-such-dir'}: no such folder"
    elif case == "missing_mnist_dir":
        argv = ["train", "lines", "--synthetic", "digits", "--mnist-dir", "gone"]
        message = f"--mnist-dir={tmp_path / 'gone'}: no such folder"
    else:
        run = tmp_path / "lm"
        code, _, err = run_cli(capsys, "-q", "train", "charlm", "--data", _charlm_corpus(tmp_path / "c.txt", 4000),
                               "--max-steps", "1", "--spec", "embed:4 lstm:8 lm", "--run-dir", str(run))
        assert code == 0, err
        before |= {run, tmp_path / "c.txt"}
        argv, message = ["predict", str(run), "to be"], "use `convrnn sample RUN --prime TEXT`"
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and message in _one_error_line(err), err
    assert set(tmp_path.iterdir()) == before  # nothing half-made: no run directory, no runs/ folder


def test_a_failed_start_after_the_run_directory_exists_removes_it(capsys, tmp_path, monkeypatch):
    """A spec whose output the task cannot score is found once the data is made, before training."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "fonts", "--spec", "cols lstm:8 lm", *TINY, "--run-dir", "run")
    assert code == 2 and "does not fit the fonts recipe" in _one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_eval_reads_the_same_data_from_any_directory(capsys, tmp_path, monkeypatch):
    """Data given by a relative path is recorded absolute: eval from elsewhere reads the same lines."""
    from convrnn.data.synthetic_lines import digit_lines
    from convrnn.data.lines import write_line_folder
    project = tmp_path / "project"
    project.mkdir()
    write_line_folder(digit_lines(24, split="train", max_digits=3, height=16, mnist_dir="sklearn"), project / "train")
    write_line_folder(digit_lines(12, split="val", max_digits=3, height=16, mnist_dir="sklearn", seed=1), project / "val")
    monkeypatch.chdir(project)
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", "train", "--val", "val", "--height", "16",
                             "--max-steps", "2", "--batch-size", "8", "--run-dir", "run")
    assert code == 0, err
    cfg = json.loads((project / "run" / "config.json").read_text())
    assert cfg["data"]["data"] == str(project / "train") and cfg["train"]["run_dir"] == str(project / "run")
    code, here, err = run_cli(capsys, "eval", "run")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, there, err = run_cli(capsys, "eval", str(project / "run"))
    assert code == 0, err
    assert here.splitlines()[1:] == there.splitlines()[1:] and "cer: " in here
    (project / "val").rename(project / "moved")  # the data moved: say so, never read other data
    code, out, err = run_cli(capsys, "eval", str(project / "run"))
    assert code == 2 and str(project / "val") in _one_error_line(err)


def test_quiet_after_the_subcommand(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "fonts", *TINY, "--run-dir", str(tmp_path / "run"), "-q")
    assert code == 0, err
    assert "validation at step" not in err and "final:" in out  # INFO lines silenced, results kept
    log = (tmp_path / "run" / "train.log").read_text()
    assert "validation at step" in log  # the log still has them
    # and what was said of the data before the run directory existed: which data the run read
    assert log.index("fonts: the 5 faces bundled with matplotlib") < log.index("INFO convrnn.train.trainer: training ")


def test_ctrl_c_while_the_commands_load_is_one_line_and_exit_130(monkeypatch, capsys):
    import convrnn.cli as cli_module

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_module.cli, "commands", {})
    monkeypatch.setattr(cli_module, "_register", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli_module.main(["eval", "run"])
    assert exc.value.code == 130 and capsys.readouterr().err == "interrupted\n"
