import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONVRNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


TEST_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's dataset cache out of the user's home directory."""
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    """Runs without --threads use the cores the machine's load leaves idle; in tests that would make
    results depend on what else the machine is doing, so every such run gets the same count."""
    import convrnn.train.threads
    monkeypatch.setattr(convrnn.train.threads, "choose_threads", lambda cores=None, load=None: TEST_THREADS)
