"""``ranker serve``: the service under uvicorn, configured by flags or ``RANKER_*`` variables.

Imports nothing from training and no torch: it runs from an install of the ``serve`` extra.
Flags override the environment; with several workers each process builds the app from the
environment (uvicorn's factory), Prometheus runs in multiprocess mode over a temporary
folder unless ``PROMETHEUS_MULTIPROC_DIR`` is set, and admin changes go to every worker
through a temporary control folder unless ``RANKER_CONTROL_DIR`` is set (service.control).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="run the ranking service (FastAPI under uvicorn)")
    s.add_argument("--bundle", help="bundle folder (RANKER_BUNDLE_DIR; default models/default)")
    s.add_argument("--host", help="bind address (RANKER_HOST; default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (RANKER_PORT; default 8000)")
    s.add_argument("--workers", type=int, help="worker processes (RANKER_WORKERS; default 1)")
    s.add_argument("--redis-url",
                   help="session state in Redis (RANKER_REDIS_URL; logs go to a Redis stream "
                   "only when RANKER_LOG_STREAM_KEY is also set)")  # fmt: skip
    s.add_argument("--experiment", help="experiment JSON file (RANKER_EXPERIMENT_FILE)")
    s.add_argument("--log-dir", help="exposure/feedback Parquet folder (RANKER_LOG_DIR)")
    return s


def _nodelay_protocol(base_name: str) -> type:
    if base_name == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class NoDelay(base):  # type: ignore[misc,valid-type]
        """uvicorn's HTTP protocol with Nagle's algorithm off on every connection.

        With ``--workers N > 1`` uvicorn binds the listening socket itself with ``proto`` 0,
        and asyncio sets ``TCP_NODELAY`` only on sockets whose ``proto`` is TCP; with Nagle
        on, each keep-alive request after a connection's first waits ~40 ms for the client's
        delayed ACK (uvicorn issue 3149). Setting the option per connection fixes it for any
        worker count.
        """

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    NoDelay.__name__ = NoDelay.__qualname__ = f"NoDelay{base.__name__}"
    return NoDelay


def __getattr__(name: str) -> type:
    # uvicorn imports the protocol by name in every worker: built lazily so that importing
    # this module (for --help) does not import uvicorn.
    if name == "NoDelayH11Protocol":
        return _nodelay_protocol("h11")
    if name == "NoDelayHttpToolsProtocol":
        return _nodelay_protocol("httptools")
    raise AttributeError(name)


def http_implementation(requested: str) -> str:
    """The HTTP parser ``ranker serve`` runs: ``requested`` ("h11" or "httptools"), or for
    "auto" httptools when it is installed (the ``serve`` extra installs it) and h11 else.
    Raises ValueError for "httptools" when it is not installed."""
    have = importlib.util.find_spec("httptools") is not None
    if requested == "auto":
        return "httptools" if have else "h11"
    if requested == "httptools" and not have:
        raise ValueError("http='httptools' but httptools is not installed (pip install httptools)")
    return requested


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.settings import Settings

    flags = {"RANKER_BUNDLE_DIR": args.bundle, "RANKER_HOST": args.host,
             "RANKER_PORT": args.port, "RANKER_WORKERS": args.workers,
             "RANKER_REDIS_URL": args.redis_url, "RANKER_EXPERIMENT_FILE": args.experiment,
             "RANKER_LOG_DIR": args.log_dir}  # fmt: skip
    for key, value in flags.items():
        if value is not None:
            os.environ[key] = str(value)
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"ranker serve: error: {e}", file=sys.stderr)
        return 2
    if not (settings.bundle_dir / "manifest.json").is_file():
        print(
            f"ranker serve: error: {settings.bundle_dir} is not a bundle folder (no "
            "manifest.json): pass --bundle DIR (RANKER_BUNDLE_DIR), or run from the repository "
            "root for models/default (`ranker default-bundle --overwrite` rebuilds that one)",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ranker-prom-")
    if settings.workers > 1 and settings.control_dir is None:
        # Admin changes reach every worker through a shared folder (service.control).
        os.environ["RANKER_CONTROL_DIR"] = tempfile.mkdtemp(prefix="ranker-control-")
    try:
        http = http_implementation(settings.http)
    except ValueError as e:
        print(f"ranker serve: error: {e}", file=sys.stderr)
        return 2
    protocol = {"h11": "NoDelayH11Protocol", "httptools": "NoDelayHttpToolsProtocol"}[http]
    uvicorn.run("service.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=settings.workers, log_level="info",
                http=f"service.cli:{protocol}", loop=settings.loop)  # fmt: skip
    return 0


def join_logs_command(args: argparse.Namespace) -> int:
    """Join feedback events onto served exposures into one impression-log Parquet file."""
    import pyarrow.parquet as pq

    from contract.schema import LogValidationError, validate_log_table
    from service.exposure import join_logs

    log_dir = Path(args.log_dir)
    if not any((log_dir / "exposures").glob("part-*.parquet")):
        print(f"ranker join-logs: error: no exposure shards under {log_dir / 'exposures'} "
              "(is it the service's RANKER_LOG_DIR?)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        table = join_logs(log_dir / "exposures", log_dir / "feedback")
        validate_log_table(table, str(args.out))
    except (OSError, LogValidationError, ValueError) as e:
        print(f"ranker join-logs: error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    shown = int((table.column("position").to_numpy() >= 0).sum())
    print(f"wrote {args.out}: {table.num_rows:,} rows ({shown:,} impressions), valid")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker")
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    j = sub.add_parser("join-logs", help="join the service's feedback onto its exposure log")
    j.add_argument("--log-dir", default="logs",
                   help="the service log folder: exposures/ and feedback/ (logs)")  # fmt: skip
    j.add_argument("--out", required=True, help="Parquet file to write (impression-log schema)")
    args = p.parse_args(argv)
    if args.command == "join-logs":
        return join_logs_command(args)
    return serve(args)
