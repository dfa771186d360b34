"""API fuzzing of the ranking service with schemathesis, against its own /openapi.json.

Every operation of the document (rank, noop, feedback, models, healthz, readyz, metrics, and
the admin reload and experiment routes both with the right bearer token and with whatever
header the generator makes up) is fed generated requests in schemathesis's two modes,
``positive`` (bodies that fit the declared schema) and ``negative`` (bodies, headers and
content that break it), and in a third, ``valid``: positive bodies of the operations that take
one, with the names a schema cannot know made real (arms and user-feature names of the bundle,
half the candidates real item ids, experiment weights summing to 1, a real bundle folder) and
whole floats written as integers (JSON Schema counts ``7.0`` as an integer; the service's
strict types refuse it, 422), so most of them must be answered 200. Each response is checked
with

- ``not_a_server_error``: no 5xx (in process, an exception escaping the app counts too);
- ``status_code_conformance``: the status is one the operation declares;
- ``content_type_conformance``: the content type is one declared for that status;
- ``response_schema_conformance``: the body validates against the declared schema,

each check run on its own so a failure is counted under the check that saw it, with a curl
reproduction of the first few failures of each kind.

Two targets, one engine: the app in process (ASGI, what ``tests/service/test_fuzz.py`` runs
with a few examples per operation), and a live ``ranker serve`` on a free port (this script;
the long run)::

    python loadtest/fuzz.py --cases 10000 --out results/fuzz/schemathesis.json

The server runs on the default bundle with an admin token, logs under a temporary folder, a
small ``max_candidates`` / ``max_k`` / ``max_body_bytes`` so generated bodies hit the limits,
and seeded exploration. Rounds of generation (one hypothesis seed per round) repeat until at
least ``--cases`` requests were sent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "fuzz-admin-token"
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# Settings of the fuzzed service (as RANKER_* values): limits small enough that generated
# bodies reach them.
FUZZ_SETTINGS: dict[str, Any] = {
    "bundle_dir": str(ROOT / "models" / "default"),
    "admin_token": TOKEN,
    "max_candidates": 16,
    "max_k": 10,  # the default k: beyond it (a RANKER_MAX_K below 10 refuses a request without k)
    "max_body_bytes": 4096,
    "explore_seed": 7,
}
# Relative weight of each operation in a round (its max_examples per mode = weight * scale).
WEIGHTS = {
    "POST /v1/rank": 8,
    "POST /v1/noop": 4,
    "POST /v1/feedback": 5,
    "POST /admin/reload": 1,  # a reload with the token loads and warms a bundle (0.3 s)
    "POST /admin/experiment": 4,
    "GET /v1/models": 1,
    "GET /healthz": 1,
    "GET /readyz": 1,
    "GET /metrics": 1,
}
KEEP_FAILURES = 5  # reproductions kept per (target, check, status)
VALID_SHAPED = {"POST /v1/rank", "POST /v1/noop", "POST /v1/feedback", "POST /admin/reload",
                "POST /admin/experiment"}  # fmt: skip


def fuzz_settings(log_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The fuzzed service's settings as keyword arguments of ``service.settings.Settings``."""
    return {**FUZZ_SETTINGS, "log_dir": str(log_dir), **overrides}


def checks() -> dict[str, Callable]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return {
        "not_a_server_error": not_a_server_error,
        "status_code_conformance": status_code_conformance,
        "content_type_conformance": content_type_conformance,
        "response_schema_conformance": response_schema_conformance,
    }


@dataclass(frozen=True)
class Target:
    """One operation in one generation mode, with the right admin token or without it."""

    label: str  # "POST /v1/rank"
    mode: str  # "positive" | "negative" | "valid"
    token: bool  # send the right bearer token (admin routes only)

    @property
    def name(self) -> str:
        auth = " +token" if self.token else ""
        return f"{self.label} [{self.mode}{auth}]"


