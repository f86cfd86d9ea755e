"""A run directory belongs to one run: a second training into it is refused while one runs (its lock) and
after (its files), and eval, report, predict and resume read only the run's own checkpoints (its run_id)."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from convrnn.errors import ConfigError, WriteError
from convrnn.train.checkpoint import load_checkpoint, save_checkpoint
from convrnn.train.rundir import RunLock
from helpers import line_png, run_cli, train_cli

TINY = ["--samples-per-font", "40", "--batch-size", "16", "--max-steps", "4", "--threads", "1",
        "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-a"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), *TINY)
    return run


def copy_run(trained_run, where):
    shutil.copytree(trained_run, where)
    return where


def snapshot(folder):
    """Every file under ``folder`` with its bytes: a refused command must leave them all as they were."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    return lines[-1]


def swap_in(run, name, **changes):
    """Replace ``run``'s checkpoints/NAME by its own checkpoint with ``changes`` (e.g. another run's id),
    saved as a valid checkpoint: what copying in another run's file gives."""
    ckpt = load_checkpoint(run / "checkpoints" / name)
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key, None)
        else:
            ckpt[key] = value
    save_checkpoint(run / "checkpoints" / name, ckpt)


def test_a_run_records_its_id_in_config_and_every_checkpoint(trained_run):
    run_id = json.loads((trained_run / "config.json").read_text())["run_id"]
    assert len(run_id) == 32
    for ckpt in sorted((trained_run / "checkpoints").glob("*.pt")):
        assert load_checkpoint(ckpt)["run_id"] == run_id, ckpt
    assert not (trained_run / ".lock").exists()  # the lock file goes with the lock when the run ends


def test_training_into_a_directory_in_use_is_refused_and_reading_it_is_not(capsys, tmp_path, trained_run):
    new = tmp_path / "new"
    with RunLock.acquire(new):  # this process stands for another training into the directory
        before = snapshot(new)
        code, _, err = run_cli(capsys, "train", "fonts", "--run-dir", str(new), *TINY)
        assert code == 2
        assert f"{new}: another process is training this run directory right now" in error_line(err)
        assert snapshot(new) == before and not (new / "config.json").exists()
    run = copy_run(trained_run, tmp_path / "run")
    with RunLock.acquire(run):
        before = snapshot(run)
        code, _, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--max-steps", "6")
        assert code == 2 and f"--resume {run}: another process is training" in error_line(err)
        assert snapshot(run) == before
        code, out, err = run_cli(capsys, "eval", str(run))  # reading a run in training is allowed
        assert code == 0 and "accuracy" in out, err


def test_the_lock_of_a_killed_training_is_released_with_it(capsys, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom convrnn.train.rundir import RunLock\n"
         "RunLock.acquire(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(120)\n", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another process is training this run directory"):
            RunLock.acquire(run)
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()  # a kill leaves the file, but not the lock
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock as the process ends
        try:
            lock = RunLock.acquire(run)
            break
        except ConfigError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lock.release()
    assert os.listdir(run) == []


@pytest.mark.parametrize("held", ["checkpoint", "config_and_log", "config_and_log_beside_notes"])
def test_a_new_training_into_a_directory_holding_a_run_is_refused(capsys, tmp_path, trained_run, held):
    run = tmp_path / "run"
    delete = f"delete {run}"  # how to clear the run that stopped before its first checkpoint
    if held == "checkpoint":
        copy_run(trained_run, run)
        message = f"{run}: this run directory already holds a run; use --resume {run} to continue it"
    else:  # a run stopped before its first checkpoint (killed: an interrupted one removes its files)
        run.mkdir()
        shutil.copy(trained_run / "config.json", run)
        shutil.copy(trained_run / "train.log", run)
        message = (f"{run}: this run directory already holds a run (config.json) that stopped before its first "
                   f"checkpoint, so there is nothing to --resume; ")
        if held == "config_and_log_beside_notes":  # the folder is the user's too: only convrnn's files go
            (run / "notes.txt").write_text("mine\n")
            delete = f"delete its run files config.json and train.log from {run} (not the folder: it holds other files too)"
        message += f"{delete} to start it again there, or give another --run-dir"
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run), *TINY)
    assert code == 2 and message in error_line(err)
    assert snapshot(run) == before and not (run / ".lock").exists()
    if held != "checkpoint":  # resuming it says the same: nothing to continue
        code, _, err = run_cli(capsys, "train", "fonts", "--resume", str(run))
        assert code == 2 and error_line(err).endswith(
            f"stopped before its first checkpoint, so there is nothing to continue; start it again with "
            f"`convrnn train fonts --config {run / 'config.json'}`, then {delete}")
        assert snapshot(run) == before


