"""Ensembles (train.ensemble=K): how members combine, the run layout, eval/predict, resume, bad values."""
import json
import math

import pytest
import torch

from convrnn.infer.views import EnsembleModel, MovedViews, ShiftedViews, move_image
from convrnn.errors import ConfigError
from convrnn.infer.run import load_run
from convrnn.recipes.runner import train
from convrnn.train.checkpoint import load_checkpoint
from helpers import digit_pngs, run_cli, write_digits
from test_digits import TINY


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("mnist"))


def _settings(mnist_dir, run, **extra):
    base = {"data.op": "sum", "data.max_len": 3, "data.data_dir": str(mnist_dir), "train.max_steps": 4,
            "train.batch_size": 16, "data.num_train": 64, "train.threads": 1, "data.num_val": 16,
            "data.num_test": 32, "train.ensemble": 2, "train.run_dir": str(run)}
    return {**base, **extra}


def test_probs_average_the_members_distributions_and_mean_their_values():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 4, 6)  # (B, C, H, W)
    probs = EnsembleModel("flatten dense:4,relu cls:last", (1, 4, 6), 3, 3, "probs")
    members = torch.stack([torch.softmax(m(x), -1) for m in probs.members])  # (K, B, 3)
    y = probs(x)
    torch.testing.assert_close(y.exp(), members.mean(0))
    torch.testing.assert_close(y.exp().sum(-1), torch.ones(5))
    mean = EnsembleModel("flatten dense:4,relu reg:last", (1, 4, 6), 1, 2, "mean")
    torch.testing.assert_close(mean(x), torch.stack([m(x) for m in mean.members]).mean(0))
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleModel("flatten dense:4,relu cls:last", (1, 4, 6), 3, 1, "probs")


def test_labellings_keep_each_members_log_probabilities_beside_the_frame_average():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 12)  # (B, C, H, W)
    model = EnsembleModel("conv:4,3x3 pool:2x2 cols lstm:4 ctc", (1, 4, None), 3, 2, "labellings")
    out = model.run(x, torch.tensor([12, 8]))
    members = torch.stack([torch.log_softmax(m(x, torch.tensor([12, 8])), -1) for m in model.members])
    torch.testing.assert_close(out.members, members)  # (K, B, T, V)
    torch.testing.assert_close(out.y, torch.logsumexp(members, 0) - math.log(2))
    assert out.lengths.tolist() == [6, 4]


def test_shifted_views_read_each_line_moved_by_every_offset_on_one_frame_grid():
    from convrnn.spec.builder import SpecModel

    torch.manual_seed(0)
    x, lengths = torch.rand(2, 1, 4, 12), torch.tensor([12, 9])  # (B, C, H, W), pixel widths
    model = SpecModel("conv:4,3x3 pool:2x2 cols lstm:4 ctc", (1, 4, None), 3).eval()
    with torch.no_grad():
        out = ShiftedViews(model, 3).run(x, lengths)
        assert out.members.shape[0] == 3 and out.lengths.tolist() == [7, 5]  # (12 + 2) / 2, (9 + 2) / 2
        for d in range(3):  # view d: d background columns on the left, 2 - d on the right
            moved = torch.zeros(2, 1, 4, 14)
            moved[..., d:d + 12] = x
            torch.testing.assert_close(out.members[d], torch.log_softmax(model(moved, lengths + 2), -1))
        torch.testing.assert_close(out.y, torch.logsumexp(out.members, 0) - math.log(3))
        one = ShiftedViews(model, 1).run(x, lengths)  # no shift: the model's own output as one member
        torch.testing.assert_close(one.members[0], torch.log_softmax(model(x, lengths), -1))
        ensemble = EnsembleModel("conv:4,3x3 pool:2x2 cols lstm:4 ctc", (1, 4, None), 3, 2, "labellings").eval()
        both = ShiftedViews(ensemble, 2).run(x, lengths)  # views x members
        torch.testing.assert_close(both.members[:2], ensemble.run(torch.nn.functional.pad(x, (0, 1)), lengths + 1).members)
        assert both.members.shape[0] == 4
    with pytest.raises(ValueError, match="shifts must be >= 1"):
        ShiftedViews(model, 0)


