"""The world's population and catalogue, and the response model as pure functions.

A user has a base interest vector ``z`` (unit norm, ``latent_dim``), a click bias, a patience
and per-aspect propensities; an item has a topic (its tag), a unit vector ``v`` near its
topic's centre, a quality, a popularity, a clickbait flag, an author and a duration. Observable
attributes (the side tables) are correlated with the latent ones, so features carry signal:
users' segments shape their interests, items' tags and authors shape theirs.

Response model for an impression of item i at slot k (0-based) for a user with current
interest x (see :class:`~training.sim.config.WorldConfig` for the parameters):

    appeal   = c0 + w_a x.v_i + c_u + pop_i + cb_a b_i
               - f_tag n_tag_before - f_auth n_auth_before - f_x E[tag_i]
    P(click) = e_k sigmoid(appeal),          e_k = (k + 1) ** -pb   (1 without position bias)
    sigma    = s0 + w_q q_i + w_s x.v_i - cb_s b_i + noise        (satisfaction logit)
    watch    = d_i sigmoid(sigma - w_d log(d_i / 30))   if clicked (at least min(d_i, 7) s)
    like, comment, follow | click ~ Bernoulli(sigmoid(intercept + slope sigma + user bias))
    hate ~ Bernoulli(sigmoid(h0 - 1.5 sigma + 1.5 b_i + user bias))

``click`` follows KuaiRand's definition (a valid play: watch >= min(duration, 7 s)) and
``long_view`` likewise with 18 s. The shared noise in ``sigma`` correlates the aspects.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from contract.schema import ITEM_TABLE_SCHEMA, USER_TABLE_SCHEMA
from training.sim.config import ConfigError, WorldConfig

KUAIRAND_USERS = "user_features_pure.csv"
KUAIRAND_VIDEOS = "video_features_basic_pure.csv"

#: KuaiRand-Pure's vocabularies as user and item field ids: the KuaiRand world here and the
#: KuaiRand converter (:mod:`training.data.kuairand`) both map the CSVs with these, so a user
#: or a video gets the same ids from either. A value not listed gets the ``*_OTHER`` id.
ACTIVE_DEGREE_IDS = {
    "UNKNOWN": 1, "day_new": 2, "2_14_day_new": 3, "30day_retention": 4,
    "single_low_active": 5, "low_active": 6, "middle_active": 7, "high_active": 8,
    "full_active": 9,
}  # fmt: skip
ACTIVE_DEGREE_OTHER = 1
REGISTER_DAYS_IDS = {
    "8-14": 1, "15-30": 2, "31-60": 3, "61-90": 4, "91-180": 5,
    "181-365": 6, "366-730": 7, "730+": 8,
}  # fmt: skip
REGISTER_DAYS_OTHER = 9
UPLOAD_TYPE_IDS = {"LongImport": 1, "Web": 2, "ShortImport": 3, "Kmovie": 4, "LongPicture": 5}
UPLOAD_TYPE_OTHER = 6
#: User segments: ``u_seg_a = 1 + min(onehot_feat1, N_SEG_A - 1)``, likewise ``u_seg_b``.
N_SEG_A, N_SEG_B = 7, 50
#: Probability of a session on a given day, by u_active id (busier users come back more).
_ACTIVITY_BY_ACTIVE = np.array([0.5, 0.3, 0.3, 0.4, 0.35, 0.2, 0.3, 0.45, 0.6, 0.75])


@dataclass
class World:
    """Static arrays of one world. Item and user *indices* are 0-based positions here; the
    ids written to logs are ``item_id[index]`` and ``user_id[index]``."""

    cfg: WorldConfig
    topic_centres: np.ndarray  # (T, D)
    # items
    item_id: np.ndarray  # (N,) int64
    item_topic: np.ndarray  # (N,) int64 in [0, T)
    item_tag: np.ndarray  # (N,) int64 tag id written to the side table
    item_author: np.ndarray  # (N,) int64 raw author id
    item_duration: np.ndarray  # (N,) float64 seconds
    item_upload: np.ndarray  # (N,) int64
    item_music: np.ndarray  # (N,) int64
    item_vec: np.ndarray  # (N, D) float64 unit vectors
    item_quality: np.ndarray  # (N,)
    item_pop: np.ndarray  # (N,)
    item_clickbait: np.ndarray  # (N,) 0/1 float
    item_author_appeal: np.ndarray  # (N,) follow-ability of the author
    # users
    user_id: np.ndarray  # (U,) int64
    user_fields: np.ndarray  # (U, 7) int64 categorical profile (side table)
    user_z: np.ndarray  # (U, D) unit base interest
    user_click_bias: np.ndarray
    user_patience: np.ndarray  # added to the leave logit (negative = patient)
    user_like_bias: np.ndarray
    user_comment_bias: np.ndarray
    user_follow_bias: np.ndarray
    user_hate_bias: np.ndarray
    user_activity: np.ndarray  # (U,) probability of a session per day
    # retrieval index: items grouped by topic
    topic_order: np.ndarray  # (N,) item indices sorted by topic, shuffled within topic
    topic_start: np.ndarray  # (T,)
    topic_size: np.ndarray  # (T,)

    @property
    def n_users(self) -> int:
        return int(self.user_id.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def n_topics(self) -> int:
        return int(self.topic_centres.shape[0])

    def users_table(self) -> pa.Table:
        cols = {"user_id": self.user_id}
        for j, f in enumerate(USER_TABLE_SCHEMA.names[1:]):
            cols[f] = self.user_fields[:, j]
        return pa.table(cols, schema=USER_TABLE_SCHEMA)

    def items_table(self) -> pa.Table:
        return pa.table(
            {
                "item_id": self.item_id,
                "author_raw": self.item_author,
                "tag": self.item_tag,
                "duration_s": self.item_duration,
                "upload_type": self.item_upload,
                "music_type": self.item_music,
            },
            schema=ITEM_TABLE_SCHEMA,
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise ConfigError(f"kuairand_dir: {path} not found (set kuairand=false or kuairand_dir)")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _int(s: str, default: int = 0) -> int:
    try:
        return int(float(s))
    except ValueError:
        return default


def build_world(cfg: WorldConfig) -> World:
    """Build the static world from its config (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng([cfg.seed, 7])
    d = cfg.latent_dim
    mech = cfg.mechanisms

    # ---- catalogue ----
    if cfg.kuairand:
        rows = _read_csv(Path(cfg.kuairand_dir) / KUAIRAND_VIDEOS)
        if cfg.n_items > len(rows):
            raise ConfigError(
                f"world config n_items={cfg.n_items}: KuaiRand-Pure has {len(rows)} videos"
            )
        pick = np.sort(rng.choice(len(rows), size=cfg.n_items, replace=False))
        rows = [rows[i] for i in pick]
        item_id = np.array([_int(r["video_id"]) for r in rows], dtype=np.int64)
        tag = np.array([_int(r["tag"].split(",")[0], 0) for r in rows], dtype=np.int64)
        author = np.array([_int(r["author_id"]) for r in rows], dtype=np.int64)
        dur = np.array([_int(r["video_duration"]) / 1000.0 for r in rows])
        dur = np.where(dur > 0, dur, np.median(dur[dur > 0]))
        upload = np.array(
            [UPLOAD_TYPE_IDS.get(r["upload_type"], UPLOAD_TYPE_OTHER) for r in rows],
            dtype=np.int64,
        )
        music = np.array([_int(r["music_type"], 0) for r in rows], dtype=np.int64)
        tags_present = np.unique(tag)
        topic = np.searchsorted(tags_present, tag)
        n_topics = len(tags_present)
    else:
        n_topics = cfg.n_topics
        weights = rng.dirichlet(np.full(n_topics, 0.8))
        topic = rng.choice(n_topics, size=cfg.n_items, p=weights)
        tag = topic + 1
        item_id = np.arange(cfg.n_items, dtype=np.int64)
        n_authors = max(1, cfg.n_items // 3)
        author = rng.integers(0, n_authors, size=cfg.n_items) * 7919 + 11
        dur = np.exp(rng.normal(np.log(60.0), 0.9, size=cfg.n_items)).clip(3, 1200)
        upload = rng.integers(1, 6, size=cfg.n_items)
        music = rng.choice([4, 7, 8, 9], p=[0.1, 0.02, 0.03, 0.85], size=cfg.n_items)

    n = len(item_id)
    centres = _unit(rng.normal(size=(n_topics, d)))
    # Authors have a style: items of one author sit near each other inside their topic.
    _, author_idx = np.unique(author, return_inverse=True)
    author_style = rng.normal(size=(author_idx.max() + 1, d))
    author_appeal = rng.normal(0.0, 0.8, size=author_idx.max() + 1)[author_idx]
    vec = _unit(
        centres[topic] * 2.2 + 0.55 * author_style[author_idx] + 0.45 * rng.normal(size=(n, d))
    )
    quality = rng.normal(0.0, 1.0, size=n)
    pop = rng.normal(0.0, cfg.popularity_sd, size=n)
    # Drawn whether or not the mechanism is on, so switching it off changes nothing else.
    clickbait = (rng.random(n) < cfg.clickbait_fraction).astype(np.float64)
    clickbait *= float(mech.clickbait)

    # ---- population ----
    n_seg_a, n_seg_b = N_SEG_A, N_SEG_B
    seg_a_pref = rng.normal(size=(n_seg_a + 1, n_topics)) * 1.2
    seg_b_pref = rng.normal(size=(n_seg_b + 1, n_topics)) * 1.0
    if cfg.kuairand:
        urows = _read_csv(Path(cfg.kuairand_dir) / KUAIRAND_USERS)
        if cfg.n_users > len(urows):
            raise ConfigError(
                f"world config n_users={cfg.n_users}: KuaiRand-Pure has {len(urows)} users"
            )
        # The range vocabularies come from the whole file, so ids do not depend on the sample.
        range_maps: dict[str, dict[str, int]] = {}
        for col in ("follow_user_num_range", "fans_user_num_range", "friend_user_num_range"):
            vals = sorted({r[col] for r in urows})
            range_maps[col] = {v: i + 1 for i, v in enumerate(vals)}
        upick = np.sort(rng.choice(len(urows), size=cfg.n_users, replace=False))
        urows = [urows[i] for i in upick]
        user_id = np.array([_int(r["user_id"]) for r in urows], dtype=np.int64)
        fields = np.array(
            [
                [
                    ACTIVE_DEGREE_IDS.get(r["user_active_degree"], ACTIVE_DEGREE_OTHER),
                    REGISTER_DAYS_IDS.get(r["register_days_range"], REGISTER_DAYS_OTHER),
                    range_maps["follow_user_num_range"][r["follow_user_num_range"]],
                    range_maps["fans_user_num_range"][r["fans_user_num_range"]],
                    range_maps["friend_user_num_range"][r["friend_user_num_range"]],
                    1 + min(_int(r["onehot_feat1"]), n_seg_a - 1),
                    1 + min(_int(r["onehot_feat2"]), n_seg_b - 1),
                ]
                for r in urows
            ],
            dtype=np.int64,
        )
    else:
        u = cfg.n_users
        user_id = np.arange(u, dtype=np.int64)
        fields = np.stack(
            [
                rng.choice(
                    np.arange(1, 10),
                    p=_ACTIVITY_BY_ACTIVE[1:] / _ACTIVITY_BY_ACTIVE[1:].sum(),
                    size=u,
                ),
                rng.integers(1, 9, size=u),
                rng.integers(1, 9, size=u),
                rng.integers(1, 10, size=u),
                rng.integers(1, 8, size=u),
                rng.integers(1, n_seg_a + 1, size=u),
                rng.integers(1, n_seg_b + 1, size=u),
            ],
            axis=1,
        ).astype(np.int64)

    n_u = len(user_id)
    topic_logits = (
        seg_a_pref[fields[:, 5]] + seg_b_pref[fields[:, 6]] + rng.gumbel(size=(n_u, n_topics)) * 1.3
    )
    top3 = np.argsort(-topic_logits, axis=1)[:, :3]
    w3 = rng.dirichlet([3.0, 2.0, 1.0], size=n_u)
    z = _unit(np.einsum("uk,ukd->ud", w3, centres[top3]) + 0.25 * rng.normal(size=(n_u, d)))
    het = 1.0 if mech.heterogeneous else 0.0
    activity = _ACTIVITY_BY_ACTIVE[fields[:, 0]]
    patience = het * (rng.normal(0.0, 0.5, size=n_u) - 0.15 * (fields[:, 0] - 7))

    order = np.lexsort((rng.random(n), topic))
    size = np.bincount(topic, minlength=n_topics)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    return World(
        cfg=cfg,
        topic_centres=centres,
        item_id=item_id,
        item_topic=topic.astype(np.int64),
        item_tag=tag,
        item_author=author,
        item_duration=dur.astype(np.float64),
        item_upload=upload,
        item_music=music,
        item_vec=vec,
        item_quality=quality,
        item_pop=pop,
        item_clickbait=clickbait,
        item_author_appeal=author_appeal,
        user_id=user_id,
        user_fields=fields,
        user_z=z,
        user_click_bias=het * rng.normal(0.0, 0.5, size=n_u),
        user_patience=patience,
        user_like_bias=het * rng.normal(0.0, 0.7, size=n_u),
        user_comment_bias=het * rng.normal(0.0, 0.7, size=n_u),
        user_follow_bias=het * rng.normal(0.0, 0.7, size=n_u),
        user_hate_bias=het * rng.normal(0.0, 0.7, size=n_u),
        user_activity=activity,
        topic_order=order.astype(np.int64),
        topic_start=start.astype(np.int64),
        topic_size=size.astype(np.int64),
    )


# ---------------------------------------------------------------------------------------
# Pure response functions. Shapes: B sessions, K (or C) items per session, D latent dims.


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def examination(position: np.ndarray, power: float, enabled: bool) -> np.ndarray:
    """Probability that slot ``position`` (0-based) is examined: ``(position + 1) ** -power``."""
    position = np.asarray(position, dtype=np.float64)
    if not enabled:
        return np.ones_like(position)
    return (position + 1.0) ** (-power)


def affinity(x: np.ndarray, item_vec: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``x_b . v_i`` for items ``(B, K)`` given interests ``x`` ``(B, D)``; in [-1, 1]."""
    return np.einsum("bd,bkd->bk", x, item_vec[items])


def appeal_logit(
    w: World,
    aff: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    same_tag_before: np.ndarray | float,
    same_author_before: np.ndarray | float,
    recent_tag_load: np.ndarray | float,
) -> np.ndarray:
    """Click logit before examination, ``(B, K)``; see the module docstring."""
    c, m = w.cfg, w.cfg.mechanisms
    logit = (
        c.click_intercept
        + c.affinity_weight * aff
        + w.user_click_bias[users][:, None]
        + w.item_pop[items]
        + c.clickbait_appeal * w.item_clickbait[items]
    )
    if m.fatigue_list:
        logit = (
            logit
            - c.fatigue_list_tag * same_tag_before
            - c.fatigue_list_author * same_author_before
        )
    if m.fatigue_cross:
        logit = logit - c.fatigue_cross * recent_tag_load
    return logit


def satisfaction_logit_mean(w: World, aff: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mean satisfaction logit ``sigma`` (without noise), ``(B, K)``."""
    c = w.cfg
    return (
        c.sat_intercept
        + c.quality_weight * w.item_quality[items]
        + c.sat_affinity_weight * aff
        - c.clickbait_satisfaction * w.item_clickbait[items]
    )


#: Standard deviation of the satisfaction noise (individual + mood), used for expectations.
SAT_NOISE_SD = 0.7


def smoothed_sigmoid(mean: np.ndarray, sd: float) -> np.ndarray:
    """E[sigmoid(mean + sd * N(0,1))], probit approximation: sigmoid(m / sqrt(1 + pi sd^2 / 8))."""
    return sigmoid(mean / np.sqrt(1.0 + np.pi * sd * sd / 8.0))


def watch_fraction_logit(w: World, sigma: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Logit of the fraction of an item watched once clicked; longer items, smaller fraction."""
    return sigma - w.cfg.duration_weight * np.log(w.item_duration[items] / 30.0)


def aspect_logits(
    w: World, sigma: np.ndarray, users: np.ndarray, items: np.ndarray
) -> dict[str, np.ndarray]:
    """Logits of like/comment/follow (given a click) and hate (given an impression)."""
    c = w.cfg
    return {
        "like": c.like_intercept + 1.5 * sigma + w.user_like_bias[users][:, None],
        "comment": c.comment_intercept + 1.2 * sigma + w.user_comment_bias[users][:, None],
        "follow": c.follow_intercept
        + 1.0 * sigma
        + w.user_follow_bias[users][:, None]
        + w.item_author_appeal[items],
        "hate": c.hate_intercept
        - 1.5 * sigma
        + 1.5 * w.item_clickbait[items]
        + w.user_hate_bias[users][:, None],
    }
