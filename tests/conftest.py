import logging
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


_PRISTINE_LOGGER = (list(logging.getLogger("convrnn").handlers), logging.getLogger("convrnn").level,
                    logging.getLogger("convrnn").propagate)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI configures the ``convrnn`` logger (its own handler, no propagation), in tests and in
    module-scoped fixtures alike; every test starts from the logger as it was before any test, so
    that log capture does not depend on which tests ran before."""
    logger = logging.getLogger("convrnn")
    logger.handlers[:], logger.level, logger.propagate = _PRISTINE_LOGGER[0][:], *_PRISTINE_LOGGER[1:]
    yield


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    """Runs without --threads use the cores the machine's load leaves idle; in tests that would make
    results depend on what else the machine is doing, so every such run gets the same count."""
    import convrnn.train.threads
    monkeypatch.setattr(convrnn.train.threads, "choose_threads", lambda cores=None, load=None: TEST_THREADS)