def test_move_image_moves_by_whole_pixels_with_background_coming_in():
    x = torch.arange(12.0).reshape(1, 3, 4) + 1  # (C, H, W)
    right = move_image(x, 1, 0)
    assert right[..., 0].eq(0).all() and torch.equal(right[..., 1:], x[..., :-1])
    up_left = move_image(x, -1, -1)
    assert torch.equal(up_left[..., :-1, :-1], x[..., 1:, 1:]) and up_left[..., -1, :].eq(0).all()
    assert up_left[..., :, -1].eq(0).all()
    assert torch.equal(move_image(x, 0, 0), x)


def test_moved_views_multiply_the_distributions_of_the_image_and_its_one_pixel_moves():
    from convrnn.spec.builder import SpecModel

    torch.manual_seed(0)
    x, lengths = torch.rand(3, 2, 1, 6, 6), torch.tensor([2, 1, 2])  # (B, T, C, H, W) digit sequences
    model = SpecModel("conv:4,3x3 flatten gru:5 reg:seq", (None, 1, 6, 6), 10).eval()
    with torch.no_grad():
        out = MovedViews(model, 3, "probs").run(x, lengths)
        views = [x, move_image(x, 1, 0), move_image(x, -1, 0)]  # as drawn, one right, one left
        log_probs = torch.stack([torch.log_softmax(model(v, lengths), -1) for v in views])
        torch.testing.assert_close(out.y.exp(), torch.softmax(log_probs.mean(0), -1))  # the views' product
        torch.testing.assert_close(out.y.exp().sum(-1), torch.ones(3, 2))
        one = MovedViews(model, 1, "probs").run(x, lengths)
        torch.testing.assert_close(one.y.exp(), torch.softmax(model(x, lengths), -1))
        mean = MovedViews(model, 2, "mean").run(x, lengths)
        torch.testing.assert_close(mean.y, (model(x, lengths) + model(move_image(x, 1, 0), lengths)) / 2)
    with pytest.raises(ValueError, match="views must be 1..9"):
        MovedViews(model, 10, "probs")
    with pytest.raises(ValueError, match="probs or mean"):
        MovedViews(model, 2, "labellings")
    from convrnn.infer.views import with_views
    from convrnn.tasks.base import Task

    tokens = SpecModel("embed:4 lstm:4 lm", (None,), 8)  # a character model reads tokens, not images
    with pytest.raises(ConfigError, match=r"models of images, not to this run's model \(its input is \(None,\)\)"):
        with_views(tokens, Task(), 2)


