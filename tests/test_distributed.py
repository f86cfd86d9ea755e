"""DDP on 2 CPU processes (gloo on 127.0.0.1) follows the same loss trajectory as one process.

Tolerance: 1e-5 relative on every step's loss and 1e-5 absolute on the final weights (float32
all-reduce sums the two shard gradients in another order than one process's batch mean).
"""
# B batch, F features, V classes
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from convrnn.layers.base import ModelOutput
from convrnn.tasks.classify import ClassifyTask
from convrnn.train.checkpoint import load_checkpoint
from convrnn.train.config import TrainConfig
from convrnn.train.distributed import ShardedBatches, shard_bounds
from convrnn.train.rundir import RunDir
from convrnn.train.trainer import Trainer

from helpers import toy_batches, toy_classification

STEPS = 8
BATCH = 15  # 96 items: batches of 15 (shards 8 + 7) and a last one of 6 (3 + 3)


class Net(nn.Module):
    """No dropout: every rank's forward is then exactly a slice of the one-process forward."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def run(self, x, lengths=None, state=None):
        return ModelOutput(self.net(x), lengths, state)


def config(**kw):
    # with weight averaging: each rank averages its own (identical) weights, and the finished model,
    # the checkpoints and a resume in one process carry the average the same way as without DDP
    return TrainConfig(**{"epochs": 5, "batch_size": BATCH, "lr": 1e-2, "device": "cpu", "threads": 1,
                          "checkpoint_every": 4, "log_every": 1, "ema": 0.9, **kw})


class Record:
    def __init__(self):
        self.losses = []

    def on_step(self, trainer, info):
        self.losses.append(info["loss"])


def make(trainer_cls, steps, run_dir=None, **kw):
    torch.manual_seed(0)
    x, y = toy_classification()
    rec = Record()
    trainer = trainer_cls(Net(), ClassifyTask(["a", "b", "c"]), toy_batches(x, y, batch_size=BATCH), None,
                          config(max_steps=steps), run_dir=run_dir, callbacks=[rec], **kw)
    return trainer, rec


def worker(rank: int, port: int, out_dir: str) -> None:
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from convrnn.train.distributed import DistributedTrainer, init_from_env, shutdown
    ctx = init_from_env("cpu", timeout_s=60)
    run_dir = RunDir(f"{out_dir}/run", tensorboard=False) if ctx.is_main else None
    trainer, rec = make(DistributedTrainer, STEPS, run_dir=run_dir, ctx=ctx)
    trainer.fit()
    if ctx.is_main:
        torch.save({"losses": rec.losses, "model": trainer.model.state_dict()}, f"{out_dir}/ddp.pt")
        run_dir.close()
    del trainer  # release DDP's reducer (it holds the process group) before the group is destroyed
    shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_processes_follow_the_one_process_loss_trajectory(ddp_run):
    ddp = torch.load(ddp_run / "ddp.pt", weights_only=True)
    one, rec = make(Trainer, STEPS)
    one.fit()
    assert len(ddp["losses"]) == len(rec.losses) == STEPS
    np.testing.assert_allclose(ddp["losses"], rec.losses, rtol=1e-5)
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=0, atol=1e-5)
    # and the trajectory is not trivially constant: training moved the loss
    assert abs(rec.losses[-1] - rec.losses[0]) > 1e-3


def test_resume_with_one_process_after_two(ddp_run, tmp_path):
    """Positions count global batches: a 2-process checkpoint resumes in 1 process where it stopped."""
    ckpt = load_checkpoint(ddp_run / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == STEPS and ckpt["world_size"] == 2 and ckpt["ema_updates"] == STEPS
    resumed, rec = make(Trainer, 2 * STEPS)
    resumed.restore(ckpt)
    resumed.fit()
    straight, rec_straight = make(Trainer, 2 * STEPS)
    straight.fit()
    np.testing.assert_allclose(rec.losses, rec_straight.losses[STEPS:], rtol=1e-5)
    for k, v in straight.model.state_dict().items():  # the averaged weights went on from the checkpoint's
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n,world", [(15, 2), (6, 4), (3, 4), (1, 2)])
def test_shards_cover_the_batch_and_weights_restore_the_mean(n, world):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (B,) -> (B, 1)
    source = toy_batches(x.numpy(), np.zeros(n, dtype=np.int64), batch_size=n, shuffle=False)
    shards = [next(ShardedBatches(source, r, world).batches(0)) for r in range(world)]
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    # sum over ranks of weight * (mean of the shard) / world == mean of the batch
    total = sum(s["loss_weight"] * float(s["x"].mean()) for s in shards) / world
    assert total == pytest.approx(float(x.mean()))
    assert all(s["x"].shape[0] >= 1 for s in shards)  # an empty shard runs one row with weight 0
