"""Hand-written impression logs and side tables for tests: a few requests, written out row by row
in the order given (so a test can build a log in any row order, valid or not)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from contract.schema import (
    FEEDBACK,
    FEEDBACK_BINARY,
    ITEM_TABLE_SCHEMA,
    LOG_SCHEMA,
    USER_TABLE_SCHEMA,
)


class Req(NamedTuple):
    """One request: ``shown`` is ``[(item, position, click), ...]`` in row order; ``others``
    the items matched but not shown. ``request_id`` is ``1000 * session + index``; the user is
    the session's number."""

    session: int
    index: int
    timestamp: int
    shown: list[tuple[int, int, int]]
    others: tuple[int, ...] = ()


def log_rows(requests: list[Req], absent: tuple[str, ...] = ()) -> pa.Table:
    """The impression-log rows of ``requests``, request after request, shown rows first, in
    the order given. Aspects in ``absent`` are null on every row."""
    cols: dict[str, list] = {n: [] for n in LOG_SCHEMA.names}
    for q in requests:
        rows = [(item, pos, click) for item, pos, click in q.shown]
        rows += [(item, -1, None) for item in q.others]
        for item, pos, click in rows:
            shown = pos >= 0
            cols["request_id"].append(1000 * q.session + q.index)
            cols["session_id"].append(q.session)
            cols["user_id"].append(q.session)
            cols["timestamp"].append(q.timestamp)
            cols["request_index"].append(q.index)
            cols["position"].append(pos)
            cols["item_id"].append(item)
            cols["arm"].append("logging")
            cols["model_version"].append("v1")
            cols["propensity"].append(0.5 if shown else None)
            for name in FEEDBACK:
                v = (click if name == "click" else 0) if shown and name not in absent else None
                cols[name].append(v if name in FEEDBACK_BINARY or v is None else float(v))
    return pa.table(cols, schema=LOG_SCHEMA)


def side_tables(users: list[int], items: list[int], tags: list[int] | None = None):
    """Users and items tables of the contract's columns for these ids (``tags`` per item;
    default: every item its own tag); authors are ``100 + item``."""
    u = {n: np.zeros(len(users), np.int64) + (1 if n != "user_id" else 0)
         for n in USER_TABLE_SCHEMA.names}  # fmt: skip
    u["user_id"] = np.asarray(users, np.int64)
    ids = np.asarray(items, np.int64)
    i = {
        "item_id": ids,
        "author_raw": 100 + ids,
        "tag": np.asarray(tags if tags is not None else 1 + np.arange(len(items)), np.int64),
        "duration_s": np.full(len(items), 20.0),
        "upload_type": np.ones(len(items), np.int64),
        "music_type": np.ones(len(items), np.int64),
    }
    return (pa.table(u, schema=USER_TABLE_SCHEMA), pa.table(i, schema=ITEM_TABLE_SCHEMA))