@dataclass
class Tally:
    """What a fuzz run saw: cases and statuses per target, failures per check."""

    cases: Counter = field(default_factory=Counter)  # target name -> cases sent
    statuses: dict[str, Counter] = field(default_factory=dict)  # target -> status -> n
    failures: Counter = field(default_factory=Counter)  # check -> failed cases
    transport_errors: int = 0  # requests that got no response (live server)
    examples: list[dict] = field(default_factory=list)  # reproductions
    _kept: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def record(self, target: Target, status: int | str) -> None:
        self.cases[target.name] += 1
        self.statuses.setdefault(target.name, Counter())[str(status)] += 1

    def fail(self, target: Target, check: str, status: int | str, detail: str,
             repro: str) -> None:  # fmt: skip
        self.failures[check] += 1
        key = (target.name, check, str(status))
        self._kept[key] += 1
        if self._kept[key] <= KEEP_FAILURES:
            self.examples.append({"target": target.name, "check": check, "status": status,
                                  "detail": detail[:2000], "curl": repro[:4000]})  # fmt: skip

    def summary(self) -> dict[str, Any]:
        by_check = {c: self.failures.get(c, 0) for c in CHECK_NAMES}
        return {
            "cases": self.total,
            "server_errors_5xx": by_check["not_a_server_error"],
            "schema_violations": by_check["response_schema_conformance"],
            "status_code_violations": by_check["status_code_conformance"],
            "content_type_violations": by_check["content_type_conformance"],
            "transport_errors": self.transport_errors,
            "failures_by_check": by_check,
            "cases_by_target": dict(sorted(self.cases.items())),
            "statuses_by_target": {
                t: dict(sorted(c.items())) for t, c in sorted(self.statuses.items())
            },
            "failure_examples": self.examples,
        }


def targets(schema: Any) -> list[tuple[Target, Any]]:
    """(target, operation) for every operation of ``schema``: both modes, and the admin
    routes once more with the right token."""
    out = []
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        has_input = bool(op.body) or any(True for _ in op.iter_parameters())
        modes: tuple[str, ...] = ("positive", "negative") if has_input else ("positive",)
        if label in VALID_SHAPED:
            modes += ("valid",)
        for mode in modes:
            if op.path.startswith("/admin/"):
                out.append((Target(label, mode, True), op))
                if mode == "valid":
                    continue  # valid bodies are for the token holder
            out.append((Target(label, mode, False), op))
    return out


