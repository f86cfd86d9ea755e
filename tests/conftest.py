import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONVRNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's dataset cache out of the user's home directory."""
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
