"""Shared fixtures. `VISIONZOO_REQUIRE_SHARED_DATA=1` (set by .ci/run) turns a missing
../shared/data into a failure instead of a skip, so CI cannot pass on skipped checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# The tests mirror the package in subfolders; the shared helpers (harness, small_inputs, this file) stay here.
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_DATA = Path(os.environ.get("VISIONZOO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    torch.manual_seed(0)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One intra-op thread per worker: `-n auto` already runs one worker per core, and more threads
        # than cores make PyTorch's spinning thread pools slow each other down many times over.
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep each test session's on-disk caches out of the user's home."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path_factory.getbasetemp() / "visionzoo-cache"))


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (tiny problems; no thread-pool wake-ups), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_shared_file(name: str) -> Path:
    """Path of a file in ../shared/data; skip (or fail under CI's flag) when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"shared data file {path} is absent (see ../shared/data/README.md)"
        if os.environ.get("VISIONZOO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; VISIONZOO_REQUIRE_SHARED_DATA=1 makes this a failure")
        pytest.skip(message)
    return path
