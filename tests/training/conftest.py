"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from training.data.features import SideTables, build_requests
from training.data.pipeline import Dataset
from training.sim.config import preset
from training.sim.generate import generate_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny world's dataset (read-only for tests), its side tables and train Requests."""
    out = tmp_path_factory.mktemp("tiny-world") / "tiny"
    generate_dataset(preset("tiny"), out, progress=False)
    ds = Dataset.open(out)
    side = SideTables.from_tables(ds.users(), ds.items())
    return ds, side, build_requests(ds.read("train"), side)


@pytest.fixture
def one_thread():
    """Small torch ops on a busy 2-core machine run much faster on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
