"""How many CPU threads torch uses: what the user asked for, else the cores other processes leave idle."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover
        return 0.0


def choose_threads(cores: Optional[int] = None, load: Optional[float] = None) -> int:
    """Default CPU threads: the cores not already busy with other processes, at least 1.

    A recurrent step waits for its slowest thread, so a thread whose core another process holds
    slows every step down (several times over, on a 2-core machine) instead of adding to it: a
    thread is only worth adding when its core is idle. ``load`` is the 1-minute load average (other
    runnable processes; this one has not started working yet).
    """
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, min(cores, int(cores - load + 0.5)))


def apply_threads(threads: int = 0) -> int:
    """Set torch's CPU threads: ``threads`` when positive, else :func:`choose_threads`. Returns the
    number set; the choice is logged at DEBUG (the training start line names it)."""
    chosen = threads if threads > 0 else choose_threads()
    torch.set_num_threads(chosen)
    if threads <= 0:
        log.debug("using %d CPU thread(s) of %d cores (1-minute load %.2f); set --threads to override",
                  chosen, available_cores(), load_average())
    return chosen