class _StopAtStep2:
    """Stands for Ctrl-C (or a failure) at step 2, before the run's first checkpoint (in place of the
    CLI's CompileNotice callback)."""

    def __init__(self, error):
        self.error = error

    def on_step(self, trainer, info):
        if info["step"] == 2:
            raise self.error


@pytest.mark.parametrize("error, code, last_line", [
    (KeyboardInterrupt(), 130, "interrupted before the first checkpoint; nothing was kept"),
    (WriteError("metrics.csv: cannot write (No space left on device)"), 2, "error: metrics.csv: cannot write")])
def test_a_run_stopped_before_its_first_checkpoint_in_a_folder_that_existed_removes_only_its_files(
        capsys, tmp_path, monkeypatch, error, code, last_line):
    """Interrupted or failed before its first checkpoint, a new run keeps nothing: in a folder that was
    there before, the files and folders it wrote go and the user's own stay (a checkpoints/ folder of
    theirs included), so the folder is as it was and a new run starts there without being told to
    delete it."""
    import convrnn.cli.train as cli_train

    run = tmp_path / "mydir"
    (run / "sub").mkdir(parents=True)
    (run / "notes.txt").write_text("mine\n")
    (run / "sub" / "data.txt").write_text("also mine\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "README").write_text("my checkpoints go here\n")
    before, entries = snapshot(run), sorted(run.rglob("*"))
    monkeypatch.setattr(cli_train, "CompileNotice", lambda: _StopAtStep2(error))
    got, _, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run), *TINY, "--set", "train.log_every=1")
    assert got == code and err.strip().splitlines()[-1].startswith(last_line), err
    assert snapshot(run) == before and sorted(run.rglob("*")) == entries
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--run-dir", str(run), *TINY)
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("command", ["eval", "report", "predict", "export"])
def test_a_checkpoint_of_another_run_is_refused(capsys, tmp_path, trained_run, command):
    run = copy_run(trained_run, tmp_path / "swap")
    swap_in(run, "best.pt", run_id="0" * 32)  # another fonts run's best checkpoint, copied in
    argv = {"eval": ["eval", str(run)], "report": ["report", str(run)],
            "predict": ["predict", str(run), line_png(tmp_path / "line.png", 64, 16)],
            "export": ["export", str(run), "--out", str(tmp_path / "m.onnx")]}[command]
    before = snapshot(run)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, err
    line = error_line(err)
    assert f"{run / 'checkpoints' / 'best.pt'}: the checkpoint is of run {'0' * 32}" in line
    assert f"{run / 'config.json'}" in line
    assert snapshot(run) == before and not (tmp_path / "m.onnx").exists()


def test_resuming_from_a_checkpoint_of_another_run_is_refused(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "swap")
    for name in ("last.pt", "step-00000004.pt", "step-00000002.pt"):
        swap_in(run, name, run_id="0" * 32)
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--max-steps", "6")
    assert code == 2 and f"{run / 'checkpoints' / 'last.pt'}: the checkpoint is of run {'0' * 32}" in error_line(err)
    assert snapshot(run) == before


def test_a_checkpoint_without_an_id_in_a_run_with_one_is_refused(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "swap")
    swap_in(run, "best.pt", run_id=None)
    code, _, err = run_cli(capsys, "eval", str(run / "checkpoints" / "best.pt"))  # the file, not the run
    assert code == 2 and "the checkpoint is of a run without a run_id" in error_line(err)


