"""``ranker serve``: the service under uvicorn, configured by flags or ``RANKER_*`` variables.

Imports nothing from training and no torch: it runs from an install of the ``serve`` extra.
Flags override the environment; with several workers each process builds the app from the
environment (uvicorn's factory), and Prometheus runs in multiprocess mode over a temporary
folder unless ``PROMETHEUS_MULTIPROC_DIR`` is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="run the ranking service (FastAPI under uvicorn)")
    s.add_argument("--bundle", help="bundle folder (RANKER_BUNDLE_DIR; default models/default)")
    s.add_argument("--host", help="bind address (RANKER_HOST; default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (RANKER_PORT; default 8000)")
    s.add_argument("--workers", type=int, help="worker processes (RANKER_WORKERS; default 1)")
    s.add_argument("--redis-url", help="session state (and logs, with --log-stream) in Redis")
    s.add_argument("--experiment", help="experiment JSON file (RANKER_EXPERIMENT_FILE)")
    s.add_argument("--log-dir", help="exposure/feedback Parquet folder (RANKER_LOG_DIR)")
    return s


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
            f"ranker serve: error: {settings.bundle_dir} is not a bundle folder "
            "(no manifest.json); build one with `ranker default-bundle`",
            file=sys.stderr,
        )
        return 2
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ranker-prom-")
    uvicorn.run("service.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=settings.workers, log_level="info")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker")
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    return serve(p.parse_args(argv))
