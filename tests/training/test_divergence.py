"""training.divergence: the finite checks that stop a diverged run, and their messages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.divergence import (
    DivergenceError,
    check_finite,
    check_finite_parameters,
    watched,
)


def test_check_finite_passes_finite_values_and_tensors():
    check_finite({"losses/td": 0.5, "losses/kl": torch.tensor(1e30), "n": -3}, step=1)


def test_check_finite_names_the_step_and_every_non_finite_term():
    with pytest.raises(DivergenceError) as e:
        check_finite({"losses/td": 0.5, "losses/kl": math.nan, "losses/hint": torch.tensor(
            -math.inf)}, step=7, what="drl-rec")  # fmt: skip
    err = e.value
    assert isinstance(err, RuntimeError)
    assert err.step == 7
    assert list(err.values) == ["losses/kl", "losses/hint"]
    assert math.isnan(err.values["losses/kl"]) and err.values["losses/hint"] == -math.inf
    msg = str(err)
    assert msg.startswith("drl-rec diverged at step 7: non-finite losses/kl=nan, losses/hint=-inf")
    assert "losses/td" not in msg and "\n" not in msg


def test_watched_keeps_loss_terms_and_gradient_norms():
    m = {"losses/critic": 1.0, "charts/grad_norm_actor": 2.0, "charts/grad_norm": 3.0,
         "charts/q": math.nan, "charts/sps": 10.0}  # fmt: skip
    assert watched(m) == {"losses/critic": 1.0, "charts/grad_norm_actor": 2.0,
                          "charts/grad_norm": 3.0}  # fmt: skip


def test_check_finite_parameters_names_module_and_parameter():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    check_finite_parameters({"model": net}, step=4)
    with torch.no_grad():
        net[0].bias[1] = math.inf
    with pytest.raises(DivergenceError, match=r"step 4: non-finite model\.0\.bias=inf"):
        check_finite_parameters({"model": net}, step=4)
    with torch.no_grad():
        net[0].bias[1] = 0.0
    net[1].running_mean[0] = math.nan  # buffers count too
    with pytest.raises(DivergenceError, match=r"model\.1\.running_mean=nan"):
        check_finite_parameters({"model": net}, step=4)