def test_lines_ensemble_decodes_its_members_jointly(tmp_path, capsys, monkeypatch):
    from convrnn.data.lines import write_line_folder
    from convrnn.data.synthetic_lines import digit_lines

    folder = write_line_folder(digit_lines(12, split="val", max_digits=3, height=16, mnist_dir="sklearn"),
                               tmp_path / "lines")
    run = tmp_path / "ens"
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(folder), "--val", str(folder),
                             "--height", "16", "--max-steps", "4", "--batch-size", "4", "--ensemble", "2",
                             "--run-dir", str(run), "--spec", "conv:4,3x3 pool:2x2 cols lstm:4,bi ctc")
    assert code == 0, err
    assert load_checkpoint(run)["ensemble"] == {"members": 2, "combine": "labellings"}
    model, ckpt, _, task, _ = load_run(str(run))
    images = sorted(str(p) for p in folder.glob("*.png"))[:3]
    code, out, err = run_cli(capsys, "predict", str(run), *images)
    assert code == 0, err
    from convrnn.recipes.lines import run_lines
    joint = task.decode(run_lines(model, ckpt, images))
    assert out.splitlines() == [f"{p}\t{t}" for p, t in zip(images, joint)]
    code, out, err = run_cli(capsys, "predict", str(run), images[0], "--beam", "3")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "cer:" in out, err
    code, out, err = run_cli(capsys, "predict", str(run), *images, "--shifts", "2")  # 2 views x 2 members
    from convrnn.infer.views import with_views
    shifted = with_views(model, task, 2)
    joint = task.decode(run_lines(shifted, ckpt, images))
    assert code == 0 and out.splitlines() == [f"{p}\t{t}" for p, t in zip(images, joint)], err
    code, out, err = run_cli(capsys, "eval", str(run), "--shifts", "2")
    assert code == 0 and "cer:" in out, err
    code, out, err = run_cli(capsys, "plot", "ctc", str(run), images[0], "--out", str(tmp_path / "ctc.png"))
    assert code == 0 and (tmp_path / "ctc.png").stat().st_size > 0, err
    assert f"text {joint[0]!r}, joint beam search" in out  # drawn over the members' mean frames
    # the report's worst-read lines are what eval reads: the members decoded jointly, not their mean frames
    from convrnn.tasks.ctc import CTCTask
    from convrnn.viz.report import recipe_report
    decoded_jointly, decode = [], CTCTask.decode
    monkeypatch.setattr(CTCTask, "decode", lambda self, out, *a, **kw: (
        decoded_jointly.append(out.members is not None), decode(self, out, *a, **kw))[1])
    sections, _ = recipe_report(load_run(str(run)), max_batches=1)
    assert sections[0].title == "Worst-read lines" and decoded_jointly and all(decoded_jointly)
    monkeypatch.undo()
    # the ONNX export carries each member's output too, so that it reads like predict
    import numpy as np
    import onnxruntime as ort
    from convrnn.infer.export import export_run
    from convrnn.layers.base import ModelOutput
    session = ort.InferenceSession(str(export_run(str(run), str(tmp_path / "ens.onnx"))),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["y", "members"]
    from convrnn.data.lines import LineSet, line_fetcher, prepare_line
    line = prepare_line(images[0], int(ckpt["input_shape"][1]))
    x = line_fetcher(LineSet([line], [""], ["0"]))(np.arange(1))["x"]  # (1, 1, H, W), as predict batches it
    y, members = session.run(None, {"x": x.numpy()})
    with torch.inference_mode():
        pytorch = model.run(x)
    assert members.shape == tuple(pytorch.members.shape) == (2, *y.shape)
    assert np.allclose(members, pytorch.members.numpy(), atol=1e-4)
    frames = torch.tensor([y.shape[1]])
    assert task.decode(ModelOutput(torch.from_numpy(y), frames, members=torch.from_numpy(members))) == \
        task.decode(pytorch._replace(lengths=frames))


def test_members_share_the_budget_with_their_own_seeds_and_the_run_loads_as_one_model(mnist_dir, tmp_path, capsys):
    run = tmp_path / "ens"
    trainer = train("digits", _settings(mnist_dir, run, **{"train.seed": 5}))
    configs = [json.loads((run / "members" / str(i) / "config.json").read_text())["train"] for i in (0, 1)]
    assert [c["seed"] for c in configs] == [5, 6] and [c["max_steps"] for c in configs] == [2, 2]
    assert [c["ensemble"] for c in configs] == [1, 1]
    assert json.loads((run / "members" / "done.json").read_text()) == [0, 1]
    assert trainer.step == 4 and "mse" in trainer.metrics
    ckpt = load_checkpoint(run)
    assert ckpt["ensemble"] == {"members": 2, "combine": "probs"}  # the dist head's per-digit logits
    model = load_run(str(run)).model
    assert isinstance(model, EnsembleModel)
    assert not torch.equal(next(model.members[0].parameters()), next(model.members[1].parameters()))
    member0 = load_checkpoint(run / "members" / "0")["model"]
    for name, value in member0.items():
        torch.testing.assert_close(model.members[0].state_dict()[name], value)
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0, err
    assert "mse" in out
    code, out, err = run_cli(capsys, "predict", str(run), *digit_pngs(tmp_path, [3, 5]))
    assert code == 0, err
    assert out.startswith("sum\t")
    code, out, err = run_cli(capsys, "predict", str(run), *digit_pngs(tmp_path, [3, 5]), "--shifts", "9")
    assert code == 0 and out.startswith("sum\t"), err
    code, out, err = run_cli(capsys, "eval", str(run), "--shifts", "5")
    assert code == 0 and "mse" in out, err
    code, out, err = run_cli(capsys, "predict", str(run), *digit_pngs(tmp_path, [3, 5]), "--shifts", "10")
    assert code == 2 and "at most 9 for a model of images" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "eval", str(run), "--shifts", "0")
    assert code == 2 and "--shifts" in err


