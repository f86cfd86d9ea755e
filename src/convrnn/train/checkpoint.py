"""Checkpoints: plain dicts, written atomically, loaded without executing code.

A checkpoint holds everything needed to rebuild the model by itself (spec, input shape, number of
outputs, state dict, recipe metadata) and to resume training exactly (optimizer, schedule, step,
epoch, position in the epoch, random number generator states).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convrnn.errors import CheckpointError, WriteError
from convrnn.files import atomic_write_bytes, fsync_dir

FORMAT = "convrnn-checkpoint"
VERSION = 1

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Random number generator states as plain types and tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": _python_state_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_plain(st):
    version, internal, gauss = st
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(obj: Any, h) -> None:
    """Feed a canonical encoding of ``obj`` (dicts by sorted key, tensors by dtype, shape and bytes) to ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _digest(item, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def checksum(ckpt: dict[str, Any]) -> str:
    """SHA-256 over the checkpoint's content (everything but the ``checksum`` key itself)."""
    h = hashlib.sha256()
    _digest({k: v for k, v in ckpt.items() if k != "checksum"}, h)
    return h.hexdigest()


def save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """Serialize ``ckpt`` (with a checksum of its content) to memory first, then write it atomically."""
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    ckpt["checksum"] = checksum(ckpt)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    try:
        atomic_write_bytes(Path(path), buf.getvalue())
    except WriteError as e:  # a checkpoint that could not be written is the checkpoint's problem
        raise CheckpointError(str(e)) from None


def _first_sentence(e: BaseException, limit: int = 160) -> str:
    """The first sentence of an error's message, cut at a word if still longer than ``limit``: torch's
    reader appends paragraphs of advice that would bury the one line."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely: ``torch.load(weights_only=True)`` never runs code from the file.

    A run directory may be given instead of a file: its ``checkpoints/best.pt`` (else ``last.pt``).
    """
    p = resolve_checkpoint(path)
    _check_looks_like_checkpoint(p)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: refused to load: the file holds objects other than tensors and plain data "
                              f"({_unpickling_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError) as e:
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt: {_first_sentence(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a convrnn checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{p}: checkpoint version {ckpt['version']} is newer than this convrnn ({VERSION})")
    if "checksum" in ckpt and checksum(ckpt) != ckpt["checksum"]:
        raise CheckpointError(f"{p}: checksum mismatch: the checkpoint is corrupt")
    return ckpt


def _check_looks_like_checkpoint(p: Path) -> None:
    """An empty file, or a run's text file given where a checkpoint belongs, is named as such rather
    than reported by what the unpickler tripped on."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointError(f"{p}: the file is empty (0 bytes), not a checkpoint; a run's checkpoints are "
                              f"RUN/checkpoints/best.pt and last.pt")
    text_suffix = p.suffix.lower() in (".json", ".csv", ".log", ".txt", ".html")
    looks_like_json = head.lstrip()[:1] in (b"{", b"[")
    if text_suffix or looks_like_json:
        raise CheckpointError(f"{p}: this is a {p.suffix.lstrip('.') or 'text'} file, not a checkpoint; give the run "
                              f"directory ({p.parent}) or one of its checkpoints/*.pt files")
    # torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle (protocol 2+);
    # anything else (an image, a text) would only be reported by what the unpickler tripped on
    if not (head.startswith(ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS)):
        kind = next((name for magic, name in FOREIGN_MAGIC if head.startswith(magic)), None)
        what = f"it is {kind}, not a PyTorch file" if kind else "not a PyTorch file (neither a zip archive nor a pickle)"
        raise CheckpointError(f"{p}: not a convrnn checkpoint: {what}; give a run directory or one of its "
                              f"checkpoints/*.pt files")


ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")
FOREIGN_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                 (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
                 (b"\x1f\x8b", "a gzip file"), (b"\x93NUMPY", "a NumPy .npy file"))


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused ("Trying to load unsupported
    GLOBAL posix.system ...", "Unsupported operand 80"), not its paragraph of advice about weights_only."""
    advice = ("weights only load failed", "please file an issue", "check the documentation", "(1)", "(2)",
              "in pytorch 2.6")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    marked = next((line for line in lines if "weightsunpickler error:" in line.lower()), None)
    if marked is not None:  # "WeightsUnpickler error: Unsupported global: GLOBAL x.Y was not ... Please use ..."
        reason = marked[marked.lower().index("weightsunpickler error:") + len("weightsunpickler error:"):].strip()
        reason = reason.split(". Please use")[0].split(". ")[0]
    else:
        reason = next((line for line in lines if not line.lower().startswith(advice)), "")
    return reason[:200] or "unsupported content"


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def save_rotating(directory: Path, ckpt: dict[str, Any], step: int, keep: int) -> Path:
    """Write ``step-N.pt``, point ``last.pt`` at it atomically, and keep only the newest ``keep`` step files.

    ``last.pt`` is a hard link to the newest step file (a copy where links are not supported), so the
    previous good checkpoints stay on disk for :func:`load_latest_checkpoint` to fall back on.
    """
    directory = Path(directory)
    target = directory / step_name(step)
    save_checkpoint(target, ckpt)
    last = directory / "last.pt"
    tmp = directory / f".last.pt.{os.getpid()}.link"
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(target, tmp)
        os.replace(tmp, last)
        fsync_dir(directory)
    except OSError:
        atomic_write_bytes(last, target.read_bytes())
    olds = sorted(directory.glob("step-*.pt"))[:-keep] if keep > 0 else []
    for old in olds:
        try:
            old.unlink()
        except OSError:  # pragma: no cover
            pass
    return last


def resumable_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files a run resumes from, newest first: ``last.pt``, then the ``step-N.pt`` files
    (a kill between a step file's write and last.pt's link leaves only those)."""
    ckdir = Path(run_dir) / "checkpoints"
    return [p for p in [ckdir / "last.pt"] + sorted(ckdir.glob("step-*.pt"), reverse=True) if p.is_file()]


def load_latest_checkpoint(run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The newest checkpoint of a run that loads and verifies: ``last.pt``, else older ``step-N.pt`` files."""
    ckdir = Path(run_dir) / "checkpoints"
    errors = []
    for path in resumable_checkpoints(run_dir):
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("skipping %s", e)
            continue
        if errors:
            log.warning("resuming from %s (step %s) instead", path.name, ckpt.get("step"))
        return ckpt
    detail = f": {'; '.join(errors)}" if errors else ""
    raise CheckpointError(f"{run_dir}: no loadable checkpoint in {ckdir}{detail}")


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file, or a run directory -> its best (or last) checkpoint."""
    p = Path(path)
    if p.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        if p.name == "checkpoints" and any((p / name).is_file() for name in order):  # RUN/checkpoints given
            return next(p / name for name in order if (p / name).is_file())
        raise CheckpointError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this run directory")
    if not p.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return p
