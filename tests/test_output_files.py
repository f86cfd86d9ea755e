"""Where output goes: symlinks are written through, special files and folders are refused and left as
they are, files get the umask's permissions; metrics.csv cut short by a crash; non-checkpoint files.

Never writes to the real /dev/null: a FIFO in tmp_path stands for every special file."""
import os
import shutil
import stat

import pytest
import torch
from PIL import Image

from helpers import run_cli, train_cli

from convrnn.errors import DataError, WriteError
from convrnn.files import atomic_write_bytes
from convrnn.spec.builder import build_model
from convrnn.train.checkpoint import save_checkpoint
from convrnn.train.rundir import RunDir, read_metrics

TINY = ["--threads", "1", "--samples-per-font", "30", "--max-steps", "2", "--batch-size", "16"]


def one_error_line(err: str) -> str:
    """The error line, the last on stderr (a progress line may come before it), with no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert not any(line.startswith("error: ") for line in lines[:-1]), err
    return lines[-1]


def leftovers(folder):
    """Temporary files a write left behind (atomic writes name them ``.NAME.*.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def filters_run(path):
    """A run directory holding only checkpoints/best.pt of a small convolutional model."""
    torch.manual_seed(0)
    spec, shape = "conv:4,3x3 pool:2x2 flatten cls:last", (1, 8, 8)
    model = build_model(spec, shape, 3)
    (path / "checkpoints").mkdir(parents=True)
    save_checkpoint(path / "checkpoints" / "best.pt", {"spec": spec, "input_shape": list(shape), "num_outputs": 3,
                                                      "model": model.state_dict()})
    return path


def curves_run(path, steps=4):
    """A run directory whose metrics.csv was written by RunDir.log_metrics, as training writes it."""
    run = RunDir(path, tensorboard=False)
    for step in range(1, steps + 1):
        run.log_metrics(step * 10, 0, "train", {"loss": 1.0 / step})
        run.log_metrics(step * 10, 0, "val", {"loss": 1.5 / step, "accuracy": 0.2 * step})
    run.close()
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), *TINY)
    return run


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- atomic_write_bytes

def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "target.bin").write_bytes(b"old")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "link.bin"
    link.symlink_to("../real/target.bin")  # relative, into another folder
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == "../real/target.bin"
    assert (tmp_path / "real" / "target.bin").read_bytes() == b"new"
    assert leftovers(tmp_path / "real") == [] and sorted(p.name for p in (tmp_path / "links").iterdir()) == ["link.bin"]

    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to("made/later.bin")  # as a shell redirect does: the file the link names is created
    atomic_write_bytes(dangling, b"x")
    assert dangling.is_symlink() and (tmp_path / "made" / "later.bin").read_bytes() == b"x"