def test_a_regression_head_averages_values(mnist_dir, tmp_path):
    run = tmp_path / "reg"
    train("digits", _settings(mnist_dir, run, **{"model.preset": "digits:head=reg"}))
    assert load_checkpoint(run)["ensemble"]["combine"] == "mean"


class _Crash:
    """Stops the second member at its first step, as a kill would."""

    def on_step(self, trainer, info):
        if trainer.cfg.seed == 1:
            raise KeyboardInterrupt


def test_resume_skips_finished_members_and_finishes_the_ensemble(mnist_dir, tmp_path):
    run = tmp_path / "ens"
    settings = _settings(mnist_dir, run, **{"train.checkpoint_every": 1})
    with pytest.raises(KeyboardInterrupt):
        train("digits", settings, callbacks=[_Crash()])
    first = (run / "members" / "0" / "checkpoints" / "best.pt").read_bytes()
    assert json.loads((run / "members" / "done.json").read_text()) == [0]
    assert not (run / "checkpoints" / "best.pt").exists()  # no ensemble before every member is done
    with pytest.raises(ConfigError, match="--resume"):
        train("digits", settings)
    trainer = train("digits", None, resume=str(run))
    assert (run / "members" / "0" / "checkpoints" / "best.pt").read_bytes() == first  # not trained again
    assert trainer.step == 4
    assert load_checkpoint(run)["ensemble"]["members"] == 2


def test_bad_ensemble_values_are_one_line_errors(mnist_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "digits", "--data-dir", str(mnist_dir), "--run-dir",
                             str(tmp_path / "bad"), "--ensemble", "0", *TINY)
    assert code == 2 and "train.ensemble" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    code, out, err = run_cli(capsys, "train", "digits", "--data-dir", str(mnist_dir), "--run-dir",
                             str(tmp_path / "bad"), "--ensemble", "2", *TINY, "--set", "data.num_train=0")
    assert code == 2 and "data.num_train" in err
    assert not (tmp_path / "bad").exists()  # bad data: no half-made ensemble on disk
    with pytest.raises(ConfigError, match="carries recurrent state"):
        train("charlm", {"train.ensemble": 2, "train.run_dir": str(tmp_path / "charlm")})
    assert not (tmp_path / "charlm").exists()


def test_resume_with_larger_limits_trains_every_member_on(mnist_dir, tmp_path):
    """A finished ensemble resumed with a larger budget continues each member to its share of it
    (it used to keep every member as it was and record the larger budget as if it had been used)."""
    run = tmp_path / "ens"
    assert train("digits", _settings(mnist_dir, run)).step == 4  # 2 members of 2 steps
    trainer = train("digits", {"train.max_steps": 8}, resume=str(run))
    steps = [load_checkpoint(run / "members" / str(i) / "checkpoints" / "last.pt")["step"] for i in (0, 1)]
    assert steps == [4, 4] and trainer.step == 8
    again = train("digits", None, resume=str(run))  # the same limits: nothing left to train
    assert again.step == 8


KILL_SECOND_MEMBER = r"""
import json, os, signal, sys
from convrnn.recipes.runner import train

class KillSecondMember:
    '''SIGKILLs the process at the second member's third step: its first two steps are in its
    metrics.csv, train.log and events, and it has no checkpoint.'''
    def on_step(self, trainer, info):
        if trainer.cfg.seed == 1 and info["step"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)

train("digits", json.loads(sys.argv[1]), callbacks=[KillSecondMember()])
"""


