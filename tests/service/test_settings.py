"""Settings: read from RANKER_* variables, bad values refused with the field's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_keep_state_in_process_and_logs_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANKER_REDIS_URL", "RANKER_LOG_STREAM_KEY"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.redis_url is None and s.log_stream_key is None
    assert s.log_dir == Path("logs")


def test_values_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKER_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("RANKER_STATE_TTL_S", "90")
    monkeypatch.setenv("RANKER_REDIS_READ_TIMEOUT_MS", "15")
    s = Settings()
    assert (s.redis_url, s.state_ttl_s, s.redis_read_timeout_ms) == (
        "redis://cache:6379/1",
        90.0,
        15.0,
    )


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("RANKER_STATE_TTL_S", "-1", "state_ttl_s"),
        ("RANKER_STATE_MAX_SESSIONS", "zero", "state_max_sessions"),
        ("RANKER_LOG_FLUSH_ROWS", "0", "log_flush_rows"),
        ("RANKER_REDIS_CONNECT_TIMEOUT_MS", "0", "redis_connect_timeout_ms"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_a_log_stream_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANKER_REDIS_URL", raising=False)
    with pytest.raises(ValidationError, match="log_stream_key"):
        Settings(log_stream_key="ranker:logs")


def test_unknown_keyword_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="state_ttl"):
        Settings(state_ttl=5)