@dataclass(frozen=True)
class Names:
    """What a schema cannot say: the served bundle's arms, user-feature names, item ids."""

    bundle_dir: str
    arms: tuple[str, ...]
    user_fields: tuple[str, ...]
    items: tuple[int, ...]

    @classmethod
    def of(cls, bundle_dir: str | Path) -> Names:
        from runtime.bundle import load_bundle

        b = load_bundle(Path(bundle_dir))
        fields = tuple(f.name for f in b.spec.group("user") if f.source != "user_id")
        ids = b.tables.item_ids
        items = tuple(int(i) for i in ids[:: max(1, len(ids) // 512)])  # 512 spread over it
        return cls(str(Path(bundle_dir).resolve()), tuple(sorted(b.models)), fields, items)


def integral(x: Any) -> Any:
    """``x`` with every whole float written as an integer (bools kept)."""
    if isinstance(x, float) and x.is_integer() and abs(x) <= 2**63 - 1:
        return int(x)
    if isinstance(x, dict):
        return {k: integral(v) for k, v in x.items()}
    if isinstance(x, list):
        return [integral(v) for v in x]
    return x


def make_valid(label: str, body: Any, r: int, names: Names) -> Any:
    """A positive ``body`` of ``label`` with real names and integers (``r``: a generated int
    choosing among the names)."""
    body = integral(body)
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if label in ("POST /v1/rank", "POST /v1/noop", "POST /v1/feedback"):
        if body.get("arm") is not None:
            body["arm"] = names.arms[r % len(names.arms)]
    if label in ("POST /v1/rank", "POST /v1/noop"):
        if isinstance(body.get("user_features"), dict):
            values = body["user_features"].values()
            fields = names.user_fields
            body["user_features"] = {fields[(i + r) % len(fields)]: v for i, v in enumerate(values)}
        cands = body.get("candidates", [])
        real = [names.items[(c + r) % len(names.items)] if i % 2 == 0 else c
                for i, c in enumerate(cands)]  # fmt: skip
        body["candidates"] = list(dict.fromkeys(real))  # distinct, order kept
    elif label == "POST /v1/feedback":
        for i, e in enumerate(body.get("events", [])):
            if i % 2 == 0:
                e["item_id"] = names.items[(e["item_id"] + r) % len(names.items)]
    elif label == "POST /admin/reload":
        body["bundle_dir"] = None if r % 2 else names.bundle_dir
    elif label == "POST /admin/experiment":
        arms: dict[str, dict] = {}
        for i, a in enumerate(body["arms"]):
            arms.setdefault(names.arms[(i + r) % len(names.arms)], a)
        total = sum(a["weight"] for a in arms.values())
        for name, a in arms.items():
            a["name"] = name
            a["weight"] = a["weight"] / total if total > 0 else 1 / len(arms)
        body["arms"] = list(arms.values())
        if "overrides" in body:
            body["overrides"] = {k: list(arms)[(i + r) % len(arms)]
                                 for i, k in enumerate(body["overrides"])}  # fmt: skip
    return body


def fuzz(
    schema: Any,
    *,
    scale: int,
    seed: int | None = None,
    tally: Tally | None = None,
    names: Names | None = None,
    session: Any = None,
    base_url: str | None = None,
    timeout_s: float = 30.0,
) -> Tally:
    """One round: each target gets ``weight * scale`` generated cases at most (hypothesis
    stops early where an operation has fewer distinct inputs, e.g. a GET without
    parameters). ``seed`` None: derandomised (the same cases on every run)."""
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    tally = tally or Tally()
    names = names or Names.of(FUZZ_SETTINGS["bundle_dir"])
    for target, op in targets(schema):
        headers = {"authorization": f"Bearer {TOKEN}"} if target.token else None
        mode = GenerationMode.NEGATIVE if target.mode == "negative" else GenerationMode.POSITIVE
        strategy = op.as_strategy(mode, headers=headers)
        if target.mode == "valid":
            strategy = st.tuples(strategy, st.integers(0, 2**20)).map(
                _validator(target.label, names)
            )
        n = WEIGHTS.get(target.label, 1) * scale
        one = _case_runner(target, tally, session, base_url, timeout_s)
        settings = hypothesis.settings(
            max_examples=n,
            derandomize=seed is None,
            database=None,
            deadline=None,
            phases=[Phase.generate],  # failures are recorded, not raised: nothing to shrink
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        test = settings(hypothesis.given(case=strategy)(one))
        if seed is not None:
            test = hypothesis.seed(seed)(test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                test()
            except hypothesis.errors.Unsatisfiable:
                pass  # a negative mode with nothing to negate
    return tally


def _case_runner(target: Target, tally: Tally, session: Any, base_url: str | None,
                 timeout_s: float) -> Callable[[Any], None]:  # fmt: skip
    """The body of one target's hypothesis test: send the case, run each check on its own,
    record the outcome (nothing is raised, so every generated case is sent)."""
    from schemathesis.core.failures import Failure, FailureGroup

    check_fns = checks()

    def one(case: Any) -> None:
        try:
            response = case.call(base_url=base_url, session=session, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 (an exception escaping the app is a finding)
            if base_url is not None and _is_transport_error(e):
                tally.transport_errors += 1
                tally.record(target, "no response")
                return
            tally.record(target, "raised")
            where = "".join(traceback.format_exception(e)[-4:])
            tally.fail(target, "not_a_server_error", "raised", where,
                       case.as_curl_command(base_url=base_url))  # fmt: skip
            return
        tally.record(target, response.status_code)
        for name, check in check_fns.items():
            try:
                case.validate_response(response, checks=[check])
            except (FailureGroup, Failure) as e:
                group = e.exceptions if isinstance(e, FailureGroup) else (e,)
                detail = "; ".join(f"{f.title}: {f.message}" for f in group)
                detail += f"\nresponse body: {response.content[:500]!r}"
                tally.fail(target, name, response.status_code, detail,
                           case.as_curl_command(base_url=base_url))  # fmt: skip

    return one


def _validator(label: str, names: Names) -> Callable[[tuple[Any, int]], Any]:
    def valid(drawn: tuple[Any, int]) -> Any:
        case, r = drawn
        case.body = make_valid(label, case.body, r, names)
        return case

    return valid


def _is_transport_error(e: Exception) -> bool:
    import requests

    return isinstance(e, requests.exceptions.RequestException)


# --- the live server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log_dir: Path, server_log: Path) -> subprocess.Popen:
    """``ranker serve`` with the fuzz settings on ``port``, its output to ``server_log``;
    returns once /readyz says ready."""
    import requests

    env = dict(os.environ)
    for key, value in fuzz_settings(log_dir, port=port).items():
        env[f"RANKER_{key.upper()}"] = str(value)
    ranker = Path(sys.executable).with_name("ranker")
    cmd = [str(ranker)] if ranker.exists() else [sys.executable, "-m", "ranker_cli"]
    with server_log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "serve"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ranker serve exited: {server_log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ranker serve did not become ready in 120 s")


def stop_server(proc: subprocess.Popen) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class Run:
    tally: Tally
    rounds: int
    seconds: float


def live_rounds(url: str, cases: int, scale: int, seed: int) -> Iterator[Run]:
    """Rounds against ``url`` (a base URL) until ``cases`` requests were sent."""
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tally, rounds, t0 = Tally(), 0, time.perf_counter()
    with requests.Session() as session:
        while tally.total < cases:
            fuzz(schema, scale=scale, seed=seed + rounds, tally=tally, session=session,
                 base_url=url)  # fmt: skip
            rounds += 1
            yield Run(tally, rounds, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000, help="least generated requests")
    p.add_argument(
        "--scale", type=int, default=25, help="cases per operation and mode a round: weight * scale"
    )
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed of the first round")
    p.add_argument("--url", help="fuzz this running service instead of starting one")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "fuzz" / "schemathesis.json")
    args = p.parse_args(argv)

    import schemathesis

    tracebacks: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ranker-fuzz-") as tmp:
        proc = None
        url = args.url
        server_log = Path(tmp) / "server.log"
        if url is None:
            port = free_port()
            proc = start_server(port, Path(tmp) / "logs", server_log)
            url = f"http://127.0.0.1:{port}"
        try:
            run = None
            for run in live_rounds(url.rstrip("/"), args.cases, args.scale, args.seed):
                s = run.tally.summary()
                print(f"round {run.rounds}: {s['cases']} cases, {s['server_errors_5xx']} 5xx, "
                      f"{s['schema_violations']} schema, {s['status_code_violations']} status, "
                      f"{s['content_type_violations']} content-type violations, "
                      f"{run.seconds:.0f} s", flush=True)  # fmt: skip
        finally:
            exit_code = stop_server(proc) if proc is not None else None
            if proc is not None:  # the server's own account of any 5xx
                log = server_log.read_text(errors="replace")
                tracebacks = [t[:3000] for t in log.split("Traceback")[1 : KEEP_FAILURES + 1]]
    assert run is not None
    report = {
        "command": "python loadtest/fuzz.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "schemathesis": schemathesis.__version__,
        "hypothesis": hypothesis.__version__,
        "python": platform.python_version(),
        "target": "ranker serve (live, 1 worker)" if proc is not None else url,
        "settings": {k: v for k, v in FUZZ_SETTINGS.items() if k != "admin_token"}
        | {"admin_token": "<set>"},
        "checks": list(CHECK_NAMES),
        "modes": ["positive", "negative", "valid"],
        "rounds": run.rounds,
        "first_seed": args.seed,
        "scale": args.scale,
        "seconds": round(run.seconds, 1),
        "server_exit_code": exit_code,
        **run.tally.summary(),
        "server_tracebacks": tracebacks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    s = report
    print(f"{s['cases']} cases in {s['seconds']} s: {s['server_errors_5xx']} 5xx, "
          f"{s['schema_violations']} schema, {s['status_code_violations']} status-code, "
          f"{s['content_type_violations']} content-type violations, {s['transport_errors']} "
          f"requests without a response -> {args.out}")  # fmt: skip
    return 1 if sum(s["failures_by_check"].values()) or s["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