def test_a_config_edited_to_another_recipe_is_refused(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "edited")
    cfg = json.loads((run / "config.json").read_text())
    cfg["recipe"] = "digits"
    (run / "config.json").write_text(json.dumps(cfg))
    for argv in (["eval", str(run)], ["report", str(run)]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, err
        assert (f"the checkpoint is of recipe 'fonts' but {run / 'config.json'} is of recipe 'digits'"
                in error_line(err))
    assert not (run / "report.html").exists()


def test_runs_made_before_run_ids_still_load_and_are_checked_by_recipe(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "old")
    cfg = json.loads((run / "config.json").read_text())
    del cfg["run_id"]
    (run / "config.json").write_text(json.dumps(cfg))
    for name in ("best.pt", "last.pt"):
        swap_in(run, name, run_id=None)
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "accuracy" in out, err
    swap_in(run, "best.pt", recipe="digits")  # no id to compare: a checkpoint of another recipe is still refused
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 2 and "the checkpoint is of recipe 'digits' but" in error_line(err)


def test_a_moved_run_resumes_and_keeps_its_id(capsys, tmp_path, trained_run):
    run_id = json.loads((trained_run / "config.json").read_text())["run_id"]
    run = copy_run(trained_run, tmp_path / "elsewhere" / "moved")
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "accuracy" in out, err
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--max-steps", "6")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["run_id"] == run_id
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 6 and last["run_id"] == run_id
    assert not (run / ".lock").exists()


def test_only_the_writing_rank_takes_the_lock(monkeypatch, tmp_path):
    """A torchrun job's other ranks neither write the run nor lock it: rank 1 trains while rank 0 holds it."""
    from convrnn.recipes.runner import train

    run = tmp_path / "run"
    settings = {"data.samples_per_font": 40, "train.batch_size": 16, "train.max_steps": 2, "train.threads": 1,
                "train.run_dir": str(run)}
    with RunLock.acquire(run):  # rank 0 of the job
        monkeypatch.setenv("RANK", "1")
        result = train("fonts", settings)
        assert result.step == 2 and result.run is None and os.listdir(run) == [".lock"]  # rank 1 wrote nothing


@pytest.mark.parametrize("change, message", [
    (["--config", "/nonexistent/config.json"],
     "--config /nonexistent/config.json: a resumed run continues with its own config.json; change values with --set"),
    (["--run-dir", "ELSEWHERE"], "--run-dir ELSEWHERE: a resumed run stays in its own directory RUN"),
    (["--epochs", "77", "--precision", "fp16", "--device", "cpu"], "train.precision=fp16 needs a CUDA device"),
    (["--epochs", "77", "--set", "train.optimizer=sgd"],
     "train.optimizer=sgd: the run trains with adam, and its checkpoint holds adam's state"),
    (["--epochs", "77", "--batch-size", "8"],
     "train.batch_size=8: the run stopped at batch 4 of epoch 1, and the rest of that epoch is the batch order "
     "of train.batch_size=16; change it at an epoch's end: resume first with --epochs 1"),
    (["--epochs", "77", "--seed", "5"], "train.seed=5: the run stopped at batch 4 of epoch 1"),
    (["--epochs", "77", "--samples-per-font", "80"], "the run stopped at batch 4 of 10 in epoch 1, and its "
     "training data now makes 20 batches of that epoch (a data setting changed)"),
])
def test_a_refused_resume_leaves_the_run_as_it_was(capsys, tmp_path, trained_run, change, message):
    """Every refusal comes before config.json is written: the refused values do not stick to the run,
    and the next plain --resume continues with the run's own settings."""
    run = copy_run(trained_run, tmp_path / "run")
    change = [str(tmp_path / "elsewhere") if a == "ELSEWHERE" else a for a in change]
    message = message.replace("ELSEWHERE", str(tmp_path / "elsewhere")).replace("RUN", str(run))
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--max-steps", "6", *change)
    assert code == 2 and message in error_line(err), err
    assert snapshot(run) == before and not (tmp_path / "elsewhere").exists()
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--run-dir", str(run),
                           "--max-steps", "6")
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())["train"]
    assert (saved["epochs"], saved["precision"], saved["optimizer"], saved["batch_size"], saved["seed"]) == \
        (json.loads((trained_run / "config.json").read_text())["train"]["epochs"], "32", "adam", 16, 0)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6


def test_a_resume_trains_with_the_optimizer_settings_config_json_records(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--max-steps", "6",
                           "--set", "train.weight_decay=0.5")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["weight_decay"] == 0.5
    groups = load_checkpoint(run / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5] * len(groups)


def test_batch_size_and_seed_change_at_an_epochs_end(capsys, tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--epochs", "1", "--max-steps", "0")
    assert code == 0, err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["batch_in_epoch"]) == (1, 0)
    code, _, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--epochs", "2",
                           "--batch-size", "8", "--seed", "3")
    assert code == 0, err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["batch_in_epoch"], last["step"]) == (2, 0, 10 + 20)  # 160 samples: 10, then 20 batches


class _StopSecondMember:
    """Interrupts the second member of an ensemble after its third step, as a kill would."""

    def on_step(self, trainer, info):
        if trainer.cfg.seed == 1 and info["step"] == 3:
            raise KeyboardInterrupt


def test_a_refused_ensemble_resume_trains_no_member_on(capsys, tmp_path):
    """Every member's check comes before the first member trains on: the first member, at an epoch's
    end, could take another batch size, but the second stopped within an epoch, so the resume is
    refused and the first member stays as it was."""
    from convrnn.recipes.runner import train

    run = tmp_path / "ens"
    settings = {"data.samples_per_font": 40, "train.batch_size": 16, "train.max_steps": 20, "train.threads": 1,
                "train.checkpoint_every": 2, "train.ensemble": 2, "train.run_dir": str(run)}
    with pytest.raises(KeyboardInterrupt):  # member 1 ends at its epoch's end (10 batches), member 2 at batch 2
        train("fonts", settings, callbacks=[_StopSecondMember()])
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--max-steps", "40", "--batch-size", "8")
    assert code == 2, err
    assert "ensemble member 2 of 2: train.batch_size=8: the run stopped at batch 2 of epoch 1" in error_line(err)
    assert snapshot(run) == before
