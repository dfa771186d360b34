"""The feature spec: the fields every ranker reads, and the one featurisation of them.

Every field is categorical: an integer id in ``[0, size)`` that a model embeds. Numeric
attributes (durations, counts) are bucketised here, by the functions below, so that training
and serving produce identical ids from identical raw values. Id 0 is reserved for "unknown /
missing" in every field.

Four groups of fields (DESIGN.md, "Contracts"):

- ``user``: profile fields, read from the users side table by ``user_id``;
- ``context``: fields of the request (hour of day, index of the request in its session);
- ``item``: fields of a candidate, read from the items side table by ``item_id``;
- ``list``: cumulative list/session fields that depend on what was placed before the slot
  being filled (position, how many earlier items of the list share the tag or the author,
  how many recent impressions of the session share the tag, session depth and clicks).

The ``list`` fields are computed by :func:`list_fields`, which is written once, in numpy,
and used by the training data pipeline (vectorised over a batch) and by the service (one
request at a time). Hashed fields (``user_id``, ``item_id``, ``author_id``) map raw ids to
``1 + raw % (size - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Group = Literal["user", "context", "item", "list"]

SPEC_VERSION = "1"

#: Upper bucket edges (seconds) for item duration; bucket ids start at 1.
DURATION_EDGES_S: tuple[float, ...] = (7.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Upper bucket edges for session depth (impressions already shown in the session).
DEPTH_EDGES: tuple[float, ...] = (0, 10, 20, 40, 80, 160)
#: Upper bucket edges for clicks already made in the session.
CLICK_EDGES: tuple[float, ...] = (0, 2, 5, 10, 20, 40)
#: Upper bucket edges for the request's index in its session.
REQUEST_INDEX_EDGES: tuple[float, ...] = (0, 1, 2, 4, 8, 16)
#: How many of the session's most recent impressions count as "recent" for tag fatigue.
RECENT_WINDOW = 20
MAX_SAME_TAG_IN_LIST = 4
MAX_SAME_AUTHOR_IN_LIST = 2
MAX_RECENT_SAME_TAG = 8


@dataclass(frozen=True)
class Field:
    """One categorical feature field.

    Attributes:
        name: column name, unique across the spec.
        group: which group of inputs the field belongs to.
        size: number of ids (embedding rows); ids are in ``[0, size)`` with 0 = unknown.
        kind: ``vocab`` (a closed vocabulary), ``hash`` (raw ids hashed into ``size``) or
            ``bucket`` (a numeric value bucketised by an edge list).
    """

    name: str
    group: Group
    size: int
    kind: Literal["vocab", "hash", "bucket"] = "vocab"


@dataclass(frozen=True)
class FeatureSpec:
    """The ordered list of fields; the order is the column order of model inputs."""

    fields: tuple[Field, ...]
    version: str = SPEC_VERSION

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in feature spec: {names}")
        for f in self.fields:
            if f.size < 2:
                raise ValueError(f"field {f.name!r} has size {f.size}; need at least 2")

    def group(self, group: Group) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.group == group)

    def names(self, group: Group | None = None) -> list[str]:
        fs = self.fields if group is None else self.group(group)
        return [f.name for f in fs]

    def sizes(self, group: Group | None = None) -> list[int]:
        fs = self.fields if group is None else self.group(group)
        return [f.size for f in fs]

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "fields": [
                {"name": f.name, "group": f.group, "size": f.size, "kind": f.kind}
                for f in self.fields
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        try:
            fields = tuple(
                Field(x["name"], x["group"], int(x["size"]), x.get("kind", "vocab"))
                for x in d["fields"]
            )
            return cls(fields=fields, version=str(d["version"]))
        except KeyError as e:
            raise ValueError(f"feature spec dict is missing key {e}") from None

    def check_ids(self, ids: np.ndarray, group: Group | None = None) -> None:
        """Raise ValueError naming the first field whose ids fall outside ``[0, size)``."""
        sizes = np.asarray(self.sizes(group))
        names = self.names(group)
        if ids.shape[-1] != len(sizes):
            raise ValueError(f"expected {len(sizes)} fields in the last axis, got {ids.shape}")
        flat = ids.reshape(-1, len(sizes))
        bad = (flat < 0) | (flat >= sizes)
        if bad.any():
            j = int(np.argmax(bad.any(axis=0)))
            v = flat[bad[:, j], j][0]
            raise ValueError(f"field {names[j]!r}: id {int(v)} outside [0, {sizes[j]})")


USER_FIELDS = (
    Field("user_id", "user", 32768, "hash"),
    Field("u_active", "user", 10),
    Field("u_register", "user", 10),
    Field("u_follow", "user", 10),
    Field("u_fans", "user", 10),
    Field("u_friend", "user", 10),
    Field("u_seg_a", "user", 8),
    Field("u_seg_b", "user", 64),
)
CONTEXT_FIELDS = (
    Field("hour", "context", 25, "bucket"),
    Field("req_index", "context", len(REQUEST_INDEX_EDGES) + 2, "bucket"),
)
ITEM_FIELDS = (
    Field("item_id", "item", 16384, "hash"),
    Field("author_id", "item", 8192, "hash"),
    Field("tag", "item", 72),
    Field("duration", "item", len(DURATION_EDGES_S) + 2, "bucket"),
    Field("upload_type", "item", 12),
    Field("music_type", "item", 12),
)
LIST_FIELDS = (
    Field("position", "list", 33, "bucket"),
    Field("same_tag_in_list", "list", MAX_SAME_TAG_IN_LIST + 2, "bucket"),
    Field("same_author_in_list", "list", MAX_SAME_AUTHOR_IN_LIST + 2, "bucket"),
    Field("recent_same_tag", "list", MAX_RECENT_SAME_TAG + 2, "bucket"),
    Field("session_depth", "list", len(DEPTH_EDGES) + 2, "bucket"),
    Field("session_clicks", "list", len(CLICK_EDGES) + 2, "bucket"),
)

DEFAULT_SPEC = FeatureSpec(USER_FIELDS + CONTEXT_FIELDS + ITEM_FIELDS + LIST_FIELDS)

#: Columns of the items side table that the featurisation reads besides the item fields.
ITEM_TABLE_COLUMNS = ("item_id", "author_raw", "tag", "duration_s", "upload_type", "music_type")
#: Columns of the users side table.
USER_TABLE_COLUMNS = ("user_id",) + tuple(f.name for f in USER_FIELDS[1:])


def hash_ids(raw: np.ndarray, size: int) -> np.ndarray:
    """Map raw non-negative ids to ``[1, size)``: ``1 + raw % (size - 1)``; negatives -> 0."""
    raw = np.asarray(raw, dtype=np.int64)
    out = 1 + np.mod(raw, size - 1)
    return np.where(raw < 0, 0, out)


def bucketise(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Bucket ids for values ``x`` given ascending upper edges: ``1 + #{edges < x}``.

    ``x <= edges[0]`` -> 1, ``x > edges[-1]`` -> ``len(edges) + 1``; NaN -> 0 (unknown).
    """
    x = np.asarray(x, dtype=np.float64)
    ids = 1 + np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left")
    return np.where(np.isnan(x), 0, ids).astype(np.int64)


