"""Shared test configuration."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run every test with one torch thread: the tensors are tiny, and two threads are slower on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def catalogue_rows():
    """Every ``metaopt verify`` row on every installed engine, run once for the session."""
    from metaopt.verify.catalogue import run_catalogue

    return run_catalogue()
