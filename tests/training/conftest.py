"""Fixtures shared by the training tests (the tiny world is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small torch ops on a busy 2-core machine run much faster on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
