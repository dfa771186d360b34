"""Model inputs from the impression log: the featurisation every trainer and evaluator uses.

The field ids come from ``contract.features`` (the same functions the service calls); this
module only arranges them for batches. From a table of whole sessions (as
:func:`training.data.pipeline.iter_session_batches` yields) it builds :class:`Requests`:

- per request: user and context ids, the candidate columns (shown items first, in slot order,
  then the non-impressions), their item ids, tags and authors, the feedback and propensities of
  the shown slots, and the session counters before the request (depth, clicks, the tags of the
  last ``RECENT_WINDOW`` impressions);
- per impression (the flat sequence ``g`` in session order): its 22 field ids, the ids a
  point-wise model and the DRL-Rec encoder read.

:func:`candidate_ids` gives the 12 item + list ids of any items (logged candidates or
catalogue items) as if placed at slot ``t`` of request ``r``: the list fields depend on the
slot and on what the earlier slots hold, exactly as the service computes them while it builds
a list position by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from contract.features import (
    DEFAULT_SPEC,
    RECENT_WINDOW,
    USER_FIELDS,
    FeatureSpec,
    candidate_prefix_counts,
    context_fields,
    hash_ids,
    item_fields,
    list_fields,
)
from contract.schema import FEEDBACK

N_USER_CTX = 10  # user (8) + context (2) fields
N_CAND = 12  # item (6) + list (6) fields


@dataclass(frozen=True)
class SideTables:
    """Users' and items' field ids, looked up by raw id (sorted arrays + searchsorted)."""

    user_id: np.ndarray  # (U,) sorted raw ids
    user_profile: np.ndarray  # (U, 7) profile ids (fields after user_id)
    item_id: np.ndarray  # (N,) sorted raw ids
    item_f: np.ndarray  # (N, 6) item field ids
    item_tag: np.ndarray  # (N,) raw tag
    item_author: np.ndarray  # (N,) raw author

    @classmethod
    def from_tables(cls, users: pa.Table, items: pa.Table) -> SideTables:
        """Raises ValueError naming the table when ``users`` or ``items`` has no rows (every
        id would be unknown, and the lookups would index an empty array)."""
        for name, table in (("users", users), ("items", items)):
            if table.num_rows == 0:
                raise ValueError(f"the {name} side table is empty (0 rows)")
        uid = users.column("user_id").to_numpy()
        uo = np.argsort(uid, kind="stable")
        profile = np.stack([users.column(f.name).to_numpy() for f in USER_FIELDS[1:]], axis=1)
        iid = items.column("item_id").to_numpy()
        io = np.argsort(iid, kind="stable")
        col = {n: items.column(n).to_numpy() for n in items.column_names}
        f = item_fields(
            col["item_id"], col["author_raw"], col["tag"], col["duration_s"],
            col["upload_type"], col["music_type"],
        )  # fmt: skip
        sizes = DEFAULT_SPEC.sizes("user")[1:]
        return cls(
            user_id=uid[uo],
            user_profile=np.clip(profile[uo], 0, np.asarray(sizes) - 1).astype(np.int64),
            item_id=iid[io],
            item_f=f[io].astype(np.int64),
            item_tag=col["tag"][io].astype(np.int64),
            item_author=col["author_raw"][io].astype(np.int64),
        )

    @property
    def n_items(self) -> int:
        return int(self.item_id.shape[0])

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each raw item id; -1 for ids missing from the items table."""
        return _rows(self.item_id, item_ids)

    def user_f(self, user_ids: np.ndarray) -> np.ndarray:
        """``(..., 8)`` user field ids (hashed id + profile; an unknown profile is all 0)."""
        rows = _rows(self.user_id, user_ids)
        prof = np.where((rows >= 0)[..., None], self.user_profile[np.maximum(rows, 0)], 0)
        hid = hash_ids(user_ids, DEFAULT_SPEC.fields[0].size)
        return np.concatenate([hid[..., None], prof], axis=-1)

    def item_attrs(self, rows: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Item field ids ``(..., 6)``, tag and author of items; unknown rows: id only."""
        known = rows >= 0
        r = np.maximum(rows, 0)
        f = np.where(known[..., None], self.item_f[r], 0)
        f[..., 0] = hash_ids(item_ids, DEFAULT_SPEC.fields[10].size)
        tag = np.where(known, self.item_tag[r], 0)
        author = np.where(known, self.item_author[r], -1)
        return f, tag, author


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
    user_ctx: np.ndarray  # (R, 10) user + context ids
    n_cand: np.ndarray  # (R,)
    n_shown: np.ndarray  # (R,)
    cand_item: np.ndarray  # (R, C) raw item ids (0 where padded)
    cand_mask: np.ndarray  # (R, C) bool
    cand_f: np.ndarray  # (R, C, 6) item field ids
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
    imp_ids: np.ndarray  # (G, 22) field ids of each impression
    imp_sess_start: np.ndarray  # (G,) flat index of the first impression of its session

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
        """``(G,)`` feedback of every impression for one aspect."""
        j = FEEDBACK.index(aspect)
        return self.feedback[self.imp_req, self.imp_slot, j]


def build_requests(
    table: pa.Table,
    side: SideTables,
    list_size: int | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> Requests:
    """Arrange a table of whole sessions (impression-log schema) into :class:`Requests`."""
    if spec.names() != DEFAULT_SPEC.names():
        raise ValueError("build_requests implements DEFAULT_SPEC's fields only")
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
    w = RECENT_WINDOW
    idx = imp_start[:, None] - w + np.arange(w)[None, :]
    ok = (idx >= 0) & (idx >= imp_start[sess_start[sess_idx]][:, None])
    recent_tags = np.where(ok, imp_tag[np.clip(idx, 0, max(g_total - 1, 0))] if g_total else 0, 0)

    ctx = context_fields(col["timestamp"][first], col["request_index"][first])
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
    """``(B, M, 6)`` list ids of items with ``tags``/``authors`` ``(B, M)`` at slot ``t`` of ``r``.

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
    pos = slot_position(req, r, t)[:, None]
    return list_fields(
        pos, same_tag, same_author, recent, req.depth[r][:, None], req.clicks[r][:, None]
    )


def candidate_ids(
    req: Requests, r: np.ndarray, t: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """``(B, M, 12)`` item + list ids of logged candidates ``cols`` (default: all) at slot ``t``."""
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
    """``(B, M, 12)`` ids of catalogue items (rows of the items table) at slot ``t`` of ``r``."""
    f, tags, authors = side.item_attrs(item_rows, side.item_id[item_rows])
    return np.concatenate([f, list_ids(req, r, t, tags, authors)], axis=-1)
