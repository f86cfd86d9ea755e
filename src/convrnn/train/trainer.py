"""One trainer for every recipe: a plain class with ``fit`` and ``evaluate``.

It owns the loop (optimizer, learning-rate schedule, clipping, non-finite guard, validation,
checkpoints, exact resume); the task owns loss and metrics; the data owns batch order.
"""
# B batch
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from convrnn.data.batching import BatchSource
from convrnn.infer.evaluate import evaluate, run_model, to_device
from convrnn.errors import CheckpointError, ConfigError, ConvrnnError, TrainingDiverged
from convrnn.tasks.base import Task
from convrnn.train.averaging import WeightAverage
from convrnn.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, save_rotating, set_rng_state
from convrnn.fields import check as check_fields
from convrnn.train.config import TrainConfig
from convrnn.train.cpu import native_bf16
from convrnn.train.rundir import RunDir
from convrnn.train.runfiles import checkpoint_temporaries
from convrnn.train.threads import apply_threads
from convrnn.wording import plural

log = logging.getLogger(__name__)

MAX_SKIPPED_STEPS = 10  # consecutive steps with non-finite gradients before giving up
PROGRESS_EVERY = 10.0   # seconds between progress lines in the log (a terminal shows a bar instead)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConvrnnError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvrnnError(f"train.device={name}: CUDA is not available on this machine (use auto or cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConvrnnError(f"train.device={name}: MPS is not available on this machine (use auto or cpu)")
    return dev


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def resume_refusal(saved: Optional[dict], now: dict, *, epoch: int, batch_in_epoch: int, batches_then: int = 0,
                   batches_now: int = 0) -> str:
    """Why a resume from a checkpoint written with the config ``saved`` (its ``to_dict()``) cannot
    continue under ``now``; empty when it can. The optimizer state is of one optimizer, so
    train.optimizer cannot change. A checkpoint within an epoch (``batch_in_epoch`` > 0) continues
    that epoch's batch order at batch ``batch_in_epoch``, an order that train.batch_size and
    train.seed fix: changing either would skip or repeat training data, so they can change only at
    an epoch's end; so must the number of batches of that epoch, ``batches_then`` in the checkpoint
    (0: not recorded) and ``batches_now`` in the data (data settings). Limits (epochs, max_steps,
    max_time) and the other settings are free."""
    old, new = (saved or {}).get("train") or {}, now.get("train") or {}
    if old.get("optimizer") and new.get("optimizer") and old["optimizer"] != new["optimizer"]:
        return (f"train.optimizer={new['optimizer']}: the run trains with {old['optimizer']}, and its checkpoint "
                f"holds {old['optimizer']}'s state, which another optimizer cannot continue; keep "
                f"train.optimizer={old['optimizer']}, or start a new run")
    if batch_in_epoch > 0:
        for key in ("batch_size", "seed"):
            if key in old and key in new and old[key] != new[key]:
                return (f"train.{key}={new[key]}: the run stopped at batch {batch_in_epoch} of epoch {epoch + 1}, "
                        f"and the rest of that epoch is the batch order of train.{key}={old[key]}; change it "
                        f"at an epoch's end: resume first with --epochs {epoch + 1} to finish this epoch "
                        f"(raising --max-steps or --max-time if one of them stopped the run), or start a new run")
        if batches_then and batches_now != batches_then:
            # the data settings changed (how many lines or windows, their length...): the epoch's batch
            # order is another one, and its rest from the stopping batch on would skip or repeat data
            return (f"the run stopped at batch {batch_in_epoch} of {batches_then} in epoch {epoch + 1}, and its "
                    f"training data now makes {batches_now} batches of that epoch (a data setting changed): "
                    f"resume with the data settings it had, or start a new run")
    return ""


