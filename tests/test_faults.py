"""A training process killed with SIGKILL at random moments (checkpoint writes included), resumed each
time, ends with exactly the weights of an uninterrupted run."""
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convrnn.train.checkpoint import load_latest_checkpoint

pytestmark = pytest.mark.slow  # real processes, killed at random moments

SCRIPT = r"""
import sys, time, torch
sys.path.insert(0, {tests!r})
from helpers import TinyNet, toy_batches, toy_classification
from convrnn.tasks.classify import ClassifyTask
from convrnn.train.checkpoint import load_latest_checkpoint
from convrnn.train.config import TrainConfig
from convrnn.train.rundir import RunDir
from convrnn.train.trainer import Trainer

run, resume, slow = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
torch.manual_seed(0)
x, y = toy_classification(n=64)
cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, checkpoint_every=1, log_every=1, deterministic=True, threads=1)

class Slow:
    def on_step(self, trainer, info):
        print(info["step"], flush=True)
        time.sleep(slow)

t = Trainer(TinyNet(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y, batch_size=8), None, cfg,
            run_dir=RunDir(run, tensorboard=False), checkpoint_meta={{"recipe": "toy"}}, callbacks=[Slow()])
if resume:
    t.restore(load_latest_checkpoint(run))
t.fit()
torch.save(t.model.state_dict(), run + "/final.pt")
print("done", flush=True)
"""


def _script(tmp_path):
    path = tmp_path / "train_toy.py"
    path.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    return path


def test_random_sigkills_then_resume_give_the_uninterrupted_weights(tmp_path):
    script = _script(tmp_path)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, str(script), str(straight), "0", "0"], check=True, capture_output=True)
    expected = torch.load(straight / "final.pt", weights_only=True)

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills, resume, finished = 0, "0", False
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(run), resume, "0.05"],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # a step ran: now kill at a random moment
        if kills < 4 and first.strip().isdigit():
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                resume = "1"
                step_after = load_latest_checkpoint(run)["step"]
                assert step_after >= 1  # at most the steps since the last checkpoint are lost
                continue
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        finished = True
        break
    assert finished and kills == 4
    got = torch.load(run / "final.pt", weights_only=True)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