def test_a_member_killed_before_its_first_checkpoint_starts_again_from_clean_files(mnist_dir, tmp_path):
    """The resume trains that member from its start: its metrics.csv holds each step once, under a header
    (also where the kill left the file empty), and the killed attempt's log, events and partial
    checkpoint writes are gone; a file of the user's in the member's folder stays."""
    import shutil
    import signal
    import subprocess
    import sys

    from convrnn.train.rundir import read_metrics

    killed = tmp_path / "killed"
    settings = _settings(mnist_dir, killed, **{"train.max_steps": 8, "train.log_every": 1,
                                               "train.checkpoint_every": 100})
    proc = subprocess.run([sys.executable, "-c", KILL_SECOND_MEMBER, json.dumps(settings)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    member = killed / "members" / "1"
    assert {r["step"] for r in read_metrics(member) if r["split"] == "train"} == {1, 2}
    assert not (member / "checkpoints" / "last.pt").exists()
    (member / "notes.txt").write_text("mine\n")
    with open(member / "train.log", "a") as log:  # the killed attempt's log (its lines, in a CLI run)
        log.write("step 2 of the killed attempt\n")
    (member / "checkpoints" / ".step-00000004.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    old_events = sorted(p.name for p in member.glob("events.out.tfevents.*"))
    assert old_events
    emptied = shutil.copytree(killed, tmp_path / "emptied")
    (emptied / "members" / "1" / "metrics.csv").write_bytes(b"")  # a kill before the header was written

    for run in (killed, emptied):
        assert train("digits", None, resume=str(run)).step == 8
        member = run / "members" / "1"
        steps = [r["step"] for r in read_metrics(member) if r["split"] == "train" and r["metric"] == "loss"]
        assert steps == [1, 2, 3, 4], run
        assert (member / "notes.txt").read_text() == "mine\n"
        assert sorted(p.name for p in (member / "checkpoints").glob(".*")) == []
        events = sorted(p.name for p in member.glob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0] not in old_events
        assert "killed attempt" not in (member / "train.log").read_text()
        assert load_checkpoint(run)["ensemble"]["members"] == 2


class _InterruptSecondMember:
    """Ctrl-C at the second member's step ``step``, in place of the CLI's CompileNotice callback."""

    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, info):
        if trainer.cfg.seed == 1 and info["step"] == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("checkpoint_every, step, kept", [
    (100, 1, "the last checkpoint of ensemble member 1 of 2"),  # the second member had no checkpoint yet
    (1, 2, "the last checkpoints of ensemble members 1 and 2 of 2")])  # it had one, of its step 1
def test_ctrl_c_in_a_member_names_the_ensemble_run_and_what_it_keeps(mnist_dir, tmp_path, capsys, monkeypatch,
                                                                     checkpoint_every, step, kept):
    """The advice continues the ensemble (a member's own directory resumed would train that member alone
    and leave the ensemble unfinished), and following it finishes the ensemble."""
    import convrnn.cli.train as cli_train

    run = tmp_path / "ens"
    monkeypatch.setattr(cli_train, "CompileNotice", lambda: _InterruptSecondMember(step))
    code, _, err = run_cli(capsys, "-q", "train", "digits", "--data-dir", str(mnist_dir), "--run-dir", str(run),
                           "--ensemble", "2", "--seed", "0", *TINY, "--set", f"train.checkpoint_every={checkpoint_every}")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == (f"interrupted: {run} keeps {kept}; continue the ensemble with "
                                            f"`convrnn train digits --resume {run}`")
    monkeypatch.undo()
    code, out, err = run_cli(capsys, "-q", "train", "digits", "--resume", str(run))
    assert code == 0, err
    assert load_checkpoint(run)["ensemble"]["members"] == 2


def test_a_member_with_a_step_checkpoint_but_no_last_pt_is_continued_not_cleared(tmp_path):
    """A kill between a step file's write and last.pt's link leaves a checkpoint to continue from."""
    from convrnn.train.ensemble import _clear_attempt, _has_checkpoint

    member = tmp_path / "members" / "1"
    (member / "checkpoints").mkdir(parents=True)
    assert not _has_checkpoint(member)
    (member / "checkpoints" / "step-00000001.pt").write_bytes(b"checkpoint")
    (member / "metrics.csv").write_text("step\n", encoding="utf-8")
    assert _has_checkpoint(member)
    _clear_attempt(member, 1, 2)  # even when asked to clear, a checkpoint stays
    assert (member / "checkpoints" / "step-00000001.pt").read_bytes() == b"checkpoint"
    assert not (member / "metrics.csv").exists()
