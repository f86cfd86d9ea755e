"""The command line as people run it: in a terminal (a pseudo-terminal here), from a directory that is
not the project's, for every recipe: train a few seconds, eval, predict (sample for charlm), report.
Each command must exit 0, draw its progress bar, print no traceback, and eval must read the same
numbers from any working directory.

These start real processes (a few seconds each), so they are marked slow: ``pytest -m "not slow"``
skips them for a quick local run; CI runs them.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import CORPUS, TINY_RECIPES, predict_inputs

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"
BAR = "━"  # what rich draws a progress bar with
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def in_terminal(argv: list[str], cwd: Path, timeout: float = 180.0) -> tuple[int, str]:
    """Run ``python -m convrnn ARGV`` in ``cwd`` with stdin, stdout and stderr on a 40x120
    pseudo-terminal; returns the exit code and everything it printed (escape codes kept)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("CI", None)  # rich draws no bars where it believes it runs in CI
    proc = subprocess.Popen([sys.executable, "-m", "convrnn", *argv], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"convrnn {' '.join(argv)} ran over {timeout:.0f} s: {b''.join(chunks)[-2000:]!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def plain(text: str) -> str:
    return ANSI.sub("\n", text)


def expect_ok(argv: list[str], cwd: Path, *, bar: bool = False) -> str:
    code, out = in_terminal(argv, cwd)
    assert code == 0 and "Traceback" not in out, f"convrnn {' '.join(argv)} -> {code}:\n{plain(out)[-3000:]}"
    if bar:
        assert BAR in out, f"no progress bar drawn by convrnn {' '.join(argv)}:\n{plain(out)[-2000:]}"
    return out


def metric_lines(out: str) -> list[str]:
    """The result lines of ``convrnn eval`` (what must not depend on the working directory)."""
    lines = [line.strip() for line in plain(out).splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("checkpoint:"))
    return [line for line in lines[start:] if line]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, before any thread runs: os.umask can only be read by setting it, and a process started by
# another thread while it is 0 would write its files with the wrong mode.
UMASK = _umask()


def exercise(recipe: str, root: Path) -> None:
    """Train ``recipe`` for a few seconds in a terminal, then eval, predict (sample for charlm) and
    report from the run's folder and from another one; asserts as it goes."""
    work, elsewhere = root / "work", root / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    options = [o.replace("{corpus}", "corpus.txt") for o in TINY_RECIPES[recipe]]  # relative to where training runs
    out = expect_ok(["train", recipe, *options, "--max-time", "3", "--run-dir", "run"], work, bar=True)
    text = plain(out)
    assert "final:" in text and "best:" in text, text[-2000:]
    run = work / "run"
    assert (run / "train.log").stat().st_size > 0 and "validation at step" in (run / "train.log").read_text()

    here = expect_ok(["eval", "run"], work)
    there = expect_ok(["eval", str(run)], elsewhere)  # absolute path, other working directory
    assert metric_lines(here) == metric_lines(there)

    if recipe == "charlm":
        out = expect_ok(["sample", str(run), "--length", "40", "--seed", "1"], elsewhere)
        assert "Traceback" not in out
    else:
        inputs = [str(Path(p).resolve()) for p in predict_inputs(recipe, elsewhere)]
        here = plain(expect_ok(["predict", "run", *inputs], work)).strip()
        there = plain(expect_ok(["predict", str(run), *inputs], elsewhere)).strip()
        assert here and here == there, (here, there)
    expect_ok(["report", "run", "--out", str(work / "report.html")], work)
    expect_ok(["report", str(run), "--out", "report.html"], elsewhere)
    assert (elsewhere / "report.html").stat().st_size > 10_000
    assert results(work / "report.html") == results(elsewhere / "report.html")  # the same numbers from anywhere
    assert oct((run / "config.json").stat().st_mode & 0o777) == oct(0o666 & ~UMASK)


@pytest.fixture(scope="module")
def terminal_sessions(request, tmp_path_factory):
    """The recipes' terminal sessions, two at a time: most of each is starting Python and importing
    torch on one core, so a 2-core machine runs two in about the time of one. Only the recipes whose
    tests were selected are started."""
    wanted = sorted({item.callspec.params["recipe"] for item in request.session.items
                     if getattr(item, "function", None) is test_every_recipe_in_a_terminal_from_another_directory})
    pool = ThreadPoolExecutor(2)
    yield {recipe: pool.submit(exercise, recipe, tmp_path_factory.mktemp(f"terminal-{recipe}")) for recipe in wanted}
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("recipe", sorted(TINY_RECIPES))
def test_every_recipe_in_a_terminal_from_another_directory(recipe, terminal_sessions):
    terminal_sessions[recipe].result()  # re-raises the session's failed assertion


def results(report: Path) -> str:
    """The report's results section, the numbers a reader looks at first."""
    page = report.read_text(encoding="utf-8")
    return page.split('<section id="results">', 1)[1].split("</section>", 1)[0]


def test_a_bad_input_in_a_terminal_is_one_line_and_exit_2(tmp_path):
    code, out = in_terminal(["train", "fonts", "--preset", "crnn", "--run-dir", "run"], tmp_path)
    lines = [line for line in plain(out).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: preset 'crnn'"), plain(out)
    assert not (tmp_path / "run").exists()