def hour_of_day(timestamp_ms: np.ndarray) -> np.ndarray:
    """Context field ``hour``: 1 + UTC hour of an epoch-millisecond timestamp."""
    ts = np.asarray(timestamp_ms, dtype=np.int64)
    return 1 + (ts // 3_600_000) % 24


def context_fields(timestamp_ms: np.ndarray, request_index: np.ndarray) -> np.ndarray:
    """Context ids, shape ``(..., 2)``: hour of day and bucketised request index."""
    return np.stack(
        [hour_of_day(timestamp_ms), bucketise(request_index, REQUEST_INDEX_EDGES)], axis=-1
    )


def item_fields(
    item_id: np.ndarray,
    author_raw: np.ndarray,
    tag: np.ndarray,
    duration_s: np.ndarray,
    upload_type: np.ndarray,
    music_type: np.ndarray,
) -> np.ndarray:
    """Item ids, shape ``(..., 6)``, from the raw columns of the items side table."""
    sizes = {f.name: f.size for f in ITEM_FIELDS}
    return np.stack(
        [
            hash_ids(item_id, sizes["item_id"]),
            hash_ids(author_raw, sizes["author_id"]),
            np.clip(np.asarray(tag, dtype=np.int64), 0, sizes["tag"] - 1),
            bucketise(duration_s, DURATION_EDGES_S),
            np.clip(np.asarray(upload_type, dtype=np.int64), 0, sizes["upload_type"] - 1),
            np.clip(np.asarray(music_type, dtype=np.int64), 0, sizes["music_type"] - 1),
        ],
        axis=-1,
    )


def list_fields(
    position: np.ndarray,
    same_tag_in_list: np.ndarray,
    same_author_in_list: np.ndarray,
    recent_same_tag: np.ndarray,
    session_depth: np.ndarray,
    session_clicks: np.ndarray,
) -> np.ndarray:
    """Cumulative list/session ids, shape ``(..., 6)``, from raw counts.

    Args (all broadcastable integer arrays):
        position: 0-based slot being filled.
        same_tag_in_list: earlier items of this list with the candidate's tag.
        same_author_in_list: earlier items of this list by the candidate's author.
        recent_same_tag: the session's last ``RECENT_WINDOW`` impressions (before this
            request) with the candidate's tag.
        session_depth: impressions shown in the session before this request.
        session_clicks: clicks in the session before this request.
    """
    p = np.asarray(position, dtype=np.int64)
    arrays = np.broadcast_arrays(
        1 + np.clip(p, 0, 31),
        1 + np.clip(np.asarray(same_tag_in_list, dtype=np.int64), 0, MAX_SAME_TAG_IN_LIST),
        1 + np.clip(np.asarray(same_author_in_list, dtype=np.int64), 0, MAX_SAME_AUTHOR_IN_LIST),
        1 + np.clip(np.asarray(recent_same_tag, dtype=np.int64), 0, MAX_RECENT_SAME_TAG),
        bucketise(session_depth, DEPTH_EDGES),
        bucketise(session_clicks, CLICK_EDGES),
    )
    return np.stack(arrays, axis=-1)


def prefix_counts(keys: np.ndarray) -> np.ndarray:
    """For a list of keys (..., K) in slot order, how many earlier slots share each key.

    ``out[..., k] = #{j < k : keys[..., j] == keys[..., k]}``. Used for ``same_tag_in_list``
    and ``same_author_in_list`` of the items actually placed.
    """
    keys = np.asarray(keys)
    eq = keys[..., :, None] == keys[..., None, :]  # (..., K, K): [k, j]
    k = keys.shape[-1]
    earlier = np.tril(np.ones((k, k), dtype=bool), -1)
    return (eq & earlier).sum(-1)


def candidate_prefix_counts(
    cand_keys: np.ndarray, placed_keys: np.ndarray, n_placed: int | np.ndarray
) -> np.ndarray:
    """How many of the first ``n_placed`` placed items share each candidate's key.

    Args:
        cand_keys: ``(..., C)`` keys (tag or author) of candidates.
        placed_keys: ``(..., K)`` keys of the items placed so far, in slot order.
        n_placed: how many leading entries of ``placed_keys`` count (scalar or ``(...)``).

    Returns ``(..., C)`` counts.
    """
    placed_keys = np.asarray(placed_keys)
    k = placed_keys.shape[-1]
    valid = np.arange(k) < np.asarray(n_placed)[..., None]
    eq = (np.asarray(cand_keys)[..., :, None] == placed_keys[..., None, :]) & valid[..., None, :]
    return eq.sum(-1)
