import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from convrnn.errors import CheckpointError, WriteError
from convrnn.files import atomic_write_bytes
from convrnn.train.checkpoint import (load_checkpoint, rng_state, save_checkpoint,
                                      set_rng_state)


def test_round_trip_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(4.0)}, "meta": {"classes": ["a", "b"]},
                           "input_shape": [1, None, 64], "rng": rng_state()})
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt["meta"]["classes"] == ["a", "b"] and ckpt["input_shape"] == [1, None, 64]
    assert torch.equal(ckpt["model"]["w"], torch.arange(4.0))
    assert not list(tmp_path.glob(".c.pt.*"))  # no temporary file left behind


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), random.random())
    import numpy as np
    na = np.random.rand()
    set_rng_state(state)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == random.random() and na == np.random.rand()


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.zeros(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    with pytest.raises(CheckpointError, match="not a convrnn checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_reader_error_is_cut_to_its_first_sentence(tmp_path, monkeypatch):
    """torch's zip reader follows its message with advice; the one line keeps the first sentence whole."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    advice = ("PytorchStreamReader failed reading file data/0: invalid header or archive is corrupted. This is an "
              "internal miniz error. If you are seeing this error, there is a high likelihood that the file is bad")
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(advice)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not a readable checkpoint (truncated or corrupt: PytorchStreamReader failed "
                               "reading file data/0: invalid header or archive is corrupted)")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/convrnn-evil-marker",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = "/tmp/convrnn-evil-marker"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "convrnn-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_a_whole_pickled_model_is_refused_naming_its_class_not_torchs_advice(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # the whole module, not a state dict
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "GLOBAL torch.nn.modules.linear.Linear" in message and "weights_only" not in message


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CheckpointError, match="No space left on device.*previous file is untouched"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".c.pt.*"))


WRITER = """
import sys, torch
from convrnn.train.checkpoint import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    save_checkpoint(path, {"step": i, "model": {"w": torch.full((300000,), float(i))}})
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # at least one checkpoint finished
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)
        assert ckpt["step"] >= 1
        assert torch.all(ckpt["model"]["w"] == float(ckpt["step"]))  # content matches its own step: no mix


def test_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "c.pt"  # parent is a file: cannot be created even by root
    else:  # pragma: no cover
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        target = d / "c.pt"
    with pytest.raises(WriteError, match="cannot write"):
        atomic_write_bytes(target, b"x")


def test_bit_flip_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.zeros(4096)}})
    data = bytearray(path.read_bytes())
    # flip one byte inside the tensor's stored data (a run of zeros in the middle of the file)
    start = bytes(data).find(b"\x00" * 4096)
    assert start > 0
    data[start + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch|truncated or corrupt"):
        load_checkpoint(path)


def test_rotation_keeps_k_and_falls_back_to_the_previous_good_one(tmp_path):
    from convrnn.train.checkpoint import load_latest_checkpoint, save_rotating
    ck = tmp_path / "run" / "checkpoints"
    for step in (1, 2, 3, 4):
        save_rotating(ck, {"step": step, "model": {"w": torch.full((10,), float(step))}}, step, keep=3)
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-00000002.pt", "step-00000003.pt", "step-00000004.pt"]
    assert load_checkpoint(ck / "last.pt")["step"] == 4
    # the newest is truncated (last.pt is the same file): resume falls back to step 3
    newest = ck / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    assert load_latest_checkpoint(tmp_path / "run")["step"] == 3
    for p in ck.glob("*.pt"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        load_latest_checkpoint(tmp_path / "run")


def test_a_runs_checkpoints_folder_is_read_as_the_run(tmp_path):
    from convrnn.train.checkpoint import resolve_checkpoint

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (tmp_path / "run" / "checkpoints" / name).write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints" / "best.pt"
    assert resolve_checkpoint(tmp_path / "run" / "checkpoints", prefer="last").name == "last.pt"
