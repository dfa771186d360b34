"""MMRF's rewards: the watch-time scale, saved with the model, and each agent's reward.

The feedback aspects are ``ASPECTS`` (click, like, follow, comment, hate, long_view: 0/1;
watch_time: seconds). The paper gives no scale for watch time; this project settles it:

- Model scale. Watch time ``w`` (seconds) becomes ``min(w / c, 1)`` with ``c`` the
  ``quantile`` (default 0.99) of watch time over the training split's impressions
  (:func:`fit_reward_scale`). On that scale every aspect is in ``[0, 1]``: M's watch-time
  head is a sigmoid trained by MSE, and the Bernoulli uncertainty ``KL((r, 1-r) || (r',
  1-r'))`` of Eq. 6, which needs ``r`` in ``[0, 1]``, is defined for every head. The cap
  clips the longest 1% of views, which would otherwise dominate the squared errors.
- Rewards. Agent ``i``'s reward is aspect ``i`` on the model scale, negated for hate (the
  hate agent minimises hate: the paper's Table 1 marks Hate with a down arrow).

The scale's statistics (``c``, mean, std, count, quantile) go into the checkpoint and the
run's ``reward_scale.json``; the bundle export will read them from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from training.mmrf.networks import ASPECTS

__all__ = [
    "BINARY",
    "REWARD_SIGN",
    "RewardScale",
    "aspect_rewards",
    "fit_reward_scale",
    "model_scale",
]

WATCH_TIME = ASPECTS.index("watch_time")
#: Which aspects are 0/1 (BCE in M) and which is continuous (MSE).
BINARY: tuple[bool, ...] = tuple(a != "watch_time" for a in ASPECTS)
#: Sign of each aspect in its agent's reward: hate is a cost.
REWARD_SIGN: tuple[float, ...] = tuple(-1.0 if a == "hate" else 1.0 for a in ASPECTS)


@dataclass(frozen=True)
class RewardScale:
    """Statistics of watch time (seconds) on the training split's impressions."""

    cap: float
    """``c``: watch time at ``quantile``; the model scale is ``min(w / c, 1)``."""
    quantile: float
    """Which quantile ``cap`` is."""
    mean: float
    """Mean watch time, seconds."""
    std: float
    """Standard deviation of watch time, seconds."""
    count: int
    """Impressions the statistics were computed on."""

    def __post_init__(self) -> None:
        if not self.cap > 0:
            raise ValueError(f"RewardScale cap={self.cap}: must be > 0 (no watch time at all?)")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RewardScale:
        return cls(**{k: d[k] for k in ("cap", "quantile", "mean", "std", "count")})


def fit_reward_scale(paths: Iterable[str | Path], quantile: float = 0.99) -> RewardScale:
    """Watch-time statistics of the impressions (``position >= 0``) of log shards ``paths``.

    Reads only the ``position`` and ``watch_time`` columns, one shard at a time. Raises
    ValueError when there are no impressions or ``quantile`` is outside ``(0, 1]``.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile={quantile} must be in (0, 1]")
    parts = []
    for p in paths:
        t = pq.read_table(p, columns=["position", "watch_time"])
        shown = t.filter(pc.greater_equal(t.column("position"), 0))
        parts.append(shown.column("watch_time").to_numpy(zero_copy_only=False).astype(np.float64))
    w = np.concatenate(parts) if parts else np.zeros(0)
    w = w[np.isfinite(w)]
    if w.size == 0:
        raise ValueError("fit_reward_scale: no impressions with a watch time")
    return RewardScale(
        cap=float(np.quantile(w, quantile)),
        quantile=float(quantile),
        mean=float(w.mean()),
        std=float(w.std()),
        count=int(w.size),
    )


def model_scale(feedback: torch.Tensor, scale: RewardScale) -> torch.Tensor:
    """Feedback ``(..., A)`` in log units -> the model scale: watch time ``min(w / c, 1)``,
    the 0/1 aspects unchanged. Every entry ends in ``[0, 1]``."""
    if feedback.shape[-1] != len(ASPECTS):
        raise ValueError(f"feedback {tuple(feedback.shape)}: last dim must be {len(ASPECTS)}")
    out = feedback.clone()
    out[..., WATCH_TIME] = (feedback[..., WATCH_TIME] / scale.cap).clamp(0.0, 1.0)
    return out


def aspect_rewards(feedback_model_scale: torch.Tensor) -> torch.Tensor:
    """Each agent's reward from model-scale feedback ``(..., A)``: the feedback, hate negated."""
    sign = torch.tensor(REWARD_SIGN, dtype=feedback_model_scale.dtype,
                        device=feedback_model_scale.device)  # fmt: skip
    return feedback_model_scale * sign
