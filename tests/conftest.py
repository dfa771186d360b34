"""Fixtures shared across packages: the tiny world and a small exported bundle."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny world's dataset (read-only for tests), its side tables and train Requests."""
    from training.data.features import SideTables, build_requests
    from training.data.pipeline import Dataset
    from training.sim.config import preset
    from training.sim.generate import generate_dataset

    out = tmp_path_factory.mktemp("tiny-world") / "tiny"
    generate_dataset(preset("tiny"), out, progress=False)
    ds = Dataset.open(out)
    side = SideTables.from_tables(ds.users(), ds.items())
    return ds, side, build_requests(ds.read("train"), side)


def small_models(spec, seed: int = 0):
    """Untrained but non-trivial small networks for ``spec``: a DRL-Rec-shaped student (a Q
    network) and a Wide&Deep, their weights perturbed so scores are far from ties."""
    import torch

    from training.baselines.pointwise import seeded_build_model
    from training.drl.networks import QNetConfig, QNetwork

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = QNetwork(QNetConfig.from_spec(spec, d_r=4, gru_hidden=8, mlp=(16, 8, 4), memory=4))
        wd = seeded_build_model("wide_deep", spec.sizes(), seed=seed, embed_dim=4,
                                hidden=(16, 8))  # fmt: skip
    with torch.no_grad():
        for p in [*q.parameters(), *wd.parameters()]:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return q.eval(), wd.eval()


def small_mmrf(spec, seed: int = 0, collaboration: str = "attention"):
    """An untrained small MMRF agent network for ``spec`` (memory 3, unlike the Q network's 4:
    a bundle's models may read different windows), weights perturbed like
    :func:`small_models` so the main actor's scores are far from ties."""
    import torch

    from training.drl.networks import QNetConfig
    from training.mmrf.networks import MMRFNetConfig, MultiAgentActorCritic

    cfg = MMRFNetConfig(
        encoder=QNetConfig.from_spec(spec, d_r=4, gru_hidden=8, memory=3), agent_dim=8,
        heads=2, action_dim=6, actor_hidden=(8,), critic_mlp=(8,), model_hidden=(8,),
        collaboration=collaboration,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MultiAgentActorCritic(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return net.eval()


#: A reward scale as training/mmrf/rewards.py fits it (made-up numbers, seconds).
TINY_REWARD_SCALE = {"cap": 61.5, "quantile": 0.99, "mean": 14.25, "std": 11.5, "count": 1234}


def crowded_items(items):
    """The tiny world's items with authors shared by many items (the tiny world's have at most
    3 items each), so that the same-author list field varies within a list."""
    import numpy as np
    import pyarrow as pa

    author = (np.arange(items.num_rows) % 7) * 1000 + 3
    return items.set_column(items.schema.get_field_index("author_raw"), "author_raw",
                            pa.array(author, pa.int64()))  # fmt: skip


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory):
    """A bundle of small random-init models on the tiny world's users and its items with
    crowded authors (:func:`crowded_items`): (path, q net, w&d)."""
    import torch

    from contract.features import DEFAULT_SPEC
    from training.export import export_bundle, pointwise_export, q_export, real_batch

    ds, _, req = tiny_data
    q, wd = small_models(DEFAULT_SPEC)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_bundle(
            out,
            [q_export("q", q, DEFAULT_SPEC), pointwise_export("wd", wd, DEFAULT_SPEC)],
            DEFAULT_SPEC, ds.users(), crowded_items(ds.items()), name="tiny",
            real=real_batch(req, 4, 32),
        )  # fmt: skip
    finally:
        torch.set_num_threads(n)
    return out, q, wd


@pytest.fixture(scope="session")
def mmrf_bundle(tiny_data, tmp_path_factory):
    """A bundle of the tiny world with a small MMRF actor as ``mmrf_watchtime`` beside the
    small Q network as ``q`` (items with crowded authors): (path, MMRF net, q net)."""
    import torch

    from contract.features import DEFAULT_SPEC
    from training.export import actor_export, export_bundle, q_export, real_batch

    ds, _, req = tiny_data
    q, _ = small_models(DEFAULT_SPEC)
    net = small_mmrf(DEFAULT_SPEC, seed=2)
    out = tmp_path_factory.mktemp("bundles") / "mmrf"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_bundle(
            out,
            [q_export("q", q, DEFAULT_SPEC),
             actor_export("mmrf_watchtime", net, DEFAULT_SPEC, TINY_REWARD_SCALE)],
            DEFAULT_SPEC, ds.users(), crowded_items(ds.items()), name="tiny-mmrf",
            real=real_batch(req, 4, 32),
        )  # fmt: skip
    finally:
        torch.set_num_threads(n)
    return out, net, q
