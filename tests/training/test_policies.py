"""Train/serve parity of the online policies: the torch Q policy against the runtime's list
builder on the same exported network, request after request of the same sessions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import crowded_items

pytestmark = pytest.mark.usefixtures("one_thread")


def test_q_policy_scores_every_slot_as_the_list_builder_does(tiny_bundle, tiny_data):
    """Each slot's Q value depends on the items placed before it in the request (pushed into
    the state) and on the session's earlier requests: the torch policy and the served graphs
    must agree on both, not only on the slates (which a state-blind scorer often shares)."""
    from runtime.bundle import load_bundle
    from training.data.features import SideTables
    from training.eval.policies import BundlePolicy, QPolicy
    from training.sim.config import preset
    from training.sim.env import Env
    from training.sim.world import build_world

    ds = tiny_data[0]
    path, q, _ = tiny_bundle
    side = SideTables.from_tables(ds.users(), crowded_items(ds.items()))
    torch_q, served = QPolicy(q, side), BundlePolicy(load_bundle(path), "q")
    k = 4
    env = Env(build_world(preset("tiny")))
    obs = env.begin_day(day=3, users=np.arange(12))
    steps = 0
    while obs is not None and steps < 3:
        slate = torch_q.rank(obs, k)
        np.testing.assert_array_equal(served.rank(obs, k), slate)
        np.testing.assert_allclose(torch_q.last_scores, served.last_scores, rtol=0, atol=1e-5)
        fb = env.step(slate)
        torch_q.observe_feedback(obs, slate, fb)
        served.observe_feedback(obs, slate, fb)
        obs, steps = env.observe(), steps + 1
    assert steps == 3  # the third request reads a state carried over two requests
