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

A dataset carries the spec it was built with (``dataset.json`` key ``feature_spec``, the dict
of :meth:`FeatureSpec.to_dict`), and a bundle carries its run's: a spec may declare user and
item fields beyond :data:`DEFAULT_SPEC`'s (:func:`extend_spec`), built from the data by
:func:`category_field` (a vocabulary stored in the spec), :func:`hashed_field` and
:func:`bucket_field` (quantile edges). Every model, trainer and the list builder size their
inputs from the spec they are given, never from :data:`DEFAULT_SPEC`. A raw value outside a
field's vocabulary gets the unknown id 0 (never a neighbouring id); :func:`unknown_counts`
counts them.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


Kind = Literal["vocab", "hash", "bucket", "count", "hour", "category"]
KINDS: tuple[str, ...] = ("vocab", "hash", "bucket", "count", "hour", "category")
#: The groups in the order every model reads them (user, context, item, list).
GROUP_ORDER: tuple[str, ...] = ("user", "context", "item", "list")


def _check_vocab(name: str, vocab: Iterable[Any]) -> tuple[int | str, ...]:
    """A field's vocabulary as a tuple of distinct Python ints or of distinct strings.

    Raises ValueError naming the field for mixed types, floats, bools, None or repeats."""
    out: list[int | str] = []
    for v in vocab:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, str)):
            raise ValueError(
                f"field {name!r}: vocabulary values are ints or strings, got {v!r} "
                f"({type(v).__name__})"
            )
        out.append(v if isinstance(v, str) else int(v))
    if out and len({type(v) for v in out}) > 1:
        raise ValueError(f"field {name!r}: vocabulary mixes ints and strings ({out[:5]}...)")
    if len(set(out)) != len(out):
        dup = next(v for v, c in Counter(out).items() if c > 1)
        raise ValueError(f"field {name!r}: vocabulary repeats the value {dup!r}")
    return tuple(out)


