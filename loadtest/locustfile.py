"""Locust file for ad-hoc load tests of the ranking service (not used by CI or the tests).

Locust is not a dependency of the project; install it where you run it:

    pip install locust
    ranker serve --workers 2 &
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000        # web UI on :8089
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 50 -r 10 -t 1m --only-summary                     # no UI, one minute

Simulated users (``--class-picker`` in the UI, or name classes on the command line):

- ``RankSessionUser`` (weight 9): sessions of 2 to 8 ``POST /v1/rank`` requests, each with
  ``RANKER_LOCUST_CANDIDATES`` (200) distinct real item ids of the bundle and a user id from
  its user table; the first answer's ``session_id`` is sent with the session's later requests
  (so their ``state`` is ``warm``); after a request, 20% of the time, a ``POST /v1/feedback``
  with a click and a watch time on one served item; 0.5 to 2 s of think time between
  requests. Responses whose ``state`` is ``degraded`` are reported as failures named
  ``/v1/rank [degraded]`` so a state-store outage shows in the statistics.
- ``NoopUser`` (weight 1): the same rank payload to ``POST /v1/noop``, the app's HTTP floor.

Ids come from ``RANKER_LOCUST_BUNDLE`` (default ``models/default``; needs pyarrow, which
the project's environment has). Locust is closed-loop: a user waits for its answer before
its next request, so under overload its latencies hide the queueing (coordinated omission).
For figures, use the open-loop generator: ``python -m loadtest.openloop``.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
from locust import FastHttpUser, between, task

BUNDLE = Path(
    os.environ.get("RANKER_LOCUST_BUNDLE", Path(__file__).parents[1] / "models" / "default")
)
N_CANDIDATES = int(os.environ.get("RANKER_LOCUST_CANDIDATES", "200"))
ITEMS = pq.read_table(BUNDLE / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
USERS = pq.read_table(BUNDLE / "users.parquet", columns=["user_id"])["user_id"].to_pylist()


def rank_payload(user_id: int, session_id: int | None) -> dict:
    body: dict = {
        "user_id": user_id,
        "candidates": random.sample(ITEMS, N_CANDIDATES),
        "k": 10,
        "context": {"timestamp_ms": int(time.time() * 1000)},
    }
    if session_id is not None:
        body["session_id"] = session_id
    return body


class RankSessionUser(FastHttpUser):
    weight = 9
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.new_session()

    def new_session(self) -> None:
        self.user_id = random.choice(USERS)
        self.session_id: int | None = None
        self.left = random.randint(2, 8)

    @task
    def rank(self) -> None:
        body = rank_payload(self.user_id, self.session_id)
        with self.client.post("/v1/rank", json=body, catch_response=True, name="/v1/rank") as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            answer = json.loads(r.content)
            if answer["state"] == "degraded":
                r.failure("degraded: the state store failed, a cold state was served")
            self.session_id = answer["session_id"]
        self.left -= 1
        if answer["items"] and random.random() < 0.2:
            item = random.choice(answer["items"])
            self.client.post(
                "/v1/feedback",
                name="/v1/feedback",
                json={
                    "request_id": answer["request_id"],
                    "session_id": answer["session_id"],
                    "user_id": self.user_id,
                    "arm": answer["arm"],
                    "events": [
                        {
                            "item_id": item["item_id"],
                            "position": item["position"],
                            "click": 1,
                            "watch_time": round(random.uniform(2, 30), 1),
                        }
                    ],
                },
            )
        if self.left == 0:
            self.new_session()


class NoopUser(FastHttpUser):
    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def noop(self) -> None:
        self.client.post("/v1/noop", json=rank_payload(random.choice(USERS), None), name="/v1/noop")