@pytest.mark.parametrize("case", ["fifo", "folder", "link_to_fifo", "link_loop"])
def test_a_special_file_or_folder_is_refused_and_left_as_it_is(tmp_path, case):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target, expected = {"fifo": (fifo, "not a regular file (a FIFO)"),
                        "folder": (tmp_path, "it is a folder"),
                        "link_to_fifo": (tmp_path / "link", f"not a regular file (a FIFO) (the symlink leads to {fifo})"),
                        "link_loop": (tmp_path / "loop", "the symlink does not lead to a file")}[case]
    if case == "link_to_fifo":
        target.symlink_to(fifo)
    elif case == "link_loop":
        (tmp_path / "loop2").symlink_to(tmp_path / "loop")
        target.symlink_to(tmp_path / "loop2")
    with pytest.raises(WriteError) as e:
        atomic_write_bytes(target, b"data")
    assert str(e.value).startswith(f"{target}: cannot write") and expected in str(e.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the FIFO is still a FIFO, not replaced by a file
    assert leftovers(tmp_path) == []


def test_files_get_the_umask_permissions(tmp_path, umask):
    umask(0o022)
    atomic_write_bytes(tmp_path / "a", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o644  # not mkstemp's 0600
    umask(0o027)
    atomic_write_bytes(tmp_path / "b", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o640


# ------------------------------------------------------------------------------- the commands' --out

def test_plot_filters_writes_through_a_symlink(capsys, tmp_path):
    run = filters_run(tmp_path / "run")
    link = tmp_path / "link.png"
    link.symlink_to("target.png")
    code, out, err = run_cli(capsys, "plot", "filters", str(run), "--out", str(link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == "target.png"
    with Image.open(tmp_path / "target.png") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("command", ["plot curves", "plot filters", "fonts preview", "report"])
def test_a_fifo_given_as_out_is_a_one_line_error_and_stays(capsys, tmp_path, command, request):
    if command == "report":
        run = request.getfixturevalue("trained_run")
    elif command == "plot filters":
        run = filters_run(tmp_path / "run")
    else:
        run = curves_run(tmp_path / "run")
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    argv = command.split() + ([] if command == "fonts preview" else [str(run)]) + ["--out", str(fifo)]
    if command == "report":
        argv += ["--max-batches", "1"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert f"{fifo}: cannot write, not a regular file (a FIFO)" in one_error_line(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []


def test_every_output_gets_the_same_umask_permissions(capsys, tmp_path, umask, trained_run):
    curves, filters = curves_run(tmp_path / "curves"), filters_run(tmp_path / "filters")
    commands = {"preview.png": ["fonts", "preview", "--samples", "2"],
                "curves.png": ["plot", "curves", str(curves)],
                "filters.png": ["plot", "filters", str(filters)],
                "report.html": ["report", str(trained_run), "--max-batches", "1"]}
    umask(0o022)
    for name, argv in commands.items():
        code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / name))
        assert code == 0, err
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# ------------------------------------------------------------------------------------- metrics.csv

def test_plot_curves_skips_a_last_line_cut_short_with_a_warning(capsys, tmp_path):
    run = curves_run(tmp_path / "run")
    csv_path = run / "metrics.csv"
    whole = csv_path.read_bytes()
    lines = whole.splitlines(keepends=True)
    csv_path.write_bytes(whole[:-30])  # `head -c -30`: a crash in the middle of the last row
    rows = read_metrics(run)
    assert len(rows) == len(lines) - 2  # the header and the cut row are not rows
    assert [(r["step"], r["split"], r["metric"], r["value"]) for r in rows[-2:]] == [(40, "train", "loss", 0.25),
                                                                                      (40, "val", "loss", 0.375)]
    code, out, err = run_cli(capsys, "plot", "curves", str(run), "--out", str(tmp_path / "c.png"))
    assert code == 0, err
    assert f"{csv_path} line {len(lines)}: skipped, the line is cut short" in err
    with Image.open(tmp_path / "c.png") as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_garbage_row_is_a_one_line_error_naming_file_and_line(capsys, tmp_path, where, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    csv_path = run / "metrics.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    at = 3 if where == "middle" else len(lines)
    lines.insert(at, "junk,0,train,loss,1.0,0\r\n")  # a whole line with its line end: not a crash's cut
    csv_path.write_text("".join(lines), newline="")
    for command in (["plot", "curves", str(run), "--out", str(tmp_path / "c.png")],
                    ["report", str(run), "--out", str(tmp_path / "r.html")]):
        code, out, err = run_cli(capsys, *command)
        assert code == 2
        line = one_error_line(err)
        assert f"{csv_path}: expected columns step,epoch,split,metric,value,time" in line
        assert f"line {at + 1} has step 'junk', not a number" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no picture, no page, no temporary file
    assert "report.html" not in os.listdir(run) and leftovers(run) == []


def test_resume_repairs_a_cut_last_line_before_appending(tmp_path):
    run = curves_run(tmp_path / "run")
    whole = (run / "metrics.csv").read_bytes()
    (run / "metrics.csv").write_bytes(whole[:-30])
    rows = read_metrics(run)
    again = RunDir(run, tensorboard=False)
    again.truncate_metrics(30)  # what resuming from the step-30 checkpoint does
    again.log_metrics(40, 0, "val", {"loss": 0.5})  # appended after a complete line, not glued to the cut one
    again.close()
    assert read_metrics(run) == [r for r in rows if r["step"] <= 30] + [
        {"step": 40, "epoch": 0, "split": "val", "metric": "loss", "value": 0.5, "time": read_metrics(run)[-1]["time"]}]


def test_whole_numbers_are_written_in_full(tmp_path):
    """Counts past a million would lose their last digits in 6 significant ones; other values keep 6."""
    run = RunDir(tmp_path / "run", tensorboard=False)
    run.log_metrics(1, 0, "val", {"chars": 12345678, "errors": 1234567.0, "cer": 0.123456789,
                                  "loss": float("nan")})
    run.truncate_metrics(1)  # rewriting keeps the text
    run.close()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[3:5] for r in rows] == [["chars", "12345678"], ["errors", "1234567"], ["cer", "0.123457"],
                                                 ["loss", "nan"]]


def test_a_header_without_the_columns_is_named(tmp_path):
    (tmp_path / "metrics.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"metrics.csv: expected columns .*; line 1 \(the header\) has no column 'step'"):
        read_metrics(tmp_path)


# ------------------------------------------------------------------------------ not a checkpoint

def test_a_png_given_as_a_checkpoint_is_named_as_such(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("L", (20, 8), 255).save(tmp_path / "line.png")
    (tmp_path / "noise.pt").write_bytes(b"hello, not a checkpoint at all")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"hello": 1}, tmp_path / "dict.pt")
    for name, message in (("line.png", "line.png: not a convrnn checkpoint: it is a PNG image, not a PyTorch file"),
                          ("noise.pt", "noise.pt: not a convrnn checkpoint: not a PyTorch file"),
                          ("empty.pt", "empty.pt: the file is empty (0 bytes), not a checkpoint"),
                          ("dict.pt", "dict.pt: not a convrnn checkpoint")):
        code, out, err = run_cli(capsys, "eval", name)
        line = one_error_line(err)
        assert code == 2 and message in line, line
        assert "weights_only" not in line and "torch." not in line


def test_a_pickle_with_code_names_what_was_refused_in_full(tmp_path):
    from convrnn.errors import CheckpointError
    from convrnn.train.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"format": "convrnn-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(e.value)
    assert "refused to load" in message and "GLOBAL posix.getcwd" in message and message.endswith(")")
    assert "Re-running" not in message and "\n" not in message


def test_no_output_replaces_a_file_the_command_or_the_run_reads(capsys, tmp_path):
    """fonts preview's own font and text, and a run's data (a report and eval read it again), are
    refused as --out with one line, and left as they were; a preview named other than .png too."""
    import matplotlib

    font = tmp_path / "fonts" / "DejaVuSans.ttf"
    font.parent.mkdir()
    shutil.copy(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), font)
    shutil.copy(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSerif.ttf"), font.parent)
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be\nthat is the question\n" * 200, encoding="utf-8")
    before = {p: p.read_bytes() for p in (font, text)}
    for out, words in [(font, "a file this command reads"), (text, "a file this command reads"),
                       (tmp_path / "grid.jpg", "give a name ending in .png")]:
        code, _, err = run_cli(capsys, "fonts", "preview", "--fonts", str(font.parent), "--text", str(text),
                               "--out", str(out), "--samples", "2")
        assert code == 2 and words in one_error_line(err), err
    run = tmp_path / "lm"
    code, _, err = run_cli(capsys, "-q", "train", "charlm", "--data", str(text), "--max-steps", "1",
                           "--spec", "embed:4 lstm:8 lm", "--run-dir", str(run))
    assert code == 0, err
    code, _, err = run_cli(capsys, "report", str(run), "--out", str(text))
    assert code == 2 and "a file this command reads" in one_error_line(err), err
    assert {p: p.read_bytes() for p in before} == before
    # a run kept inside its data folder (--data .): its own outputs are written again, not taken for data
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(text, corpus / "text.txt")
    inside = corpus / "runs" / "lm"
    code, _, err = run_cli(capsys, "-q", "train", "charlm", "--data", str(corpus), "--max-steps", "1",
                           "--spec", "embed:4 lstm:8 lm", "--run-dir", str(inside))
    assert code == 0, err
    for _ in range(2):
        code, _, err = run_cli(capsys, "report", str(inside))
        assert code == 0, err
        code, _, err = run_cli(capsys, "plot", "curves", str(inside), "--out", str(tmp_path / "curves.png"))
        assert code == 0, err


def test_a_full_disk_under_the_run_is_one_line_for_metrics_and_a_warning_for_tensorboard(tmp_path, monkeypatch, caplog):
    """metrics.csv that cannot be written stops the run with one WriteError naming it; TensorBoard's
    event file that cannot be written (its writer thread fails) stops TensorBoard logging only."""
    import logging
    from torch.utils.tensorboard import SummaryWriter

    run = RunDir(tmp_path / "run")
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(SummaryWriter, "add_scalar", no_space)
    with caplog.at_level(logging.WARNING):
        run.log_metrics(1, 0, "train", {"loss": 1.0})
        run.log_metrics(2, 0, "train", {"loss": 0.5})  # TensorBoard is off now: no second warning
        run.close()
    assert caplog.text.count("TensorBoard events cannot be written (No space left on device)") == 1
    assert [r["step"] for r in read_metrics(run.metrics_csv)] == [1, 2]
    monkeypatch.setattr("builtins.open", no_space)
    with pytest.raises(WriteError, match=r"metrics.csv: cannot write \(No space left on device\); the run stops at"):
        RunDir(tmp_path / "other", tensorboard=False).log_metrics(1, 0, "train", {"loss": 1.0})
