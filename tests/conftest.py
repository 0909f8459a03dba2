"""Shared test fixtures. Tests needing real data use ``shared_datasets`` and skip when absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path to ../shared/datasets; skips the test with a visible reason when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATASETS} is absent")
    return SHARED_DATASETS


@pytest.fixture()
def one_thread():
    """torch on one thread for the test that asks for it (steady figures on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