def lr_factor(schedule: str, progress: float, step: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "step":
        f = 0.1 ** int(p / 0.34)  # x0.1 after a third and after two thirds of the run
    elif schedule == "onecycle":
        f = p / 0.3 if p < 0.3 else 0.5 * (1.0 + math.cos(math.pi * (p - 0.3) / 0.7))
        f = max(f, 0.04)
    else:
        f = 1.0
    return warm * max(f, 0.0)


def grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads`` (for the non-finite guard when nothing is clipped): one fused
    ``_foreach_norm``, as ``clip_grad_norm_`` computes it."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in torch._foreach_norm(grads)]))


def detach_state(state):
    """Cut the graph behind carried recurrent state (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


class RunModule(torch.nn.Module):
    """``forward`` calls ``model.run``: what DDP and ``torch.compile`` wrap, so their hooks see ``run``.

    DistributedDataParallel only synchronises gradients when its own ``forward`` ran, and
    ``torch.compile`` compiles ``forward``; ``model.run`` (which returns a ModelOutput with lengths
    and state) goes through them by being this module's ``forward``.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x, lengths=None, state=None, need_state=True):
        return run_model(self.module, x, lengths, state, need_state=need_state)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.precision`` on ``device`` (None for 32); fp16 on CPU is an error."""
    if precision == "32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConvrnnError(f"train.precision=fp16 needs a CUDA device, got {device}; use bf16 (or 32) on {device.type}")
    return torch.bfloat16 if precision == "bf16" else torch.float16


CHANNELS_LAST_MIN_CHANNELS = 16  # train.memory_format=auto: the widest convolution needs this many outputs


def apply_memory_format(model: torch.nn.Module, memory_format: str, device: torch.device) -> bool:
    """Store the kernels of ``model``'s 2-D convolutions channels last when ``memory_format`` asks for it
    (``auto``: on the CPU, for models with a convolution of at least ``CHANNELS_LAST_MIN_CHANNELS``
    output channels). Returns whether any were converted.

    A convolution whose kernel is channels last gives channels-last activations, and batch norm,
    activations and pooling keep that layout, so no input needs converting. On the CPU this is
    what oneDNN's kernels want: max pooling with indices runs about five times faster than on
    ``(B, C, H, W)``-contiguous tensors, convolutions and batch norm a fifth to a third faster
    (docs/decisions.md has the numbers). Parameters keep their identity (only their storage
    changes), so optimizers and weight averaging built later see the same tensors, and checkpoints
    load into models of either layout.
    """
    if memory_format == "contiguous" or (memory_format == "auto" and device.type != "cpu"):
        return False
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if memory_format == "auto" and max((c.out_channels for c in convs), default=0) < CHANNELS_LAST_MIN_CHANNELS:
        return False  # a few channels fill no vector register: the layout changes cost more than they save
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return bool(convs)


# what Trainer.stopped_by() names, in words
STOPPING_LIMITS = {"epochs": "the epoch limit", "time": "the time limit", "steps": "the step limit",
                   "early_stopping": "early stopping"}


@dataclass
class TrainResult:
    """Where a finished training stands: its run directory, how far it got, its last validation and
    its best checkpoint's (what eval, predict and export use), and the task that scored them."""

    run: Optional[Path]
    step: int
    epochs: int                 # epochs completed
    train_time: float           # seconds of training steps
    metrics: dict               # the last validation
    val_step: int
    best_step: int              # -1 without validation
    best_metrics: dict
    task: Task
    stopped_by: str = ""        # the limit that ended training: epochs, steps, time or early_stopping


@dataclass
class Position:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0              # epochs completed
    batch_in_epoch: int = 0
    train_time: float = 0.0     # seconds spent in training steps (what max_time limits)
    best: Optional[float] = None        # the monitored metric of the best checkpoint
    best_loss: Optional[float] = None   # its validation loss (breaks ties of the monitored metric)
    best_step: int = -1                 # the step it was saved at
    stale: int = 0              # validations since the best one

    @property
    def epoch_number(self) -> int:
        """The 1-based epoch the last step belongs to (as progress lines count): the epoch just
        completed at an epoch's end, the current one within it."""
        return self.epoch if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch + 1


def _check_parts(model, task, train, val) -> None:
    """Refuse, before anything is set up, parts that would only fail (or silently mis-score) later: a
    model without ``run``, batches that are not a BatchSource, a model whose outputs the task cannot score."""
    if not callable(getattr(model, "run", None)):
        raise TypeError(f"Trainer needs a model with run(x, lengths, state) returning a ModelOutput, as "
                        f"convrnn.spec.build_model gives; got {type(model).__name__}")
    for name, source in (("train", train), ("val", val)):
        if source is not None and not (callable(getattr(source, "batches", None))
                                       and callable(getattr(source, "num_batches", None))):
            raise TypeError(f"Trainer's {name} batches must be a convrnn BatchSource (num_batches(epoch), "
                            f"batches(epoch, start)), e.g. convrnn.data.batching.IndexedBatches; got "
                            f"{type(source).__name__}")
    shape = getattr(model, "output_shape", None)
    if shape is not None and hasattr(task, "output_problem"):
        problem = task.output_problem(tuple(shape))
        if problem:
            raise ConfigError(f"the model does not fit the {task.name} task: {problem}")


class Trainer:
    """Trains ``model`` on ``task`` with ``train`` batches, validating on ``val``.

    ``checkpoint_meta`` is stored in every checkpoint (recipe name, spec, input shape, number of
    outputs, resolved config, class names or vocabulary) so a checkpoint rebuilds its model alone.
    ``callbacks`` are plain objects with any of ``on_train_start(trainer)``, ``on_step(trainer, info)``,
    ``on_validation(trainer, metrics)``, ``on_train_end(trainer, metrics)``.
    """

    def __init__(self, model: torch.nn.Module, task: Task, train: BatchSource, val: Optional[BatchSource],
                 config: TrainConfig, *, run_dir: Optional[RunDir] = None,
                 checkpoint_meta: Optional[dict] = None, callbacks: Iterable[Any] = ()):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer's config must be a convrnn.train.config.TrainConfig (TrainConfig(**fields) "
                            f"from a dict), got {type(config).__name__}")
        check_fields(config, "train")
        _check_parts(model, task, train, val)
        if run_dir is not None and not isinstance(run_dir, RunDir):
            run_dir = RunDir(Path(run_dir))  # a path: the run directory to write
        self.cfg = config
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            apply_threads(config.threads)  # 0: the cores other processes leave idle
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = model.to(self.device)
        self.channels_last = apply_memory_format(self.model, config.memory_format, self.device)
        self.task, self.train_data, self.val_data = task, train, val
        self.run_dir = run_dir
        self.meta = dict(checkpoint_meta or {})
        if hasattr(model, "config") and hasattr(model, "spec"):  # a spec model rebuilds itself from these
            for key, value in model.config().items():
                self.meta.setdefault(key, value)
        self.callbacks = list(callbacks)
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        # mixed precision: autocast in the training forward pass; fp16 also scales the loss
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and native_bf16() is False:
            log.warning("train.precision=bf16: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so "
                        "autocast emulates them and usually trains slower than float32 (--precision 32)")
        self.forward_module = self.wrap_forward(RunModule(self.model))
        # validation, the best and last checkpoints' `model` and the finished run use averaged weights
        self.average = WeightAverage(self.model, config.ema) if config.ema > 0 else None
        self.pos = Position()
        self.state = None  # recurrent state carried between batches (stateful tasks)
        self._best_due = False  # a validation found a new best: best.pt goes with the next last.pt
        self.last_val: dict[str, float] = {}
        self.best_metrics: dict[str, float] = {}  # validation metrics of the best checkpoint
        self.val_step = -1  # step of the last validation
        self.later_members = 0  # ensemble members to train after this one: their time counts in eta()
        self.skipped = 0

    def wrap_forward(self, module: RunModule) -> torch.nn.Module:
        """The module the training step calls; DistributedTrainer wraps it in DDP first."""
        return torch.compile(module) if self.cfg.compile else module

    # ----- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything a resume needs. ``model`` holds the weights to use (the averaged ones with
        ``train.ema``, which then adds the raw ``train_model`` that training continues from)."""
        if self.average is not None:
            averaged, raw = self.average.state_dicts(self.model)
            weights = {"model": averaged, "train_model": raw, "ema_updates": self.average.updates}
        else:
            weights = {"model": self.model.state_dict()}
        return {
            **self.meta,
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "step": self.pos.step, "epoch": self.pos.epoch, "batch_in_epoch": self.pos.batch_in_epoch,
            # how many batches that epoch has: a resume within it must find the same number (see restore)
            "epoch_batches": self.train_data.num_batches(self.pos.epoch) if self.pos.batch_in_epoch else 0,
            "train_time": self.pos.train_time, "best": self.pos.best, "stale": self.pos.stale,
            "best_loss": self.pos.best_loss, "best_step": self.pos.best_step, "best_metrics": dict(self.best_metrics),
            "rng": rng_state(),
            "carried_state": detach_state(self.state),
            "metrics": dict(self.last_val), "val_step": self.val_step,
            "task": self.task.state_dict(),
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }

    def save(self, name: str) -> Optional[Path]:
        """Write ``last`` (the rotating resumable checkpoint) or another named one. A validation that
        found a new best marks best.pt due; it is written right after the last.pt of the same step, never
        before: a kill between the two then leaves a resumable run whose best.pt is a step it has passed,
        not a best.pt from a step its last.pt has not reached (which a resume would pair with other
        curves, or could not continue from at all)."""
        if self.run_dir is None:
            return None
        if name == "last":
            path = save_rotating(self.run_dir.checkpoints, self.checkpoint(), self.pos.step, self.cfg.keep_checkpoints)
            if self._best_due:
                self._best_due = False
                save_checkpoint(self.run_dir.checkpoints / "best.pt", self.checkpoint())
            return path
        path = self.run_dir.checkpoints / f"{name}.pt"
        save_checkpoint(path, self.checkpoint())
        return path

    def restore(self, ckpt: dict) -> None:
        """Continue exactly where ``ckpt`` stopped: weights, optimizer state, position, RNG, carried
        state. The optimizer's hyper-parameters are this trainer's config (what config.json records),
        not the checkpoint's. A change the checkpoint cannot continue under (:func:`resume_refusal`)
        is a ConfigError, raised before anything is loaded or written."""
        epoch = ckpt.get("epoch", 0)
        refusal = resume_refusal(ckpt.get("config"), self.meta.get("config") or {"train": asdict(self.cfg)},
                                 epoch=epoch, batch_in_epoch=ckpt.get("batch_in_epoch", 0),
                                 batches_then=ckpt.get("epoch_batches", 0),
                                 batches_now=self.train_data.num_batches(epoch))
        if refusal:
            raise ConfigError(refusal)
        raw = ckpt.get("train_model", ckpt["model"])
        if self.average is not None:
            self.average.load(self.model, ckpt["model"], raw)  # an unaveraged checkpoint: both are its weights
            self.average.updates = ckpt.get("ema_updates", 0)
        else:
            self.model.load_state_dict(raw)
        self._load_optimizer(ckpt["optimizer"])
        self.pos = Position(step=ckpt["step"], epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"],
                            train_time=ckpt.get("train_time", 0.0), best=ckpt.get("best"), stale=ckpt.get("stale", 0),
                            best_loss=ckpt.get("best_loss"), best_step=ckpt.get("best_step", -1))
        self.best_metrics = dict(ckpt.get("best_metrics") or {})
        set_rng_state(ckpt["rng"])
        self.state = ckpt.get("carried_state")
        if self.state is not None:
            self.state = [s if s is None else _to(s, self.device) for s in self.state]
        self.last_val = dict(ckpt.get("metrics") or {})
        self.val_step = ckpt.get("val_step", -1)
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.run_dir is not None:
            self.run_dir.truncate_metrics(self.pos.step)
            self._reconcile_best(ckpt)
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Remove what a killed attempt's checkpoint writes left in checkpoints/: the temporary files of
        atomic writes (``.NAME.XXXX.tmp``) and of last.pt's link (``.last.pt.PID.link``). The run's lock is
        held, so no other training is writing them."""
        freed, count = 0, 0
        for path in checkpoint_temporaries(self.run_dir.path):
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:
                continue
            freed, count = freed + size, count + 1
        if count:
            log.info("removed %d temporary file%s (%.1f MB) that an interrupted checkpoint write left in %s", count,
                     "" if count == 1 else "s", freed / 1e6, self.run_dir.checkpoints)

    def _reconcile_best(self, ckpt: dict) -> None:
        """Make best.pt the best of the checkpoint resumed from. A run stopped between writing a step's
        last.pt and its best.pt (see :meth:`save`), or resumed from an older step file, holds a best.pt of
        another step than the one its position records: where that step is the resumed checkpoint's own,
        best.pt is written from it; otherwise a warning says which step best.pt holds."""
        recorded = ckpt.get("best_step", -1)
        if recorded is None or recorded < 0:
            return
        best = self.run_dir.checkpoints / "best.pt"
        try:
            on_disk = load_checkpoint(best).get("step") if best.is_file() else None
        except CheckpointError:
            on_disk = None
        if on_disk == recorded:
            return
        if ckpt.get("step") == recorded:
            save_checkpoint(best, ckpt)
            log.info("best.pt: set to the resumed checkpoint (step %s), the run's best, which the interrupted "
                     "attempt had not written", f"{recorded:,}")
        else:
            log.warning("best.pt holds %s, and the run's best was at step %s (resumed from step %s): it is replaced at "
                        "the next validation better than that one", "no checkpoint" if on_disk is None else
                        f"step {on_disk:,}", f"{recorded:,}", f"{ckpt.get('step', 0):,}")

    def _load_optimizer(self, state: dict) -> None:
        """The checkpoint's optimizer state (moments, step counts) under this config's hyper-parameters:
        ``load_state_dict`` replaces every param group with the saved one, which would keep the saved
        weight decay and momentum while config.json records the new ones."""
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
            if isinstance(self.optimizer, torch.optim.RMSprop) and group["momentum"] > 0:
                for p in group["params"]:  # RMSprop makes this buffer only for a momentum set from the start
                    st = self.optimizer.state.get(p)
                    if st and "momentum_buffer" not in st:
                        st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # ----- the loop ----------------------------------------------------------------------------
    def _total_steps(self) -> int:
        total = sum(self.train_data.num_batches(e) for e in range(self.cfg.epochs))
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def _progress(self, total_steps: int) -> float:
        p = self.pos.step / max(total_steps, 1)
        if self.cfg.max_time:
            p = max(p, self.pos.train_time / self.cfg.max_time)
        return p

    def stopped_by(self) -> str:
        """The limit that ended (or would end) training where it stands: ``early_stopping``, ``time``,
        ``steps`` or ``epochs``; empty while none is reached."""
        if self._stalled():
            return "early_stopping"
        return self._budget_spent() or ("epochs" if self.pos.epoch >= self.cfg.epochs else "")

    def _budget_spent(self) -> str:
        """``time`` or ``steps`` once max_time or max_steps is used up, else empty."""
        c = self.cfg
        if c.max_time and self.pos.train_time >= c.max_time:
            return "time"
        return "steps" if c.max_steps and self.pos.step >= c.max_steps else ""

    def _stalled(self) -> bool:
        """Whether early stopping's count of validations without improvement is reached."""
        return bool(self.cfg.early_stopping and self.pos.stale >= self.cfg.early_stopping)

    def _limits_reached(self) -> bool:
        return bool(self._budget_spent())

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def fit(self) -> dict[str, float]:
        """Train until epochs, max_steps or max_time run out (or early stopping); returns the last validation metrics."""
        cfg, total = self.cfg, self._total_steps()
        self._fit_start = (self.pos.step, self.pos.train_time)
        if self.average is not None and self.average.swapped:
            self.average.swap()  # a second fit() continues from the trained weights, not the averages
        self.model.train()
        log.info(self.describe())
        self._emit("on_train_start")
        window_loss, window_n, window_units, window_t = 0.0, 0, 0, 0.0
        shown = _ProgressWindow()  # what the periodic progress line covers
        stop = self._limits_reached()
        reached = self.stopped_by()
        if self.pos.step and reached:  # a resume of a run that had ended: say what would let it go on
            log.warning("the run had already stopped by %s at step %s: nothing to train; raise %s to go on",
                        STOPPING_LIMITS[reached], f"{self.pos.step:,}",
                        {"time": "--max-time", "steps": "--max-steps", "epochs": "--epochs"}.get(
                            reached, "train.early_stopping"))
        while not stop and self.pos.epoch < cfg.epochs:
            epoch, n_batches = self.pos.epoch, self.train_data.num_batches(self.pos.epoch)
            if self.pos.batch_in_epoch == 0:
                self.state = None
            for k, batch in enumerate(self.train_data.batches(epoch, start=self.pos.batch_in_epoch),
                                      start=self.pos.batch_in_epoch):
                t0 = time.perf_counter()
                loss, units = self._train_step(batch, total)
                dt = time.perf_counter() - t0
                self.pos.step += 1
                self.pos.batch_in_epoch = k + 1
                self.pos.train_time += dt
                window_loss += loss * units
                window_n, window_units, window_t = window_n + 1, window_units + units, window_t + dt
                info = {"step": self.pos.step, "epoch": epoch, "batch": k + 1, "batches": n_batches,
                        "loss": loss, "rate": units / max(dt, 1e-9), "unit": self.task.unit}
                self._emit("on_step", info)
                line = shown.add(loss, units, dt)
                if line is not None:
                    log.info(self.progress_line(info, *line), extra={"progress": True})
                if self.pos.step % cfg.log_every == 0 or k + 1 == n_batches:
                    self._log("train", {"loss": window_loss / max(window_units, 1),
                                        "lr": self.optimizer.param_groups[0]["lr"],
                                        f"{self.task.unit}_per_s": window_units / max(window_t, 1e-9)})
                    window_loss, window_n, window_units, window_t = 0.0, 0, 0, 0.0
                stop = self._limits_reached()
                end_of_epoch = k + 1 == n_batches
                validated = bool(cfg.val_every) and self.pos.step % cfg.val_every == 0 and not end_of_epoch
                if validated:
                    stop = self._validate() or stop
                if end_of_epoch:
                    break
                # a validation may keep best.pt: a resumable checkpoint goes with it, or an interrupted run
                # would hold a best model it can neither resume from nor be restarted over
                if validated or self.pos.step % cfg.checkpoint_every == 0:
                    self.save("last")
                if stop:
                    break
            if self.pos.batch_in_epoch >= n_batches:
                self.pos.epoch, self.pos.batch_in_epoch = epoch + 1, 0
                self.state = None
                stop = self._validate() or stop
            self.save("last")
        if window_units:
            self._log("train", {"loss": window_loss / window_units, "lr": self.optimizer.param_groups[0]["lr"],
                                f"{self.task.unit}_per_s": window_units / max(window_t, 1e-9)})
        if self.val_step != self.pos.step and self.val_data is not None:
            self._validate()  # the run ends with metrics of its final weights
            self.save("last")
        if self.average is not None:
            self.average.swap()  # the finished model is the averaged one (evaluate, predict, export)
        log.info(self.describe_end(), extra={"console": False})  # the CLI prints its own results block
        self._emit("on_train_end", self.last_val)
        return dict(self.last_val)

    def result(self) -> TrainResult:
        return TrainResult(self.run_dir.path if self.run_dir is not None else None, self.pos.step, self.pos.epoch,
                           self.pos.train_time, dict(self.last_val), self.val_step, self.pos.best_step,
                           dict(self.best_metrics), self.task, self.stopped_by())

    # ----- what the log says -------------------------------------------------------------------
    def describe(self) -> str:
        """The line a run starts with: model, parameters, device and threads, limits, run directory."""
        cfg = self.cfg
        limits = [f"{cfg.epochs} epochs"]
        if cfg.max_steps:
            limits.append(f"{cfg.max_steps} steps")
        if cfg.max_time:
            limits.append(f"{cfg.max_time:g} s")
        params = sum(p.numel() for p in self.model.parameters())
        where = f"{self.device} ({plural(torch.get_num_threads(), 'thread')})" if self.device.type == "cpu" else str(self.device)
        layout = " with channels-last convolutions" if self.channels_last else ""
        if self.amp_dtype is not None:
            layout += f" in {self.cfg.precision} autocast"
        start = f"from step {self.pos.step:,} " if self.pos.step else ""
        run = self.run_dir.path if self.run_dir is not None else "(no run directory)"
        return (f"training {getattr(self.model, 'spec', type(self.model).__name__)} ({params:,} parameters) "
                f"{start}on {where}{layout}, up to {', '.join(limits)}; run {run}")

    def progress_line(self, info: dict, loss: float, rate: float) -> str:
        """``step 412  epoch 4 batch 37/125  loss 0.0561  3,410 samples/s  eta 48 s``."""
        eta = self.eta(info)
        eta_text = f"  eta {eta:.0f} s" if eta is not None else ""
        return (f"step {info['step']:,}  epoch {info['epoch'] + 1} batch {info['batch']}/{info['batches']}  "
                f"loss {loss:.4f}  {rate:,.0f} {info['unit']}/s{eta_text}")

    def eta(self, info: dict, start: Optional[tuple[int, float]] = None) -> Optional[float]:
        """Training seconds left until the first limit (epochs, max_steps, max_time), from the seconds
        per step since ``start`` (step, training seconds; default: where this fit began), plus the
        ``later_members`` of an ensemble still to train; None before the first step. Validation is not
        counted."""
        cfg, pos = self.cfg, self.pos
        start = self._fit_start if start is None else start
        steps = pos.step - start[0]
        if steps <= 0:
            return None
        per_step = (pos.train_time - start[1]) / steps
        left = (cfg.epochs - info["epoch"]) * info["batches"] - info["batch"]  # epochs of this epoch's size
        if cfg.max_steps:
            left = min(left, cfg.max_steps - pos.step)
        eta = max(left, 0) * per_step
        if cfg.max_time:
            eta = min(eta, max(cfg.max_time - pos.train_time, 0.0))
        later = self.later_members
        if later:  # an ensemble member: the members trained after it, each a whole run of this one's limits
            whole = cfg.epochs * info["batches"]
            if cfg.max_steps:
                whole = min(whole, cfg.max_steps)
            one = whole * per_step
            eta += later * (min(one, cfg.max_time) if cfg.max_time else one)
        return eta

    def describe_end(self) -> str:
        """Where the run ended and which checkpoint is best."""
        pos = self.pos
        text = (f"finished: {plural(pos.step, 'step')}, {plural(pos.epoch, 'epoch')} completed, "
                f"{pos.train_time:.1f} s of training")
        reason = self.stopped_by()
        if reason:
            text += f"; stopped by {STOPPING_LIMITS[reason]}"
        if self.last_val:
            text += f"; final validation {self.task.format_metrics(self.last_val)}"
        if pos.best_step >= 0:
            text += f"; best checkpoint step {pos.best_step:,} ({self.task.format_metrics(self.best_metrics)})"
        return text

    def _train_step(self, batch: dict, total_steps: int) -> tuple[float, int]:
        batch = to_device(batch, self.device)
        if self.task.stateful and batch.get("reset") is True:
            self.state = None
        factor = lr_factor(self.cfg.schedule, self._progress(total_steps), self.pos.step, self.cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.forward_module(batch["x"], batch.get("lengths"), self.state if self.task.stateful else None,
                                          need_state=self.task.stateful)
                loss = self.task.loss(out, batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(self._diverged_message(float(loss.detach())))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss * self.loss_weight(batch)).backward()
        except torch.cuda.OutOfMemoryError:
            raise ConvrnnError(self._oom_message()) from None
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16: clipping sees true gradients
        if self.cfg.clip_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        else:
            norm = grad_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if torch.isfinite(norm):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped = 0
            if self.average is not None:
                self.average.update()
        elif self.scaler.is_enabled() and self.scaler.get_scale() >= 1.0:
            self.scaler.step(self.optimizer)  # skips the update and lowers the fp16 loss scale
            self.scaler.update()
            log.debug("step %d: fp16 overflow, loss scale lowered to %g", self.pos.step + 1, self.scaler.get_scale())
        else:
            self.skipped += 1
            log.warning("step %d: non-finite gradient norm, update skipped (%d in a row)", self.pos.step + 1, self.skipped)
            if self.skipped >= MAX_SKIPPED_STEPS:
                raise TrainingDiverged(self._diverged_message(float("nan"), what="gradients"))
        if self.task.stateful:
            self.state = detach_state(out.state)
        units = self.task.count(batch)
        return self.reduce_loss(loss.detach(), batch), units

    def loss_weight(self, batch: dict) -> float:
        """What this process's loss is multiplied by before backward (DistributedTrainer: its share)."""
        return 1.0

    def reduce_loss(self, loss: torch.Tensor, batch: dict) -> float:
        """The step's loss as a float (DistributedTrainer averages it over the ranks)."""
        return float(loss)

    def _diverged_message(self, value: float, what: str = "loss") -> str:
        last = self.run_dir.checkpoints / "last.pt" if self.run_dir else None
        where = f"; the last good checkpoint is {last}" if last is not None and last.exists() else ""
        return (f"training stopped: the {what} became {value} at step {self.pos.step + 1} "
                f"(epoch {self.pos.epoch + 1}, batch {self.pos.batch_in_epoch + 1}){where}. "
                f"Try a lower learning rate (now train.lr={self.cfg.lr:g}), gradient clipping "
                f"(train.clip_grad_norm=1), or tanh instead of relu activations")

    def _oom_message(self) -> str:
        msg = f"CUDA ran out of memory at batch size {self.cfg.batch_size}"
        summary = getattr(self.model, "summary", None)
        if summary is not None:
            est = summary(batch_size=self.cfg.batch_size).memory_bytes
            per_sample = max(est / self.cfg.batch_size, 1)
            free, _ = torch.cuda.mem_get_info(self.device)
            fits = max(1, int(0.8 * free / per_sample))
            msg += f" (estimated training memory {est / 2**20:.0f} MiB); try train.batch_size={min(fits, self.cfg.batch_size // 2 or 1)}"
        return msg

    # ----- validation --------------------------------------------------------------------------
    def _validate(self) -> bool:
        """Validate, log, keep the best checkpoint; True when early stopping says stop."""
        if self.val_data is None:
            return False
        if self.average is not None:
            with self.average:  # callbacks (sample text, filter pictures) see the averaged weights too
                return self._validate_current()
        return self._validate_current()

    def _validate_current(self) -> bool:
        metrics = self.evaluate(self.val_data, max_batches=self.cfg.val_batches)
        self.last_val, self.val_step = metrics, self.pos.step
        self._log("val", metrics)
        log.info("validation at step %s (epoch %d): %s", f"{self.pos.step:,}", self.pos.epoch_number,
                 self.task.format_metrics(metrics))
        self._emit("on_validation", metrics)
        value = metrics.get(self.task.monitor)
        if value is None:
            return False
        if self._is_best(value, metrics.get("loss")):
            self.pos.best, self.pos.best_loss, self.pos.best_step = value, metrics.get("loss"), self.pos.step
            self.best_metrics = dict(metrics)
            self.pos.stale = 0
            self._best_due = True  # written with the step's last.pt (save)
        else:
            self.pos.stale += 1
        return self._stalled()

    def _is_best(self, value: float, loss: Optional[float]) -> bool:
        """Whether a validation with monitored ``value`` and ``loss`` replaces the best checkpoint: a
        better monitored value; on a tie, a lower validation loss; on a tie of both, the later step
        (a run whose accuracy saturates early keeps its latest weights, not its first perfect ones)."""
        if self.pos.best is None:
            return True
        if value != self.pos.best:
            return value > self.pos.best if self.task.monitor_mode == "max" else value < self.pos.best
        if loss is None or self.pos.best_loss is None or self.task.monitor == "loss":
            return True
        return loss <= self.pos.best_loss

    def evaluate(self, data: BatchSource, max_batches: int = 0) -> dict[str, float]:
        """The task's metrics of the model on ``data`` (at most ``max_batches`` batches; 0: all)."""
        return evaluate(self.model, self.task, data, max_batches=max_batches, device=self.device).compute()

    def _log(self, split: str, metrics: dict[str, float]) -> None:
        if self.run_dir is not None:
            self.run_dir.log_metrics(self.pos.step, self.pos.epoch, split, metrics)
        log.debug("step %d %s %s", self.pos.step, split, metrics)


class _ProgressWindow:
    """Steps since the last progress line: their mean loss per unit and units per second, handed out
    every ``PROGRESS_EVERY`` seconds of wall time (and at the first step)."""

    def __init__(self):
        self.loss = self.units = self.seconds = 0.0
        self.last: Optional[float] = None

    def add(self, loss: float, units: int, seconds: float) -> Optional[tuple[float, float]]:
        self.loss, self.units, self.seconds = self.loss + loss * units, self.units + units, self.seconds + seconds
        now = time.monotonic()
        if self.last is not None and now - self.last < PROGRESS_EVERY:
            return None
        self.last = now
        out = (self.loss / max(self.units, 1), self.units / max(self.seconds, 1e-9))
        self.loss = self.units = self.seconds = 0.0
        return out


def _to(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return type(state)(_to(s, device) for s in state)
