"""The files convrnn writes in a run directory, told apart from anything else that shares the folder.

A run that stops before its first checkpoint keeps nothing: what it wrote is removed when it fails or is
interrupted (``recipes.runner.train``), and an ensemble member killed before its first checkpoint starts
again from none of its old files (``train.ensemble.train_ensemble``). A run directory may be a folder the
user made and keeps other files in, so only the names below are ever removed, never a folder wholesale.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"  # an ensemble's member runs (train.ensemble)
LOCK_FILE = ".lock"  # the run's lock (train.rundir.RunLock), released by its holder, never removed here

# what RunDir, RunConfig.save and the trainer write at the top of a run directory: the temporary files
# are those of atomic_write_* (``.NAME.XXXX.tmp``), which a kill in the middle of a write leaves
TOP_PATTERNS = ("config.json", "train.log", "metrics.csv", "events.out.tfevents.*",
                ".config.json.*.tmp", ".metrics.csv.*.tmp")
# what a killed checkpoint write leaves in RUN/checkpoints: atomic writes' temporary files, last.pt's link
CHECKPOINT_TEMPORARIES = (".last.pt.*.tmp", ".best.pt.*.tmp", ".step-*.pt.*.tmp", ".last.pt.*.link")
# what checkpoint.save_checkpoint and save_rotating write in RUN/checkpoints
CHECKPOINT_PATTERNS = ("last.pt", "best.pt", "step-*.pt", *CHECKPOINT_TEMPORARIES)
# what train_ensemble writes in RUN/members besides the members' own run directories
MEMBERS_PATTERNS = ("done.json", ".done.json.*.tmp")


def _matching(folder: Path, patterns: Iterable[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())
    return sorted(found)


def checkpoint_temporaries(run: str | Path) -> list[Path]:
    """The temporary files killed checkpoint writes left in ``run``'s checkpoints/ (a resume removes them)."""
    checkpoints = Path(run) / "checkpoints"
    return _matching(checkpoints, CHECKPOINT_TEMPORARIES) if checkpoints.is_dir() else []


def run_file_paths(run: str | Path) -> list[Path]:
    """Every file convrnn writes that is now in the run directory ``run``, and the folders it makes
    there (``checkpoints/``, ``members/`` and each ``members/N/``), each folder after its contents, so
    removing them in this order empties a folder before it is removed. The lock file is not listed."""
    run = Path(run)
    paths = _matching(run, TOP_PATTERNS)
    checkpoints = run / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        paths += _matching(checkpoints, CHECKPOINT_PATTERNS) + [checkpoints]
    members = run / MEMBERS_DIR
    if members.is_dir() and not members.is_symlink():
        try:
            folders = sorted(p for p in members.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink())
        except OSError:  # unreadable: nothing in it is listed, so nothing in it is removed
            folders = []
        for member in folders:
            paths += run_file_paths(member) + [member]
        paths += _matching(members, MEMBERS_PATTERNS) + [members]
    return paths


def remove_run_files(run: str | Path, keep: Iterable[Path] = ()) -> list[Path]:
    """Remove convrnn's files from the run directory ``run`` (:func:`run_file_paths`), except those in
    ``keep`` (what was there before the run that is being undone started); its folders go only where
    they are then empty, so a file of the user's inside one keeps it. ``run`` itself stays. Returns
    what was removed; a path that cannot be removed is left, with a warning."""
    kept, removed = set(keep), []
    for path in run_file_paths(run):
        if path in kept:
            continue
        try:
            if path.is_dir():
                if any(path.iterdir()):
                    continue  # something not convrnn's is in it: the folder stays with it
                path.rmdir()
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("%s: cannot remove (%s)", path, e.strerror or e)
            continue
        removed.append(path)
    return removed


def other_entries(run: str | Path) -> list[Path]:
    """What the run directory ``run`` holds at its top that convrnn did not write there (the user's own
    files and folders), the lock file aside."""
    run = Path(run)
    ours = {p for p in run_file_paths(run) if p.parent == run}
    return sorted(p for p in run.iterdir() if p not in ours and p.name != LOCK_FILE)


def describe_run_files(run: str | Path) -> str:
    """The names of convrnn's entries at the top of ``run`` for a message: ``config.json, train.log and
    checkpoints/``, TensorBoard's event files as one ``events.out.tfevents.*``."""
    run = Path(run)
    names: list[str] = []
    for path in run_file_paths(run):
        if path.parent != run:
            continue
        name = "events.out.tfevents.*" if path.name.startswith("events.out.tfevents.") else path.name
        name += "/" if path.is_dir() else ""
        if name not in names:
            names.append(name)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
