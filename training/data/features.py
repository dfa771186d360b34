"""Model inputs from the impression log: the featurisation every trainer and evaluator uses.

The field ids come from ``contract.features`` (the same functions the service calls); this
module only arranges them for batches. From a table of whole sessions (as
:func:`training.data.pipeline.iter_session_batches` yields) it builds :class:`Requests`:

- per request: user and context ids, the candidate columns (shown items first, in slot order,
  then the non-impressions), their item ids, tags and authors, the feedback and propensities of
  the shown slots, and the session counters before the request (depth, clicks, the tags of the
  last ``spec.recent_window`` impressions);
- per impression (the flat sequence ``g`` in session order): its ``n`` field ids (22 in
  ``DEFAULT_SPEC``), the ids a point-wise model and the DRL-Rec encoder read.

:func:`candidate_ids` gives the item + list ids (``n_item + n_list``: 12 in ``DEFAULT_SPEC``)
of any items (logged candidates or catalogue items) as if placed at slot ``t`` of request
``r``: the list fields depend on the slot and on what the earlier slots hold, exactly as the
service computes them while it builds a list position by position.

Every shape follows the feature spec of the :class:`SideTables` (the dataset's spec, see
``Dataset.spec``): a spec may declare extra user and item fields; its context and list fields
must be ones the featurisation computes (:func:`contract.features.check_standard_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from contract.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    candidate_prefix_counts,
    check_standard_layout,
    context_fields,
    field_ids,
    group_ids,
    list_fields,
    side_table_columns,
)
from contract.schema import FEEDBACK


@dataclass(frozen=True)
class SideTables:
    """Users' and items' field ids by a feature spec, looked up by raw id (sorted arrays +
    searchsorted); the training twin of ``runtime.bundle.SideTables``, with the same rules.

    A user missing from the users table gets the fields read from its id (``source`` =
    ``user_id``: the hashed id) and 0 ("unknown") elsewhere; a missing item likewise, with tag
    0 and author -1. ``spec`` is the dataset's (:attr:`training.data.pipeline.Dataset.spec`);
    every consumer of these tables (Requests, networks, exports) takes its sizes from it.
    """

    user_id: np.ndarray  # (U,) sorted raw ids
    user_fields: np.ndarray  # (U, n_user) ids of the spec's user fields
    item_id: np.ndarray  # (N,) sorted raw ids
    item_f: np.ndarray  # (N, n_item) ids of the spec's item fields
    item_tag: np.ndarray  # (N,) raw tag
    item_author: np.ndarray  # (N,) raw author
    spec: FeatureSpec = DEFAULT_SPEC

    @classmethod
    def from_tables(
        cls, users: pa.Table, items: pa.Table, spec: FeatureSpec = DEFAULT_SPEC
    ) -> SideTables:
        """Featurise the users and items tables by ``spec`` (pass the dataset's
        :attr:`~training.data.pipeline.Dataset.spec`).

        The tables need the columns :func:`contract.features.side_table_columns` names:
        ``user_id`` and the user fields' ``source`` columns; ``item_id``, ``author_raw``,
        ``tag`` and the item fields' ``source`` columns. Raises ValueError naming the table
        when it is empty (every id would be unknown, and the lookups would index an empty
        array) or lacks a column, or naming the field when the spec's layout is not one the
        trainers read (:func:`contract.features.check_standard_layout`)."""
        for name, table in (("users", users), ("items", items)):
            if table.num_rows == 0:
                raise ValueError(f"the {name} side table is empty (0 rows)")
        check_standard_layout(spec)
        user_cols, item_cols = side_table_columns(spec)
        for name, table, cols in (("users", users, user_cols), ("items", items, item_cols)):
            missing = [c for c in cols if c not in table.column_names]
            if missing:
                raise ValueError(
                    f"the {name} side table has no column {missing[0]!r} (read by the feature "
                    f"spec; it needs {list(cols)})"
                )
        u = {c: users.column(c).to_numpy(zero_copy_only=False) for c in user_cols}
        fill = {"tag": 0, "author_raw": -1}
        i = {c: items.column(c).fill_null(fill[c]).to_numpy(zero_copy_only=False)
             if c in fill else items.column(c).to_numpy(zero_copy_only=False)
             for c in item_cols}  # fmt: skip
        uo = np.argsort(u["user_id"], kind="stable")
        io = np.argsort(i["item_id"], kind="stable")
        return cls(
            user_id=u["user_id"][uo].astype(np.int64),
            user_fields=group_ids(spec, "user", {k: v[uo] for k, v in u.items()}),
            item_id=i["item_id"][io].astype(np.int64),
            item_f=group_ids(spec, "item", {k: v[io] for k, v in i.items()}),
            item_tag=i["tag"][io].astype(np.int64),
            item_author=i["author_raw"][io].astype(np.int64),
            spec=spec,
        )

    @property
    def n_items(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def n_user_ctx(self) -> int:
        """User + context fields: the columns of ``Requests.user_ctx``."""
        return len(self.spec.group("user")) + len(self.spec.group("context"))

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each raw item id; -1 for ids missing from the items table."""
        return _rows(self.item_id, item_ids)

    def user_f(self, user_ids: np.ndarray) -> np.ndarray:
        """``(..., n_user)`` user field ids; an unknown user: the id's own fields, 0 else."""
        user_ids = np.asarray(user_ids)
        rows = _rows(self.user_id, user_ids)
        known = (rows >= 0)[..., None]
        f = np.where(known, self.user_fields[np.maximum(rows, 0)], 0)
        return _with_id_fields(f, self.spec, "user", user_ids, known)

    def item_attrs(self, rows: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Item field ids ``(..., n_item)``, tag and author of items; unknown rows: the id's
        own fields (the hashed ``item_id``), 0 elsewhere, tag 0, author -1."""
        known = rows >= 0
        r = np.maximum(rows, 0)
        f = np.where(known[..., None], self.item_f[r], 0)
        f = _with_id_fields(f, self.spec, "item", np.asarray(item_ids), known[..., None])
        tag = np.where(known, self.item_tag[r], 0)
        author = np.where(known, self.item_author[r], -1)
        return f, tag, author


def _with_id_fields(
    f: np.ndarray, spec: FeatureSpec, group: str, ids: np.ndarray, known: np.ndarray
) -> np.ndarray:
    """``f`` with the fields that read the raw id itself (``user_id``/``item_id``) filled
    from ``ids`` where ``known`` is False (a known row's table ids are the same)."""
    key = "user_id" if group == "user" else "item_id"
    for j, fl in enumerate(spec.group(group)):  # type: ignore[arg-type]
        if fl.source == key:
            f[..., j] = np.where(known[..., 0], f[..., j], field_ids(fl, ids))
    return f


def _rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return np.where((len(sorted_ids) > 0) & (sorted_ids[pos_c] == ids), pos_c, -1)


@dataclass
class Requests:
    """Per-request and per-impression arrays of a table of whole sessions.

    ``R`` requests with at most ``C`` candidates and ``K`` shown slots; ``G`` impressions.
    Candidate column ``j < n_shown[r]`` of request ``r`` is its ``j``-th shown item in the order
    of the logged positions, shown at position ``shown_pos[r, j]`` (``j`` itself when the slots
    are contiguous; an imported log may show its only impression at position 2). The position
    list field reads the logged position, and "earlier in the list" means a lower one.
    """

    session_id: np.ndarray  # (R,)
    request_id: np.ndarray  # (R,)
    user_id: np.ndarray  # (R,)
    timestamp: np.ndarray  # (R,)
    user_ctx: np.ndarray  # (R, n_user + n_context) user + context ids
    n_cand: np.ndarray  # (R,)
    n_shown: np.ndarray  # (R,)
    cand_item: np.ndarray  # (R, C) raw item ids (0 where padded)
    cand_mask: np.ndarray  # (R, C) bool
    cand_f: np.ndarray  # (R, C, n_item) item field ids
    cand_tag: np.ndarray  # (R, C)
    cand_author: np.ndarray  # (R, C)
    feedback: np.ndarray  # (R, K, 7) float32, FEEDBACK order; 0 where not shown
    propensity: np.ndarray  # (R, K) float64; 1 where not shown
    shown_pos: np.ndarray  # (R, K) int64 logged position of shown column j; -1 where not shown
    depth: np.ndarray  # (R,) impressions in the session before the request
    clicks: np.ndarray  # (R,) clicks in the session before the request
    recent_tags: np.ndarray  # (R, W) tags of the session's last impressions (0 = none)
    next_req: np.ndarray  # (R,) next request of the session, -1 for the last
    imp_start: np.ndarray  # (R,) index of the request's first impression in the flat order
    imp_req: np.ndarray  # (G,) request of each impression
    imp_slot: np.ndarray  # (G,) shown column of each impression (its position: shown_pos)
    imp_ids: np.ndarray  # (G, n_fields) field ids of each impression, spec order
    imp_sess_start: np.ndarray  # (G,) flat index of the first impression of its session
    spec: FeatureSpec = DEFAULT_SPEC  # the rules of every id above (the side tables' spec)
    #: the feedback aspects the rows have; the others (null in the log: declared absent) are 0
    #: in ``feedback`` and refused by :meth:`label`
    aspects: tuple[str, ...] = FEEDBACK

    @property
    def n_requests(self) -> int:
        return int(self.session_id.shape[0])

    @property
    def n_impressions(self) -> int:
        return int(self.imp_req.shape[0])

    @property
    def list_size(self) -> int:
        return int(self.feedback.shape[1])

    def label(self, aspect: str = "click") -> np.ndarray:
        """``(G,)`` feedback of every impression for one aspect. Raises ValueError for an
        aspect the log does not have (null on every impression: its 0s are not labels)."""
        if aspect not in self.aspects:
            raise ValueError(f"aspect {aspect!r} is absent from this log (it has "
                             f"{list(self.aspects)}); its values are not labels")  # fmt: skip
        j = FEEDBACK.index(aspect)
        return self.feedback[self.imp_req, self.imp_slot, j]


def build_requests(
    table: pa.Table,
    side: SideTables,
    list_size: int | None = None,
    spec: FeatureSpec | None = None,
) -> Requests:
    """Arrange a table of whole sessions (impression-log schema) into :class:`Requests`.

    The ids follow ``side.spec`` (the dataset's feature spec); ``spec``, if given, must be
    that spec. Any spec whose layout :func:`contract.features.check_standard_layout` accepts
    works: the user and item fields are read from the side tables, the context fields from
    the request's timestamp and index, the list fields are computed by
    :func:`contract.features.list_fields`. Raises ValueError for another ``spec``.
    """
    if spec is not None and spec != side.spec:
        raise ValueError(
            "build_requests: spec differs from the side tables' (build both from Dataset.spec)"
        )
    spec = side.spec
    col = {
        n: table.column(n).to_numpy(zero_copy_only=False)
        for n in (
            "session_id",
            "request_id",
            "user_id",
            "timestamp",
            "request_index",
            "position",
            "item_id",
        )  # fmt: skip
    }
    n_rows = table.num_rows
    pos = col["position"].astype(np.int64)
    shown_row = pos >= 0
    # Order: session, request, shown slots by position, then the rest in log order.
    key = np.where(shown_row, pos, 1 << 20) + 0  # non-impressions after the shown slots
    order = np.lexsort((np.arange(n_rows), key, col["request_index"], col["session_id"]))
    for n in col:
        col[n] = col[n][order]
    pos, shown_row = pos[order], shown_row[order]
    fb = {}
    # an aspect null on every impression is absent (``dataset.json`` aspects), not negative
    absent = {a for a in FEEDBACK if shown_row.any() and table.column(a).null_count == n_rows}
    for name in FEEDBACK:
        arr = table.column(name).to_numpy(zero_copy_only=False)[order]
        fb[name] = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0)
    prop = np.nan_to_num(
        np.asarray(table.column("propensity").to_numpy(zero_copy_only=False)[order], float), nan=1.0
    )

    new_req = np.r_[True, (col["session_id"][1:] != col["session_id"][:-1])
                    | (col["request_index"][1:] != col["request_index"][:-1])]  # fmt: skip
    starts = np.flatnonzero(new_req)
    r_of_row = np.cumsum(new_req) - 1
    n_req = len(starts)
    n_cand = np.diff(np.r_[starts, n_rows])
    col_of_row = np.arange(n_rows) - starts[r_of_row]
    n_shown = np.bincount(r_of_row, weights=shown_row, minlength=n_req).astype(np.int64)
    c_max = int(n_cand.max()) if n_req else 0
    k = int(list_size if list_size is not None else (n_shown.max() if n_req else 0))
    if n_req and n_shown.max() > k:
        raise ValueError(f"a request shows {int(n_shown.max())} items; list_size is {k}")

    cand_item = np.zeros((n_req, c_max), dtype=np.int64)
    cand_item[r_of_row, col_of_row] = col["item_id"]
    cand_mask = np.zeros((n_req, c_max), dtype=bool)
    cand_mask[r_of_row, col_of_row] = True
    rows = np.where(cand_mask, side.item_rows(cand_item), -1)
    cand_f, cand_tag, cand_author = side.item_attrs(rows, cand_item)
    cand_tag = np.where(cand_mask, cand_tag, -1)  # padding never matches a real tag

    feedback = np.zeros((n_req, k, len(FEEDBACK)), dtype=np.float32)
    propensity = np.ones((n_req, k))
    sr = np.flatnonzero(shown_row)
    slot_of = col_of_row[sr]
    for j, name in enumerate(FEEDBACK):
        feedback[r_of_row[sr], slot_of, j] = fb[name][sr]
    propensity[r_of_row[sr], slot_of] = prop[sr]
    shown_pos = np.full((n_req, k), -1, dtype=np.int64)
    shown_pos[r_of_row[sr], slot_of] = pos[sr]

    first = starts
    session = col["session_id"][first]
    new_sess = np.r_[True, session[1:] != session[:-1]]
    sess_idx = np.cumsum(new_sess) - 1
    sess_start = np.flatnonzero(new_sess)
    clicks_req = feedback[:, :, 0].sum(axis=1)
    depth = _exclusive_cumsum_by_group(n_shown.astype(np.float64), sess_idx).astype(np.int64)
    clicks = _exclusive_cumsum_by_group(clicks_req, sess_idx).astype(np.int64)
    next_req = np.where(np.r_[~new_sess[1:], False], np.arange(n_req) + 1, -1)

    # Flat impression sequence in session order.
    imp_start = np.r_[0, np.cumsum(n_shown)[:-1]] if n_req else np.zeros(0, np.int64)
    g_total = int(n_shown.sum())
    imp_req = np.repeat(np.arange(n_req), n_shown)
    imp_slot = np.arange(g_total) - imp_start[imp_req]
    imp_tag = cand_tag[imp_req, imp_slot]
    # Tags of the last W impressions of the session before each request.
    w = spec.recent_window
    idx = imp_start[:, None] - w + np.arange(w)[None, :]
    ok = (idx >= 0) & (idx >= imp_start[sess_start[sess_idx]][:, None])
    recent_tags = np.where(ok, imp_tag[np.clip(idx, 0, max(g_total - 1, 0))] if g_total else 0, 0)

    ctx = context_fields(col["timestamp"][first], col["request_index"][first], spec)
    user_ctx = np.concatenate([side.user_f(col["user_id"][first]), ctx], axis=1)

    req = Requests(
        session_id=session,
        request_id=col["request_id"][first],
        user_id=col["user_id"][first],
        timestamp=col["timestamp"][first],
        user_ctx=user_ctx.astype(np.int64),
        n_cand=n_cand.astype(np.int64),
        n_shown=n_shown,
        cand_item=cand_item,
        cand_mask=cand_mask,
        cand_f=cand_f.astype(np.int64),
        cand_tag=cand_tag,
        cand_author=np.where(cand_mask, cand_author, -2),
        feedback=feedback,
        propensity=propensity,
        shown_pos=shown_pos,
        depth=depth,
        clicks=clicks,
        recent_tags=recent_tags.astype(np.int64),
        next_req=next_req,
        imp_start=imp_start.astype(np.int64),
        imp_req=imp_req,
        imp_slot=imp_slot,
        imp_ids=np.zeros((g_total, spec.n_fields), dtype=np.int64),
        imp_sess_start=imp_start[sess_start[sess_idx]][imp_req].astype(np.int64),
        spec=spec,
        aspects=tuple(a for a in FEEDBACK if a not in absent),
    )
    if g_total:
        cand12 = candidate_ids(req, imp_req, imp_slot, cols=imp_slot[:, None])[:, 0]
        req.imp_ids = np.concatenate([user_ctx[imp_req], cand12], axis=1).astype(np.int64)
    return req


def _exclusive_cumsum_by_group(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``out[i] = sum of x[j] for j < i in the same (contiguous) group``."""
    c = np.cumsum(x) - x
    first = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1]
    base = np.repeat(c[first], np.diff(np.r_[first, len(x)]))
    return c - base


def slot_position(req: Requests, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(B,)`` position of slot (shown column) ``t`` of requests ``r``: the logged position of
    its ``t``-th shown item; past the shown items, the positions after the last shown one
    (``last + 1 + t - n_shown``). Equals ``t`` when a request's slots are ``0..n-1``.

    Example: a request whose only impression was logged at position 2 gives 2 at ``t = 0``
    and 3 at ``t = 1``.
    """
    r, t = np.asarray(r), np.asarray(t)
    k = req.list_size
    if k == 0:
        return t.astype(np.int64)
    n = req.n_shown[r]
    last = req.shown_pos[r, np.maximum(n - 1, 0)]  # -1 when nothing was shown
    own = req.shown_pos[r, np.minimum(t, k - 1)]
    return np.where(t < n, own, last + 1 + t - n)


def list_ids(
    req: Requests, r: np.ndarray, t: np.ndarray, tags: np.ndarray, authors: np.ndarray
) -> np.ndarray:
    """``(B, M, n_list)`` list ids of items with ``tags``/``authors`` ``(B, M)`` at slot ``t``
    of ``r``.

    The earlier slots ``0..t-1`` hold the logged slate of the request; the position field is
    the logged one (:func:`slot_position`).
    """
    k = req.list_size
    placed_tag = req.cand_tag[r, :k] if k else np.zeros((len(r), 0), np.int64)
    placed_author = req.cand_author[r, :k]
    t = np.asarray(t)
    same_tag = candidate_prefix_counts(tags, placed_tag, t)
    same_author = candidate_prefix_counts(authors, placed_author, t)
    recent = (tags[:, :, None] == req.recent_tags[r][:, None, :]).sum(-1)
    depth, clicks = req.depth[r][:, None], req.clicks[r][:, None]
    pos = slot_position(req, r, t)[:, None]
    return list_fields(pos, same_tag, same_author, recent, depth, clicks, spec=req.spec)


def candidate_ids(
    req: Requests, r: np.ndarray, t: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """``(B, M, n_item + n_list)`` item + list ids of logged candidates ``cols`` (default:
    all) at slot ``t``."""
    r = np.asarray(r)
    if cols is None:
        cols = np.broadcast_to(np.arange(req.cand_item.shape[1]), (len(r), req.cand_item.shape[1]))
    f = req.cand_f[r[:, None], cols]
    tags = req.cand_tag[r[:, None], cols]
    authors = req.cand_author[r[:, None], cols]
    return np.concatenate([f, list_ids(req, r, t, tags, authors)], axis=-1)


def catalogue_ids(
    req: Requests, side: SideTables, r: np.ndarray, t: np.ndarray, item_rows: np.ndarray
) -> np.ndarray:
    """``(B, M, n_item + n_list)`` ids of catalogue items (rows of the items table) at slot
    ``t`` of ``r``."""
    f, tags, authors = side.item_attrs(item_rows, side.item_id[item_rows])
    return np.concatenate([f, list_ids(req, r, t, tags, authors)], axis=-1)
