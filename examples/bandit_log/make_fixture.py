"""Generate the bandit-log fixture: a small click log in a layout of its own (not KuaiRand's).

    python examples/bandit_log/make_fixture.py          # rewrites the files beside this script

What it writes (seeded: the same bytes on every run with the same numpy/pyarrow):

- ``impressions.parquet``: one row per impression of a news-feed widget with 3 slots, columns
  ``event_time`` (ISO 8601 text, UTC), ``req`` (request id), ``visitor`` (text user id),
  ``article`` (item id), ``slot`` (1-based), ``clicked`` (bool: the only feedback) and
  ``pscore``: the *marginal* probability that the logging policy shows that article in that
  slot (over the policy's lists, not conditional on the earlier slots). Some rows of a list are
  missing (about 1 in 8: the widget logs only what was rendered), so a request may show slot 3
  alone: slots are kept as logged.
- ``users.csv``: ``visitor``, ``age_band`` (text), ``region`` (text, some missing),
  ``tenure_days`` (number);
- ``items.csv``: ``article``, ``section`` (text, the tag), ``publisher`` (text, the author),
  ``words`` (number);
- ``mapping.toml`` is written by hand (kept in git), not by this script.

The logging policy: per request, 10 candidate articles drawn from the catalogue, then a
Plackett-Luce draw of 3 (softmax of a crude popularity score over temperature 0.7); the
marginal slot probabilities are exact (all 720 ordered triples enumerated). Clicks carry a
learnable signal: ``P(click) = e_k * sigmoid(-1.2 + 1.6 affinity(user, section) + 0.8 quality -
0.4 log(words / 800))`` with ``e_k = (1, 0.7, 0.5)``, where the affinity comes from the user's
age band and region (their features) plus individual noise.
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240304
N_USERS, N_ITEMS, N_DAYS, K, N_CAND = 300, 120, 5, 3, 10
DAY0 = np.datetime64("2024-03-04T00:00:00", "s")
AGE = ("18-24", "25-34", "35-44", "45+")
REGION = ("north", "south", "east", "west", "centre", "islands")
SECTION = ("sport", "politics", "tech", "culture", "money", "travel", "food", "science")
EXAM = np.array([1.0, 0.7, 0.5])


def make(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    age = rng.integers(0, len(AGE), N_USERS)
    region = rng.integers(0, len(REGION), N_USERS)
    tenure = np.round(rng.exponential(200.0, N_USERS)).astype(int)
    a_age = rng.normal(0, 1.0, (len(AGE), len(SECTION)))
    a_reg = rng.normal(0, 0.7, (len(REGION), len(SECTION)))
    affinity = a_age[age] + a_reg[region] + rng.normal(0, 0.3, (N_USERS, len(SECTION)))
    users = pd.DataFrame({
        "visitor": [f"v{u:04d}" for u in range(N_USERS)],
        "age_band": [AGE[a] for a in age],
        "region": [None if rng.random() < 0.04 else REGION[r] for r in region],
        "tenure_days": tenure,
    })  # fmt: skip

    section = rng.integers(0, len(SECTION), N_ITEMS)
    words = np.round(np.exp(rng.normal(np.log(800), 0.6, N_ITEMS))).astype(int)
    quality = rng.normal(0, 1, N_ITEMS)
    popularity = 0.6 * quality + rng.normal(0, 1, N_ITEMS)  # the logging policy's crude score
    items = pd.DataFrame({
        "article": 7000 + np.arange(N_ITEMS),
        "section": [SECTION[s] for s in section],
        "publisher": [f"pub-{p:02d}" for p in rng.integers(0, 15, N_ITEMS)],
        "words": words,
    })  # fmt: skip

    perms = np.array(list(permutations(range(N_CAND), K)))  # (720, 3) ordered triples
    rows = []
    req = 5_000_000
    for day in range(N_DAYS):
        active = np.flatnonzero(rng.random(N_USERS) < 0.55)
        for u in active:
            for _ in range(rng.poisson(1.0) + 1):  # sessions
                t = DAY0 + np.timedelta64(day * 86400 + int(rng.integers(0, 21 * 3600)), "s")
                for _ in range(int(rng.integers(1, 5))):  # requests of the session
                    cand = rng.choice(N_ITEMS, N_CAND, replace=False)
                    z = popularity[cand] / 0.7
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    pa_, pb, pc = p[perms[:, 0]], p[perms[:, 1]], p[perms[:, 2]]
                    trip = pa_ * pb / (1 - pa_) * pc / (1 - pa_ - pb)  # Plackett-Luce, (720,)
                    j = int(np.searchsorted(np.cumsum(trip), rng.random() * trip.sum()))
                    slate = perms[min(j, len(perms) - 1)]
                    for k, c in enumerate(slate):
                        marginal = trip[perms[:, k] == c].sum()  # P(article c in slot k)
                        i = cand[c]
                        logit = (-1.2 + 1.6 * affinity[u, section[i]] + 0.8 * quality[i]
                                 - 0.4 * np.log(words[i] / 800))  # fmt: skip
                        click = rng.random() < EXAM[k] / (1 + np.exp(-logit))
                        if rng.random() < 0.125:  # not rendered, not logged
                            continue
                        ts = t + np.timedelta64(int(k), "s")
                        rows.append((str(ts) + "Z", req, u, 7000 + i, k + 1, click, marginal))
                    req += 1
                    t = t + np.timedelta64(int(rng.integers(20, 240)), "s")
    log = pd.DataFrame(rows, columns=["event_time", "req", "u", "article", "slot", "clicked",
                                      "pscore"])  # fmt: skip
    log.insert(2, "visitor", [f"v{u:04d}" for u in log.pop("u")])
    log["pscore"] = log["pscore"].round(6)
    log = log.sample(frac=1.0, random_state=np.random.RandomState(SEED)).reset_index(drop=True)
    return log, users, items


def main() -> None:
    here = Path(__file__).resolve().parent
    log, users, items = make(np.random.default_rng(SEED))
    table = pa.Table.from_pandas(log, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, here / "impressions.parquet", compression="zstd")
    users.to_csv(here / "users.csv", index=False)
    items.to_csv(here / "items.csv", index=False)
    print(f"{len(log):,} impressions of {log['req'].nunique():,} requests, "
          f"click rate {log['clicked'].mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
