# The serving image: `ranker serve` on the default bundle, from the `serve` extra only (no
# torch, no training code), as a non-root user.
#
#   docker build -t ranker:0.1.0 .
#   docker run --rm -p 8000:8000 ranker:0.1.0
#
# Two stages: the first builds a virtual environment with the package and its serving
# dependencies; the second copies that environment and the default bundle onto a clean slim
# base (no pip cache, no build files, no sources beyond the installed package).

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the serving install needs: the project file, the entry point module and the three
# serving packages (training/ stays out, so it cannot be imported by accident).
COPY pyproject.toml README.md ranker_cli.py ./
COPY contract/ contract/
COPY runtime/ runtime/
COPY service/ service/
# "./[serve]": this folder with its serve extra (a local path, so nothing to pin here).
RUN pip install --no-cache-dir "./[serve]"


FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="ranker" \
      org.opencontainers.image.description="List-wise RL ranking service (ranker serve) with the default bundle"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RANKER_HOST=0.0.0.0 \
    RANKER_PORT=8000 \
    RANKER_BUNDLE_DIR=/app/models/default \
    RANKER_LOG_DIR=/app/logs

RUN groupadd --system --gid 10001 ranker \
    && useradd --system --uid 10001 --gid ranker --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin ranker

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The bundle stays owned by root: the service only reads it (sha256-verified at load).
COPY models/default/ /app/models/default/
RUN mkdir -p /app/logs && chown ranker:ranker /app/logs

# Numeric, so that an orchestrator can verify it is not root (runAsNonRoot).
USER 10001:10001
EXPOSE 8000

# Liveness from inside the container, with the standard library (no curl in the image):
# urlopen raises on a refused connection or a non-2xx answer, so the exit code is non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RANKER_PORT', '8000') + '/healthz', timeout=2)"]

# The README's command; RANKER_* variables configure it (RANKER_WORKERS, RANKER_REDIS_URL, ...).
CMD ["ranker", "serve"]
