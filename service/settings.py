"""The service's settings: one ``pydantic_settings`` class read from ``RANKER_*`` variables.

``Settings`` is built once (in ``create_app`` or a test) and passed to what needs it; no
module holds a settings object. Every field has a description and bounds, so a bad value is
refused at start with a message naming the field (``RANKER_STATE_TTL_S=-1`` ->
``state_ttl_s: Input should be greater than 0``).

Groups: the app (bundle, experiment, request limits, admin token, server), the session-state
store (in-process or Redis), the exposure log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment (prefix ``RANKER_``)."""

    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="forbid", frozen=True)

    # The app.
    bundle_dir: Path = Field(
        Path("models/default"), description="Model bundle folder served at start."
    )
    experiment_file: Path | None = Field(
        None,
        description="Experiment JSON (seed, arms with weights and exploration, QA overrides); "
        "unset: the default split over the bundle's models (see service.app).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the /admin routes (reload a bundle, change the "
        "experiment); unset: admin routes answer 403.",
    )
    max_candidates: int = Field(1000, ge=1, description="Most candidate items per request.")
    max_k: int = Field(100, ge=1, description="Longest list a request may ask for.")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body accepted, bytes (413 beyond)."
    )
    explore_seed: int | None = Field(
        None, description="Seed of the exploration draws (unset: fresh entropy per process)."
    )
    otel: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry (request spans, metrics and logs to the "
        "global OpenTelemetry providers); off: the service's metrics are Prometheus, and the "
        "per-request provider checks cost about 3% of a worker's time.",
    )
    host: str = Field("127.0.0.1", description="Address `ranker serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `ranker serve` binds.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes of `ranker serve`.")
    http: Literal["auto", "h11", "httptools"] = Field(
        "auto",
        description="HTTP parser of `ranker serve`: auto is httptools when installed (the "
        "serve extra installs it), else h11.",
    )
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="Event loop of `ranker serve` (uvicorn's choice): auto is uvloop when "
        "installed (the serve extra installs it), else asyncio.",
    )
    control_dir: Path | None = Field(
        None,
        description="Folder the workers share for admin changes (reload, experiment): each "
        "worker applies every change published there (see service.control); `ranker serve` "
        "makes a temporary one for --workers > 1; unset: an admin call changes its process.",
    )
    control_poll_s: float = Field(
        0.2, gt=0, le=60, description="Seconds between a worker's checks of the control folder."
    )
    control_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait of an admin call for every worker to apply its change; the "
        "answer gives how many did.",
    )

    # Session-state store.
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db) for shared session state and the log "
        "stream; unset: session state stays in this process.",
    )
    state_ttl_s: float = Field(
        1800.0, gt=0, description="Seconds a session state lives after its last write."
    )
    state_max_sessions: int = Field(
        100_000,
        ge=1,
        description="In-process store: most session states held; the least recently used "
        "is evicted beyond it.",
    )
    state_key_prefix: str = Field(
        "ranker:", description="Prefix of every Redis key this service writes."
    )
    redis_connect_timeout_ms: float = Field(
        50.0, gt=0, description="Redis socket connect timeout, milliseconds."
    )
    redis_read_timeout_ms: float = Field(
        20.0, gt=0, description="Redis socket read timeout per command, milliseconds."
    )
    redis_breaker_ms: float = Field(
        1000.0,
        ge=0,
        description="After a Redis connection error, or redis_breaker_timeouts read timeouts "
        "in a row, skip Redis (cold state, no write) for this many milliseconds before trying "
        "again; 0 tries on every call.",
    )
    redis_breaker_timeouts: int = Field(
        3,
        ge=1,
        description="Consecutive Redis read timeouts that open the breaker (one late reply "
        "from a busy worker's event loop costs that request its state, not the next second's).",
    )

    # Exposure and feedback log.
    log_dir: Path = Field(
        Path("logs"),
        description="Local log folder: exposures/ and feedback/ Parquet shards are written "
        "under it (when no log stream is configured).",
    )
    log_flush_rows: int = Field(
        50_000, ge=1, description="Most rows per written file or stream entry."
    )
    log_flush_s: float = Field(
        5.0, gt=0, description="Longest time a logged row waits in memory before a flush."
    )
    log_queue_rows: int = Field(
        200_000,
        ge=1,
        description="Most rows waiting to be written per log; beyond it new rows are dropped "
        "and counted.",
    )
    log_stream_key: str | None = Field(
        None,
        description="Redis stream key prefix for the logs (<key>:exposures, <key>:feedback); "
        "set to log to Redis instead of local Parquet (needs redis_url).",
    )
    log_stream_maxlen: int = Field(
        100_000,
        ge=1,
        description="Approximate most entries kept per log stream (MAXLEN ~); an entry holds "
        "one flushed batch of rows.",
    )
    log_stream_timeout_ms: float = Field(
        1000.0,
        gt=0,
        description="Redis connect and read timeout of a log stream write, milliseconds (off "
        "the request path; a batch may be megabytes).",
    )

    @model_validator(mode="after")
    def _stream_needs_redis(self) -> Settings:
        if self.log_stream_key is not None and self.redis_url is None:
            raise ValueError(
                f"log_stream_key={self.log_stream_key!r} needs redis_url (RANKER_REDIS_URL)"
            )
        return self