@dataclass(frozen=True)
class Field:
    """One categorical feature field and its featurisation rule.

    Attributes:
        name: column name, unique across the spec.
        group: which group of inputs the field belongs to.
        size: number of ids (embedding rows); ids are in ``[0, size)`` with 0 = unknown.
        kind: how a raw value becomes an id (:func:`field_ids`): ``vocab`` (small dense
            integer codes: ``raw`` itself for ``0 <= raw < size``, 0 outside), ``category``
            (``1 +`` the value's index in ``vocab``, 0 outside it), ``hash``
            (``1 + raw % (size - 1)``), ``bucket`` (``1 + #{edges < x}`` over ``edges``),
            ``count`` (a count capped at ``size - 2``, plus 1) or ``hour`` (``1 +`` the UTC
            hour of an epoch-ms timestamp).
        edges: ascending upper bucket edges; ``bucket`` fields only, ``size == len(edges) + 2``.
        source: the raw input the field reads (a side-table column or a request/list
            counter); defaults to ``name``.
        vocab: the raw values of a ``category`` field (all int or all str, distinct), in id
            order: ``vocab[i]`` has id ``i + 1``; ``size == len(vocab) + 1``. Built from the
            data by :func:`category_field` and stored in the spec.
    """

    name: str
    group: Group
    size: int
    kind: Kind = "vocab"
    edges: tuple[float, ...] = ()
    source: str = ""
    vocab: tuple[int | str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        if not self.source:
            object.__setattr__(self, "source", self.name)
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.group not in GROUP_ORDER:
            raise ValueError(f"field {self.name!r}: group {self.group!r} not one of {GROUP_ORDER}")
        object.__setattr__(self, "vocab", _check_vocab(self.name, self.vocab))
        if self.kind == "category":
            if self.size != len(self.vocab) + 1:
                raise ValueError(
                    f"field {self.name!r}: size {self.size} != len(vocab) + 1 = "
                    f"{len(self.vocab) + 1}"
                )
        elif self.vocab:
            raise ValueError(
                f"field {self.name!r}: a vocab is for category fields, kind {self.kind!r}"
            )
        if self.kind == "bucket":
            if list(self.edges) != sorted(self.edges) or not self.edges:
                raise ValueError(f"field {self.name!r}: edges {self.edges} must ascend")
            if self.size != len(self.edges) + 2:
                raise ValueError(
                    f"field {self.name!r}: size {self.size} != len(edges) + 2 = "
                    f"{len(self.edges) + 2}"
                )
        elif self.edges:
            raise ValueError(
                f"field {self.name!r}: edges are for bucket fields, kind {self.kind!r}"
            )
        if self.kind == "hour" and self.size != 25:
            raise ValueError(f"field {self.name!r}: an hour field has size 25, not {self.size}")


@dataclass(frozen=True)
class FeatureSpec:
    """The ordered list of fields; the order is the column order of model inputs."""

    fields: tuple[Field, ...]
    version: str = SPEC_VERSION
    recent_window: int = RECENT_WINDOW
    """List-field rule: how many of the session's latest impressions ``recent_same_tag`` reads."""

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in feature spec: {names}")
        for f in self.fields:
            if f.size < 2:
                raise ValueError(f"field {f.name!r} has size {f.size}; need at least 2")
        if self.recent_window < 1:
            raise ValueError(f"recent_window={self.recent_window} must be >= 1")

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

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"feature spec {self.version} has no field {name!r}")

    def to_dict(self) -> dict:
        """A JSON-ready dict with every rule; :meth:`from_dict` inverts it exactly.

        Only ``category`` fields carry a ``vocab`` key, so the dicts of specs without them
        (:data:`DEFAULT_SPEC`'s, in every committed bundle) are what they always were."""
        return {
            "version": self.version,
            "recent_window": self.recent_window,
            "fields": [
                {
                    "name": f.name,
                    "group": f.group,
                    "size": f.size,
                    "kind": f.kind,
                    "edges": list(f.edges),
                    "source": f.source,
                    **({"vocab": list(f.vocab)} if f.kind == "category" else {}),
                }
                for f in self.fields
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        """Raises ValueError naming the missing key or the bad field."""
        try:
            fields = tuple(
                Field(
                    str(x["name"]),
                    x["group"],
                    int(x["size"]),
                    x.get("kind", "vocab"),
                    tuple(x.get("edges", ())),
                    str(x.get("source", "")),
                    tuple(x.get("vocab", ())),
                )
                for x in d["fields"]
            )
            return cls(
                fields=fields,
                version=str(d["version"]),
                recent_window=int(d.get("recent_window", RECENT_WINDOW)),
            )
        except KeyError as e:
            raise ValueError(f"feature spec dict is missing key {e}") from None
        except TypeError as e:
            raise ValueError(f"feature spec dict is malformed: {e}") from None

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
    Field("hour", "context", 25, "hour", source="timestamp"),
    Field(
        "req_index",
        "context",
        len(REQUEST_INDEX_EDGES) + 2,
        "bucket",
        REQUEST_INDEX_EDGES,
        source="request_index",
    ),  # fmt: skip
)
ITEM_FIELDS = (
    Field("item_id", "item", 16384, "hash"),
    Field("author_id", "item", 8192, "hash", source="author_raw"),
    Field("tag", "item", 72),
    Field(
        "duration",
        "item",
        len(DURATION_EDGES_S) + 2,
        "bucket",
        DURATION_EDGES_S,
        source="duration_s",
    ),  # fmt: skip
    Field("upload_type", "item", 12),
    Field("music_type", "item", 12),
)
LIST_FIELDS = (
    Field("position", "list", 33, "count"),
    Field("same_tag_in_list", "list", MAX_SAME_TAG_IN_LIST + 2, "count"),
    Field("same_author_in_list", "list", MAX_SAME_AUTHOR_IN_LIST + 2, "count"),
    Field("recent_same_tag", "list", MAX_RECENT_SAME_TAG + 2, "count"),
    Field("session_depth", "list", len(DEPTH_EDGES) + 2, "bucket", DEPTH_EDGES),
    Field("session_clicks", "list", len(CLICK_EDGES) + 2, "bucket", CLICK_EDGES),
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


def str_hash(raw: np.ndarray) -> np.ndarray:
    """A stable non-negative int64 of each string (CRC-32 of its UTF-8 bytes); -1 for a
    value that is not a string (None, NaN), which :func:`hash_ids` maps to unknown.

    Python's ``hash`` of a string changes between processes; CRC-32 does not, so training
    and serving hash a string field to the same id."""
    flat = np.asarray(raw, dtype=object).ravel()
    out = np.fromiter(
        (zlib.crc32(v.encode("utf-8")) if isinstance(v, str) else -1 for v in flat),
        dtype=np.int64,
        count=len(flat),
    )
    return out.reshape(np.shape(raw))


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


def _is_str_array(x: np.ndarray) -> bool:
    """Whether an array holds strings: a unicode array, or an object array whose first
    non-missing value is a string."""
    if x.dtype.kind == "U":
        return True
    if x.dtype.kind != "O":
        return False
    for v in x.ravel():
        if not _missing(v):
            return isinstance(v, str)
    return False


def _missing(v: Any) -> bool:
    """None or a float NaN: a missing value (its id is 0), not a wrong type."""
    return v is None or (isinstance(v, float) and v != v)


def _as_int(raw: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)``: int64 values of a numeric array and where they are whole numbers
    (NaN, None and fractional values are not). Raises ValueError for strings."""
    x = np.asarray(raw)
    if x.dtype.kind in "iu":
        return x.astype(np.int64, copy=False), np.ones(x.shape, dtype=bool)
    if x.dtype.kind == "b":
        return x.astype(np.int64), np.ones(x.shape, dtype=bool)
    if x.dtype.kind in "UO" and _is_str_array(x):
        raise ValueError(
            f"field {name!r}: integer codes expected, got strings (e.g. {x.ravel()[0]!r})"
        )
    f = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2.0**62)
    return np.where(ok, f, 0).astype(np.int64), ok


def category_ids(vocab: Sequence[int | str], raw: np.ndarray, name: str = "") -> np.ndarray:
    """Ids of raw values in a vocabulary: ``1 + index`` of the value in ``vocab``, 0 for
    anything else (a value never seen, None, NaN, a fractional number). int64, the shape of
    ``raw``. An int vocabulary matches ints and whole floats; a str vocabulary matches strings.
    Raises ValueError when the raw values are strings and the vocabulary ints, or the reverse.
    """
    x = np.asarray(raw)
    out = np.zeros(x.shape, dtype=np.int64)
    if not len(vocab) or x.size == 0:
        return out
    v = np.asarray(list(vocab))
    order = np.argsort(v, kind="stable")
    sv = v[order]
    if isinstance(vocab[0], str):
        if x.dtype.kind == "U":
            keys, ok = x, np.ones(x.shape, dtype=bool)
        else:
            if x.dtype.kind == "O":
                ok = np.fromiter((isinstance(e, str) for e in x.ravel()), bool, x.size)
                ok = ok.reshape(x.shape)
                other = [e for e in x.ravel()[~ok.ravel()] if not _missing(e)]
            else:
                other = [x.ravel()[0]]
            if other:
                raise ValueError(
                    f"field {name!r}: its vocabulary holds strings, the raw values are "
                    f"{x.dtype} (e.g. {other[0]!r})"
                )
            keys = np.where(ok, x, "").astype(str)
    else:
        keys, ok = _as_int(x, name)
    pos = np.minimum(np.searchsorted(sv, keys), len(sv) - 1)
    hit = ok & (sv[pos] == keys)
    out[hit] = 1 + order[pos[hit]]
    return out


def field_ids(field: Field, raw: np.ndarray) -> np.ndarray:
    """Ids of one field from its raw values (any shape), by the field's ``kind``.

    ``vocab``: ``raw`` itself where ``0 <= raw < size``, 0 (unknown) outside, never clipped
    onto a neighbouring id; ``category``: :func:`category_ids` over ``field.vocab``;
    ``hash``: :func:`hash_ids` (strings first through :func:`str_hash`); ``bucket``:
    :func:`bucketise` over ``field.edges``; ``count``: ``1 + clip(raw, 0, size - 2)`` (a cap:
    every count above it is "that many or more"); ``hour``: :func:`hour_of_day` of epoch
    milliseconds. Returns int64, same shape as ``raw``. Raises ValueError when a field of
    integer codes is given strings, or a vocabulary's type differs from the values'.
    """
    if field.kind == "category":
        return category_ids(field.vocab, raw, field.name)
    if field.kind == "hash":
        x = np.asarray(raw)
        if x.dtype.kind in "UO" and _is_str_array(x):
            return hash_ids(str_hash(x), field.size)
        if x.dtype.kind in "iu":
            return hash_ids(x, field.size)
        vals, ok = _as_int(x, field.name)
        return np.where(ok, hash_ids(vals, field.size), 0)
    if field.kind == "bucket":
        return bucketise(raw, field.edges)
    if field.kind == "hour":
        return hour_of_day(raw)
    if field.kind == "count":
        return 1 + np.clip(np.asarray(raw, dtype=np.int64), 0, field.size - 2)
    x = np.asarray(raw)
    if x.dtype.kind in "iu":
        x = x.astype(np.int64, copy=False)
        return np.where((x >= 0) & (x < field.size), x, 0)
    vals, ok = _as_int(x, field.name)
    return np.where(ok & (vals >= 0) & (vals < field.size), vals, 0)


def unknown_counts(spec: FeatureSpec, group: Group, raw: dict[str, np.ndarray]) -> dict[str, int]:
    """How many raw values of each field of ``group`` get the unknown id 0: values outside a
    vocabulary (``category``, ``vocab``), missing values (None, NaN), negative hashed ids.

    ``raw`` maps each field's ``source`` to a 1-D array (one value per row of a side table).
    Returns ``{field name: count}`` in spec order. Raises KeyError naming a missing source.
    """
    ids = group_ids(spec, group, raw)
    return {f.name: int((ids[..., j] == 0).sum()) for j, f in enumerate(spec.group(group))}


def group_ids(spec: FeatureSpec, group: Group, raw: dict[str, np.ndarray]) -> np.ndarray:
    """Ids of every field of ``group``, in spec order: ``(..., n_group)`` int64.

    ``raw`` maps each field's ``source`` to raw values; they are broadcast together.
    Raises KeyError naming the field whose source is missing.
    """
    fields = spec.group(group)
    missing = [f"{f.name} (reads {f.source!r})" for f in fields if f.source not in raw]
    if missing:
        raise KeyError(f"{group} fields need raw inputs that were not given: {missing}")
    cols = np.broadcast_arrays(*[field_ids(f, raw[f.source]) for f in fields])
    return np.stack(cols, axis=-1)


#: Columns of the items table that the list fields read whatever the spec: the raw tag and
#: author of each item (``same_tag_in_list``, ``same_author_in_list``, ``recent_same_tag``).
ITEM_KEY_COLUMNS = ("item_id", "author_raw", "tag")
#: The raw inputs context fields may read (the request's timestamp and index in its session).
CONTEXT_SOURCES = ("timestamp", "request_index")


def side_table_columns(spec: FeatureSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns a users table and an items table must have for ``spec``.

    Users: ``user_id`` and the ``source`` of every user field; items: :data:`ITEM_KEY_COLUMNS`
    and the ``source`` of every item field; each in that order, without repeats. For
    :data:`DEFAULT_SPEC` these are :data:`USER_TABLE_COLUMNS` and :data:`ITEM_TABLE_COLUMNS`.
    """
    users = dict.fromkeys(["user_id", *(f.source for f in spec.group("user"))])
    items = dict.fromkeys([*ITEM_KEY_COLUMNS, *(f.source for f in spec.group("item"))])
    return tuple(users), tuple(items)


def spec_differences(a: FeatureSpec, b: FeatureSpec) -> list[str]:
    """Names of the fields in one spec and not the other, else of the fields whose rules
    differ, else ``["recent_window"]``/``["version"]``; ``[]`` when ``a == b``."""
    if a == b:
        return []
    names = sorted(set(a.names()) ^ set(b.names()))
    if names:
        return names
    fields = [f.name for f, g in zip(a.fields, b.fields, strict=True) if f != g]
    if fields:
        return fields
    return ["recent_window"] if a.recent_window != b.recent_window else ["version"]


def check_standard_layout(spec: FeatureSpec) -> None:
    """Refuse a spec the trainers and the list builder cannot compute.

    The requirement: fields ordered by group (user, context, item, list: models split their
    inputs there); at least one context and one item field; context fields read only
    :data:`CONTEXT_SOURCES`; list fields read only the counts :func:`list_fields` computes
    (:data:`REQUEST_LIST_SOURCES` and :data:`SLOT_LIST_SOURCES`). User and item fields are
    free: any side-table column, any kind. Raises ValueError naming the field.
    """
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    for a, b in zip(spec.fields, spec.fields[1:], strict=False):
        if rank[b.group] < rank[a.group]:
            raise ValueError(
                f"feature spec: field {b.name!r} ({b.group}) comes after {a.name!r} "
                f"({a.group}); fields must be ordered {' < '.join(GROUP_ORDER)}"
            )
    for group in ("context", "item"):
        if not spec.group(group):  # type: ignore[arg-type]
            raise ValueError(f"feature spec: no {group} field; at least one is needed")
    known = {"context": CONTEXT_SOURCES, "list": REQUEST_LIST_SOURCES + SLOT_LIST_SOURCES}
    for group, sources in known.items():
        for f in spec.group(group):  # type: ignore[arg-type]
            if f.source not in sources:
                raise ValueError(
                    f"feature spec: {group} field {f.name!r} reads {f.source!r}; {group} "
                    f"fields read only {list(sources)} (computed by the featurisation)"
                )


def extend_spec(base: FeatureSpec, fields: Iterable[Field]) -> FeatureSpec:
    """``base`` with extra user and item fields: each extra user field after ``base``'s
    user fields, each extra item field after its item fields, in the order given; the
    context and list fields, version and recent window stay ``base``'s.

    Raises ValueError for a context or list field (those are computed, not declared) or a
    name already in the spec.
    """
    extra = tuple(fields)
    bad = [f.name for f in extra if f.group not in ("user", "item")]
    if bad:
        raise ValueError(f"extra fields must be user or item fields; not {bad}")
    out: list[Field] = []
    for group in GROUP_ORDER:
        out += base.group(group)  # type: ignore[arg-type]
        out += [f for f in extra if f.group == group]
    return FeatureSpec(tuple(out), version=base.version, recent_window=base.recent_window)


def _values(values: Any) -> np.ndarray:
    """A 1-D array of raw values from a list, numpy/pandas/pyarrow array or column."""
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        try:
            return np.asarray(values.to_numpy(zero_copy_only=False)).ravel()
        except TypeError:  # pandas: no zero_copy_only
            return np.asarray(values.to_numpy()).ravel()
    return np.asarray(values).ravel()


def category_field(
    name: str,
    group: Group,
    values: Any,
    source: str = "",
    min_count: int = 1,
    max_size: int | None = None,
) -> Field:
    """A ``category`` field whose vocabulary is the distinct raw values seen in ``values``.

    Values seen fewer than ``min_count`` times are left out (they, and anything never seen,
    get the unknown id 0); with ``max_size``, only the ``max_size`` most frequent values are
    kept (ties: the smaller value first). The vocabulary is stored sorted by value, so
    ``vocab[i]`` has id ``i + 1`` and the field has ``len(vocab) + 1`` ids. Missing values
    (None, NaN) are skipped. Whole floats (an int column with missing values, as pandas reads
    it) become ints.

    Args:
        name, group: the field's name and group (``user`` or ``item``).
        values: the raw values (a list, numpy/pandas/pyarrow array), ints or strings.
        source: the side-table column it reads (default ``name``).
    Raises ValueError for fractional numbers (bucketise them: :func:`bucket_field`), mixed
    strings and numbers, ``min_count < 1``, ``max_size < 1`` or no value left.
    """
    if min_count < 1:
        raise ValueError(f"field {name!r}: min_count={min_count} must be >= 1")
    if max_size is not None and max_size < 1:
        raise ValueError(f"field {name!r}: max_size={max_size} must be >= 1")
    x = _values(values)
    if _is_str_array(x):
        kept = [v for v in x.tolist() if not _missing(v)]
        other = [v for v in kept if not isinstance(v, str)]
        if other:
            raise ValueError(f"field {name!r}: values mix strings and {other[0]!r}")
    elif x.dtype.kind in "iub":
        kept = [int(v) for v in x.tolist()]
    else:
        f = np.asarray([np.nan if _missing(v) else v for v in x.tolist()], dtype=np.float64)
        f = f[~np.isnan(f)]
        frac = f[np.floor(f) != f]
        if len(frac):
            raise ValueError(
                f"field {name!r}: category values are ints or strings, got {frac[0]!r}; "
                "bucketise numeric values (bucket_field)"
            )
        kept = [int(v) for v in f.tolist()]
    counts = Counter(kept)
    common = sorted(((v, c) for v, c in counts.items() if c >= min_count),
                    key=lambda vc: (-vc[1], vc[0]))  # fmt: skip
    if max_size is not None:
        common = common[:max_size]
    if not common:
        raise ValueError(
            f"field {name!r}: no value is seen at least min_count={min_count} times "
            f"({len(counts)} distinct values)"
        )
    vocab = tuple(sorted(v for v, _ in common))
    return Field(name, group, len(vocab) + 1, "category", source=source, vocab=vocab)


def hashed_field(name: str, group: Group, size: int, source: str = "") -> Field:
    """A ``hash`` field: raw ints ``1 + raw % (size - 1)``, strings through :func:`str_hash`
    first; negatives and missing values get 0. For ids of high cardinality (users, items,
    authors) where a vocabulary would be too large. Raises ValueError when ``size < 2``."""
    if size < 2:
        raise ValueError(f"field {name!r}: a hashed field needs size >= 2, got {size}")
    return Field(name, group, int(size), "hash", source=source)


def bucket_field(
    name: str,
    group: Group,
    values: Any = None,
    n_buckets: int | None = None,
    edges: Sequence[float] | None = None,
    source: str = "",
) -> Field:
    """A ``bucket`` field for a numeric column: given ``edges``, or edges at the quantiles
    ``k / n_buckets`` (``k = 1 .. n_buckets - 1``, numpy's linear interpolation) of the
    finite ``values``, repeats dropped (a value that fills several quantiles gives one edge,
    hence fewer buckets). Ids: ``1 + #{edges < x}``, 0 for NaN; ``len(edges) + 2`` ids.

    Raises ValueError unless exactly one of ``edges`` and ``values`` + ``n_buckets`` is
    given, when ``n_buckets < 2``, or when no value is finite.
    """
    if (edges is None) == (values is None or n_buckets is None):
        raise ValueError(f"field {name!r}: give edges, or values and n_buckets")
    if edges is None:
        assert n_buckets is not None
        if n_buckets < 2:
            raise ValueError(f"field {name!r}: n_buckets={n_buckets} must be >= 2")
        x = _values(values)
        f = np.asarray([np.nan if _missing(v) else v for v in x.tolist()], dtype=np.float64)
        f = f[np.isfinite(f)]
        if not len(f):
            raise ValueError(f"field {name!r}: no finite value to take quantiles of")
        edges = np.unique(np.quantile(f, np.arange(1, n_buckets) / n_buckets)).tolist()
    e = tuple(float(v) for v in edges)
    return Field(name, group, len(e) + 2, "bucket", e, source=source)


def context_fields(
    timestamp_ms: np.ndarray, request_index: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC
) -> np.ndarray:
    """Context ids, shape ``(..., n_context)``: hour of day and bucketised request index."""
    return group_ids(spec, "context", {"timestamp": timestamp_ms, "request_index": request_index})


def item_fields(
    item_id: np.ndarray,
    author_raw: np.ndarray,
    tag: np.ndarray,
    duration_s: np.ndarray,
    upload_type: np.ndarray,
    music_type: np.ndarray,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> np.ndarray:
    """Item ids, shape ``(..., n_item)``, from the raw columns of the items side table."""
    raw = {
        "item_id": item_id,
        "author_raw": author_raw,
        "tag": tag,
        "duration_s": duration_s,
        "upload_type": upload_type,
        "music_type": music_type,
    }
    return group_ids(spec, "item", raw)


def list_fields(
    position: np.ndarray,
    same_tag_in_list: np.ndarray,
    same_author_in_list: np.ndarray,
    recent_same_tag: np.ndarray,
    session_depth: np.ndarray,
    session_clicks: np.ndarray,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> np.ndarray:
    """Cumulative list/session ids, shape ``(..., n_list)``, from raw counts.

    Args (all broadcastable integer arrays):
        position: 0-based slot being filled.
        same_tag_in_list: earlier items of this list with the candidate's tag.
        same_author_in_list: earlier items of this list by the candidate's author.
        recent_same_tag: the session's last ``spec.recent_window`` impressions (before this
            request) with the candidate's tag.
        session_depth: impressions shown in the session before this request.
        session_clicks: clicks in the session before this request.
        spec: the rules (sizes, caps, edges) to apply; the service passes its bundle's.
    """
    raw = {
        "position": position,
        "same_tag_in_list": same_tag_in_list,
        "same_author_in_list": same_author_in_list,
        "recent_same_tag": recent_same_tag,
        "session_depth": session_depth,
        "session_clicks": session_clicks,
    }
    return group_ids(spec, "list", raw)


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


#: List fields whose raw value is fixed for a whole request (the session before it).
REQUEST_LIST_SOURCES = ("recent_same_tag", "session_depth", "session_clicks")
#: List fields whose raw value changes with the slot being filled.
SLOT_LIST_SOURCES = ("position", "same_tag_in_list", "same_author_in_list")


class ListFieldEncoder:
    """:func:`list_fields` for one spec, split for the serving hot path.

    A list is built slot by slot over the same ``C`` candidates, and half of the list fields
    do not change within a request (:data:`REQUEST_LIST_SOURCES`). The encoder computes those
    once (:meth:`request_ids`, ``(B, C, Lr)``) and the others at each slot (:meth:`slot_ids`,
    ``(B, C, Ls)``), with the same rules as :func:`field_ids`; :meth:`merge` puts a placed
    item's two parts back in spec order. ``tests`` check equality with :func:`list_fields`.
    Counts must be non-negative, as every caller's are. Raises KeyError at construction when
    the spec has a list field it cannot fill.
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        fields = spec.group("list")
        known = set(REQUEST_LIST_SOURCES) | set(SLOT_LIST_SOURCES)
        unknown = [f.name for f in fields if f.source not in known]
        if unknown:
            raise KeyError(f"list fields with unknown sources {unknown}; known: {sorted(known)}")
        self.request_fields = tuple(f for f in fields if f.source in REQUEST_LIST_SOURCES)
        self.slot_fields = tuple(f for f in fields if f.source in SLOT_LIST_SOURCES)
        order = [f.name for f in self.request_fields + self.slot_fields]
        #: merge(): spec column j takes column order_index[j] of concat(request, slot).
        self.order_index = np.array([order.index(f.name) for f in fields], dtype=np.int64)

    @property
    def n_request(self) -> int:
        return len(self.request_fields)

    @property
    def n_slot(self) -> int:
        return len(self.slot_fields)

    @staticmethod
    def _fill(out: np.ndarray, fields: tuple[Field, ...], raw: dict[str, np.ndarray]) -> None:
        for j, f in enumerate(fields):
            x = raw[f.source]
            if f.kind == "count":  # the per-slot hot path: 1 + min(x, size - 2), x >= 0
                col = out[..., j]
                if x.ndim == 2:
                    np.minimum(x, f.size - 2, out=col, casting="unsafe")
                    col += 1
                else:
                    col[...] = (1 + np.minimum(x, f.size - 2))[:, None]
            else:
                ids = field_ids(f, x)
                out[..., j] = ids[:, None] if ids.ndim == 1 else ids

    def request_ids(
        self, recent_same_tag: np.ndarray, session_depth: np.ndarray, session_clicks: np.ndarray
    ) -> np.ndarray:
        """``(B, C, Lr)`` ids from ``recent_same_tag (B, C)``, ``session_depth (B,)`` and
        ``session_clicks (B,)``."""
        b, c = np.shape(recent_same_tag)
        out = np.zeros((b, c, self.n_request), dtype=np.int64)
        raw = {"recent_same_tag": np.asarray(recent_same_tag),
               "session_depth": np.asarray(session_depth),
               "session_clicks": np.asarray(session_clicks)}  # fmt: skip
        self._fill(out, self.request_fields, raw)
        return out

    def slot_ids(
        self, out: np.ndarray, position: int, same_tag: np.ndarray, same_author: np.ndarray
    ) -> np.ndarray:
        """Write ``(B, C, Ls)`` ids into ``out`` (and return it): ``position`` (0-based slot)
        and ``same_tag``/``same_author (B, C)`` counts over the items placed so far."""
        raw = {"position": np.full(out.shape[0], position, dtype=np.int64),
               "same_tag_in_list": same_tag, "same_author_in_list": same_author}  # fmt: skip
        if position < 0:
            raise ValueError(f"position={position} must be >= 0")
        self._fill(out, self.slot_fields, raw)
        return out

    def merge(self, request_part: np.ndarray, slot_part: np.ndarray) -> np.ndarray:
        """``(..., L)`` list ids in spec order from the two parts ``(..., Lr)``, ``(..., Ls)``."""
        return np.concatenate([request_part, slot_part], axis=-1)[..., self.order_index]
