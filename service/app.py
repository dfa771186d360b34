"""The ranking service: FastAPI app, built by :func:`create_app` from one :class:`Settings`.

Everything heavy is built in the lifespan handler and kept on ``app.state`` (STYLE.md 1): the
bundle (loaded, verified and warmed through every graph before /readyz says ready), the
experiment, the session-state store, the exposure and feedback log sinks, the metrics
registry. Routes are short and read them through :func:`services`.

The serving pair (bundle + experiment) is one immutable :class:`Serving` object replaced
atomically by a reload or an experiment change; a request takes it once at its start, so a
request in flight finishes on the bundle it started with and a reload never fails one.

POST /v1/rank: the user's arm (GrowthBook-compatible bucketing, QA override), the session's
cached state under ``state_key(state_schema_version, arm, session)`` (a failing store serves a
cold state: "degraded"), the arm's model through :func:`runtime.lists.build_lists` with the
arm's exploration, the new state written back, and the served list logged as impression-log
rows (every candidate, shown ones with position and propensity) off the request path.
POST /v1/feedback: events logged, clicks added to the session state (the ``session_clicks``
list field of the next request). /v1/models, /healthz, /readyz, /metrics, and the
token-protected /admin/reload and /admin/experiment.

Default experiment (no ``experiment_file``): ``drl_student`` 80% (exploration 5% per
position among its top 3), ``drl_teacher`` 10%, ``wide_deep_weighted`` 10%, ``mmrf_watchtime``
10% (:data:`DEFAULT_SPLIT`), over whichever of these the bundle has (weights renormalised: with
all four, 0.8 / 1.1 = 72.7% and 9.1% each), seed ``ranker-default``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.bundle import BundleError
from contract.schema import FEEDBACK_BINARY
from runtime.bundle import Bundle, load_bundle
from runtime.lists import Exploration, RankingInputError, SessionState, build_lists
from service.bucketing import (
    Arm,
    Experiment,
    experiment_from_dict,
    experiment_to_dict,
)
from service.control import ControlFolder, ControlRecord
from service.exposure import FEEDBACK_SCHEMA, LogSinks, build_log_sinks
from service.metrics import Metrics, build_metrics, render_metrics
from service.schemas import (
    EXPERIMENT_SCHEMA,
    INT64,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    ModelsResponse,
    NotReady,
    RankRequest,
    RankResponse,
    Ready,
    ReloadRequest,
    ValidationErrorBody,
)
from service.settings import Settings
from service.state_store import StateStore, build_state_store, state_key

log = logging.getLogger("ranker")

#: (arm, weight, exploration rate, exploration top-k) of the built-in experiment. Appending
#: an arm leaves the weights of bundles without it as they were (renormalised over the arms a
#: bundle has). ``mmrf_watchtime`` (MMRF's WatchTime actor) gets the comparison arms' 0.1:
#: the watch-time A/B of issue 10 compares it with ``wide_deep_weighted`` and the student,
#: so it needs as much traffic as the arm it is measured against; no exploration (the actor
#: is deterministic and its logged propensities stay 1) until its online result is known.
DEFAULT_SPLIT = (("drl_student", 0.8, 0.05, 3), ("drl_teacher", 0.1, 0.0, 1),
                 ("wide_deep_weighted", 0.1, 0.0, 1), ("mmrf_watchtime", 0.1, 0.0, 1))  # fmt: skip


@dataclass(frozen=True)
class Serving:
    """What a request ranks with; replaced whole, never mutated."""

    bundle: Bundle
    experiment: Experiment


@dataclass
class Services:
    settings: Settings
    serving: Serving
    store: StateStore
    sinks: LogSinks
    metrics: Metrics
    registry: CollectorRegistry
    rng: np.random.Generator
    ready: bool = False
    default_experiment: bool = True
    """The experiment is the built-in split (no file, no admin change): a reload re-derives it
    for the new bundle's models."""
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    control: ControlFolder | None = None
    """The folder the workers share for admin changes (None: this process alone)."""
    generation: int = 0
    """The control record generation this process serves (0: none applied)."""


class ServiceError(Exception):
    """A request the service refuses: HTTP ``status``, the field at fault and a message."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def default_experiment(bundle: Bundle) -> Experiment:
    arms = [(n, w, e, k) for n, w, e, k in DEFAULT_SPLIT if n in bundle.models]
    if not arms:
        arms = [(n, 1.0, 0.0, 1) for n in bundle.models]
    total = sum(a[1] for a in arms)
    return Experiment(
        seed="ranker-default",
        arms=tuple(Arm(n, w / total, e, k) for n, w, e, k in arms),
    )


def check_experiment(experiment: Experiment, bundle: Bundle) -> None:
    """Every arm must name a model of the bundle; raises ValueError naming the arm."""
    missing = [a.name for a in experiment.arms if a.name not in bundle.models]
    if missing:
        raise ValueError(
            f"experiment arms {missing} have no model in bundle {bundle.version} "
            f"(models: {sorted(bundle.models)})"
        )


def load_experiment(settings: Settings, bundle: Bundle) -> Experiment:
    if settings.experiment_file is None:
        return default_experiment(bundle)
    try:
        raw = json.loads(Path(settings.experiment_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"experiment_file {settings.experiment_file}: {e}") from None
    exp = experiment_from_dict(raw)
    check_experiment(exp, bundle)
    return exp


def load_serving_bundle(path: Path) -> Bundle:
    """Load, verify and warm a bundle for serving: one request per graph call (batch size 1,
    so onnxruntime folds the graphs' shape arithmetic; see :func:`runtime.bundle.load_bundle`).
    Raises what ``load_bundle`` raises."""
    return load_bundle(path, batch_size=1)


async def services(request: Request) -> Services:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on
    # every request for an attribute read.
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
Authorization = Annotated[str | None, Header()]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from ``RANKER_*``); heavy work in lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = CollectorRegistry()
        metrics = build_metrics(registry)
        control = ControlFolder(settings.control_dir) if settings.control_dir else None
        record = await asyncio.to_thread(control.read) if control else None
        if record is not None:  # an admin change was published: serve it, not the settings
            serving = await asyncio.to_thread(serving_from_record, record)
        else:
            bundle = await asyncio.to_thread(load_serving_bundle, settings.bundle_dir)
            serving = Serving(bundle, load_experiment(settings, bundle))
        store = build_state_store(settings, on_event=metrics.record_state_event)
        sinks = build_log_sinks(settings, on_drop=metrics.record_log_drop)
        sinks.start()
        default = (record.experiment is None) if record else settings.experiment_file is None
        svc = Services(settings, serving, store, sinks, metrics, registry,
                       np.random.default_rng(settings.explore_seed), default_experiment=default,
                       control=control)  # fmt: skip
        app.state.services = svc
        _record_serving(svc)
        follower = None
        if control is not None:
            if record is not None:
                svc.generation = record.generation
                await asyncio.to_thread(control.acknowledge, record.generation,
                                        serving.bundle.version, None)  # fmt: skip
            follower = asyncio.create_task(_follow_control(svc))
        svc.ready = True
        try:
            yield
        finally:
            svc.ready = False
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await sinks.close()
            await store.close()

    app = FastAPI(
        title="ranker",
        version="1",
        summary="List-wise RL ranking: cached-state list building, A/B arms, exploration.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry checks the global providers on every request; the
        # service's own metrics are Prometheus, so it is off unless asked for.
        telemetry={"tracing": settings.otel, "metrics": settings.otel, "logs": settings.otel},
    )
    _install_errors(app, settings)
    _install_routes(app)
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document states /v1/rank's limits (``max_candidates``, ``max_k``; /v1/noop
    takes the same body without them): clients and API fuzzers see the bounds the service
    refuses beyond (422). Integer bounds stay integers (FastAPI's document model makes them
    floats: 2^63 - 1 became 2^63)."""

    def exact(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                for key in ("minimum", "maximum"):
                    if isinstance(node.get(key), float) and node[key].is_integer():
                        node[key] = min(int(node[key]), INT64)
            for v in node.values():
                exact(v)
        elif isinstance(node, list):
            for v in node:
                exact(v)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            exact(doc)
            body = doc["paths"]["/v1/rank"]["post"]["requestBody"]["content"]["application/json"]
            limits = {"candidates": {"maxItems": settings.max_candidates},
                      "k": {"maximum": settings.max_k}}  # fmt: skip
            body["schema"] = {"allOf": [body["schema"], {"properties": limits}]}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each worker reads its settings from RANKER_*)."""
    return create_app(Settings())


# --- errors ------------------------------------------------------------------------------------


def _install_errors(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # loc is ("body", <char offset>): name the body
                pos, doc = e["loc"][-1], exc.body if isinstance(exc.body, str) else ""
                why = e.get("ctx", {}).get("error", e["msg"])
                errors.append({"field": "body", "value": doc[max(0, pos - 20) : pos + 20],
                               "message": f"invalid JSON at character {pos}: {why}"})  # fmt: skip
                continue
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            value = e.get("input")
            try:
                json.dumps(value, allow_nan=False)  # as the response will: NaN is no JSON
            except (TypeError, ValueError):
                value = repr(value)
            if isinstance(value, (dict, list)) and len(json.dumps(value)) > 200:
                value = f"<{type(value).__name__} of {len(value)}>"
            errors.append({"field": ".".join(loc) or "body", "value": value, "message": e["msg"]})
        _count_error(request, "validation")
        first = errors[0] if errors else {"field": "body", "value": None, "message": "invalid"}
        return ErrorJSON(
            status_code=422,
            content={"error": f"{first['field']}: {first['message']} (got {first['value']!r})",
                     "errors": errors},
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot decode (not UTF-8) 400 {"detail": ...}; give it the
        # service's error body like every other refusal. Other statuses (404, 405) unchanged.
        if exc.status_code != 400:
            return await http_exception_handler(request, exc)
        cause = exc.__cause__
        why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc.detail)
        _count_error(request, "body")
        return ErrorJSON(status_code=400,
                         content={"error": f"body: not parseable as JSON ({why})",
                                  "field": "body"})  # fmt: skip

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client: counted (the error-ratio alert sees it) and answered with the
        # service's error body; Starlette still re-raises it so the server logs the traceback.
        _count_error(request, "internal")
        return ErrorJSON(status_code=500, content={"error": "internal error", "field": "server"})

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        _count_error(request, exc.field)
        return ErrorJSON(status_code=exc.status,
                         content={"error": exc.message, "field": exc.field})  # fmt: skip

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)


class ErrorJSON(JSONResponse):
    """An error body, non-ASCII escaped: it echoes what the client sent, and JSON's escapes
    can spell a lone surrogate (``"\\ud800"``) that UTF-8 cannot encode (a 500 before)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode()  # fmt: skip


class BodyLimit:
    """Pure ASGI middleware: a body over ``limit`` bytes is answered 413, by its
    Content-Length before anything is read, or counted as it arrives when it has none
    (chunked); a non-numeric Content-Length is answered 400. (Starlette's
    ``BaseHTTPMiddleware`` would cost about a millisecond a request here.)"""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(
                    send,
                    400,
                    "content-length",
                    f"content-length: not a number ({length.decode()!r})",
                )
            elif int(length) > self.limit:
                await _send_error(send, 413, "body",
                                  f"body of {int(length)} bytes exceeds {self.limit}")  # fmt: skip
            else:
                await self.app(scope, receive, send)
            return
        received, refused = 0, False

        async def counted() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    await _send_error(send, 413, "body",
                                      f"body exceeds {self.limit} bytes (chunked)")  # fmt: skip
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise


async def _send_error(send: Any, status: int, field: str, message: str) -> None:
    body = json.dumps({"error": message, "field": field}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _count_error(request: Request, reason: str) -> None:
    svc = getattr(request.app.state, "services", None)
    if svc is not None:
        svc.metrics.errors.labels(reason=reason[:32]).inc()


# --- routes ------------------------------------------------------------------------------------

# What the OpenAPI document declares besides each route's 200 (every status a route can answer,
# with the body it has). The body limit middleware answers any route.
Responses = dict[int | str, dict[str, Any]]
_LIMITS: Responses = {
    400: {"model": ErrorBody, "description": "Content-Length not a number, or a body that is "
          "not UTF-8"},
    413: {"model": ErrorBody, "description": "Body over max_body_bytes"},
}  # fmt: skip
_INVALID: Responses = {
    422: {"model": ValidationErrorBody, "description": "The body does not fit its schema"}
}
_REFUSED: Responses = {
    422: {"model": ValidationErrorBody | ErrorBody,
          "description": "The body does not fit its schema (errors[]), or the service refuses a "
          "value: a limit, an arm, a user feature (field)"},
}  # fmt: skip
_ADMIN: Responses = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "Admin routes disabled (no admin token set)"},
}


def _install_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], responses=_LIMITS)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Ready,
        responses={503: {"model": NotReady, "description": "Not ready yet"}, **_LIMITS},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Ready once the bundle is loaded, verified and warmed (503 before)."""
        svc = getattr(request.app.state, "services", None)
        if svc is None or not svc.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse({"status": "ready", "bundle_version": svc.serving.bundle.version})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, responses=_LIMITS)
    async def metrics(svc: Svc) -> Response:
        """Prometheus exposition (all workers' values under multiprocess mode)."""
        body, content_type = render_metrics(svc.registry)
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["ranking"], responses=_LIMITS)
    async def models(svc: Svc) -> ModelsResponse:
        """The serving bundle, its models and the traffic split."""
        return _models_info(svc)

    @app.post("/v1/rank", response_model=RankResponse, tags=["ranking"],
              responses={**_REFUSED, **_LIMITS})  # fmt: skip
    async def rank(body: RankRequest, svc: Svc) -> Response:
        """Rank the candidates into a list of ``k`` for the user's arm and session."""
        return await _rank(body, svc)

    @app.post("/v1/noop", tags=["ops"], responses={**_INVALID, **_LIMITS})
    async def noop(body: RankRequest) -> dict[str, int]:
        """The HTTP floor: the rank request's parsing and validation, no ranking (load tests
        measure it beside /v1/rank with the same payload)."""
        return {"candidates": len(body.candidates)}

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        tags=["ranking"],
        responses={**_REFUSED, **_LIMITS},
    )
    async def feedback(body: FeedbackRequest, svc: Svc) -> FeedbackResponse:
        """Log feedback events and add their clicks to the session's state."""
        return await _feedback(body, svc)

    @app.post("/admin/reload", tags=["admin"],
              responses={**_ADMIN, 409: {"model": ErrorBody, "description": "Bundle refused"},
                         **_INVALID, **_LIMITS})  # fmt: skip
    async def reload(body: ReloadRequest, svc: Svc,
                     authorization: Authorization = None) -> dict[str, Any]:  # fmt: skip
        """Load, verify and warm a bundle, then swap it in; a bad bundle is refused (409) and
        the current one keeps serving."""
        _check_token(svc, authorization)
        async with _admin_change(svc) as publish:
            path = Path(body.bundle_dir) if body.bundle_dir else svc.serving.bundle.path
            try:
                bundle = await asyncio.to_thread(load_serving_bundle, path)
                experiment = (default_experiment(bundle) if svc.default_experiment
                              else svc.serving.experiment)  # fmt: skip
                check_experiment(experiment, bundle)
            except (BundleError, ValueError, OSError) as e:
                raise ServiceError(409, "bundle_dir", f"bundle refused, still serving "
                                   f"{svc.serving.bundle.version}: {e}") from None  # fmt: skip
            old = svc.serving.bundle.version
            svc.serving = Serving(bundle, experiment)
            _record_serving(svc)
            record = await publish()
        workers = await _await_workers(svc, record)
        return {"status": "reloaded" if workers["applied"] == workers["expected"] else "partial",
                "from": old, "bundle_version": bundle.version, "generation": svc.generation,
                "workers": workers}  # fmt: skip

    @app.post("/admin/experiment", tags=["admin"], responses={**_ADMIN, **_REFUSED, **_LIMITS})
    async def experiment(body: Annotated[dict[str, Any], Body(json_schema_extra=EXPERIMENT_SCHEMA)],
                         svc: Svc,
                         authorization: Authorization = None) -> dict[str, Any]:  # fmt: skip
        """Replace the experiment (arms, weights, exploration, QA overrides)."""
        _check_token(svc, authorization)
        async with _admin_change(svc) as publish:
            try:
                exp = experiment_from_dict(body)
                check_experiment(exp, svc.serving.bundle)
            except ValueError as e:
                raise ServiceError(422, "experiment", str(e)) from None
            svc.serving = Serving(svc.serving.bundle, exp)
            svc.default_experiment = False
            _record_serving(svc)
            record = await publish()
        workers = await _await_workers(svc, record)
        return {"status": "updated" if workers["applied"] == workers["expected"] else "partial",
                "experiment": experiment_to_dict(exp), "generation": svc.generation,
                "workers": workers}  # fmt: skip


# --- admin changes across workers (service.control) ---------------------------------------------


def serving_from_record(record: ControlRecord, current: Serving | None = None) -> Serving:
    """The serving pair a control record describes: its bundle (``current``'s when it is the
    same folder and version: an experiment-only change loads nothing) and its experiment (or
    the default split). Blocking; raises BundleError, ValueError or OSError when the bundle
    cannot be loaded, is not the published version, or lacks an experiment arm."""
    if (current is not None and current.bundle.path.resolve() == Path(record.bundle_dir).resolve()
            and current.bundle.version == record.bundle_version):  # fmt: skip
        bundle = current.bundle
    else:
        bundle = load_serving_bundle(Path(record.bundle_dir))
        if bundle.version != record.bundle_version:
            raise BundleError(f"{record.bundle_dir} holds bundle {bundle.version}, the control "
                              f"record published {record.bundle_version}")  # fmt: skip
    if record.experiment is None:
        return Serving(bundle, default_experiment(bundle))
    experiment = experiment_from_dict(record.experiment)
    check_experiment(experiment, bundle)
    return Serving(bundle, experiment)


@contextlib.asynccontextmanager
async def _admin_change(svc: Services) -> AsyncIterator[Any]:
    """One admin change at a time: this process's reload lock and, with a control folder, the
    folder's lock, after catching up with the newest record. Yields ``publish()``, which
    writes the serving pair as the next record (None without a folder)."""
    async with svc.reload_lock:
        if svc.control is None:

            async def local() -> None:
                return None

            yield local
            return
        control = svc.control
        async with _folder_lock(control):
            record = await asyncio.to_thread(control.read)
            if record is not None and record.generation > svc.generation:
                await _apply_record(svc, record)

            async def publish() -> ControlRecord:
                b = svc.serving.bundle
                exp = None if svc.default_experiment else experiment_to_dict(svc.serving.experiment)
                # Absolute: every worker reads the same folder whatever the path it was given.
                folder = str(b.path.resolve())
                rec = await asyncio.to_thread(control.publish, folder, b.version, exp)
                svc.generation = rec.generation
                await asyncio.to_thread(control.acknowledge, rec.generation, b.version, None)
                return rec

            yield publish


@contextlib.asynccontextmanager
async def _folder_lock(control: ControlFolder) -> AsyncIterator[None]:
    stack = contextlib.ExitStack()
    await asyncio.to_thread(stack.enter_context, control.locked())
    try:
        yield
    finally:
        await asyncio.to_thread(stack.close)


async def _apply_record(svc: Services, record: ControlRecord) -> None:
    """Serve ``record`` (under the reload lock) and acknowledge it; a record this process
    cannot serve is acknowledged with the error and the current pair keeps serving."""
    error = None
    try:
        svc.serving = await asyncio.to_thread(serving_from_record, record, svc.serving)
        svc.default_experiment = record.experiment is None
        _record_serving(svc)
    except (BundleError, ValueError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
        log.error("control generation %d refused, still serving %s: %s", record.generation,
                  svc.serving.bundle.version, error)  # fmt: skip
    svc.generation = record.generation
    assert svc.control is not None
    await asyncio.to_thread(svc.control.acknowledge, record.generation,
                            svc.serving.bundle.version, error)  # fmt: skip


async def _follow_control(svc: Services) -> None:
    """Apply every newer record of the control folder (one ``stat`` per poll)."""
    control = svc.control
    assert control is not None
    while True:
        await asyncio.sleep(svc.settings.control_poll_s)
        try:
            if not control.changed():
                continue
            record = control.read()
        except (OSError, ValueError) as e:
            log.error("control folder %s unreadable: %s", control.path, e)
            continue
        if record is None or record.generation <= svc.generation:
            continue
        async with svc.reload_lock:
            if record.generation > svc.generation:
                await _apply_record(svc, record)


async def _await_workers(svc: Services, record: ControlRecord | None) -> dict[str, Any]:
    """How many workers serve ``record``: waits until every live worker acknowledged it or
    ``control_timeout_s`` passed. ``{"expected", "applied", "refused": {worker: error}}``."""
    if record is None:
        return {"expected": 1, "applied": 1, "refused": {}}
    assert svc.control is not None
    expected = svc.settings.workers
    deadline = time.monotonic() + svc.settings.control_timeout_s
    while True:
        acks = await asyncio.to_thread(svc.control.acks, record.generation)
        if len(acks) >= expected or time.monotonic() >= deadline:
            break
        await asyncio.sleep(svc.settings.control_poll_s / 4)
    return {
        "expected": expected,
        "applied": sum(a.error is None for a in acks),
        "refused": {a.worker: a.error for a in acks if a.error is not None},
    }


def _record_serving(svc: Services) -> None:
    b = svc.serving.bundle
    arms = {a.name: b.model(a.name).spec.model_version for a in svc.serving.experiment.arms}
    svc.metrics.serving(arms, b.version)


def _check_token(svc: Services, authorization: str | None) -> None:
    token = svc.settings.admin_token
    if token is None:
        raise ServiceError(403, "authorization", "admin routes are disabled (no admin token set)")
    want = f"Bearer {token.get_secret_value()}"
    if authorization is None or not secrets.compare_digest(authorization.encode(), want.encode()):
        raise ServiceError(401, "authorization", "missing or wrong admin bearer token")


def _models_info(svc: Services) -> ModelsResponse:
    serving = svc.serving
    b, e = serving.bundle, serving.experiment
    return ModelsResponse(
        bundle_version=b.version,
        bundle_dir=str(b.path),
        state_schema_version=b.manifest.state_schema_version,
        experiment_seed=e.seed,
        generation=svc.generation,
        arms=[
            {
                "name": a.name,
                "weight": a.weight,
                "bucket_range": r,
                "exploration_rate": a.exploration_rate,
                "exploration_top_k": a.exploration_top_k,
                "model_version": b.model(a.name).spec.model_version,
            }
            for a, r in zip(e.arms, e.ranges(), strict=True)
        ],  # fmt: skip
        models={
            n: {
                "kind": m.spec.kind,
                "model_version": m.spec.model_version,
                "params": m.spec.params,
                "bytes": m.spec.bytes,
                "metrics": m.spec.metrics,
            }
            for n, m in b.models.items()
        },  # fmt: skip
    )


def _new_id() -> int:
    """A random id below 2^53, so JavaScript clients read it back exactly."""
    return secrets.randbits(53)


async def _rank(body: RankRequest, svc: Services) -> Response:
    t_start = time.perf_counter()
    serving = svc.serving  # one bundle for the whole request, whatever a reload does meanwhile
    bundle, exp = serving.bundle, serving.experiment
    settings, m = svc.settings, svc.metrics
    if len(body.candidates) > settings.max_candidates:
        raise ServiceError(422, "candidates", f"candidates: {len(body.candidates)} items exceed "
                           f"the maximum of {settings.max_candidates}")  # fmt: skip
    if body.k > settings.max_k:
        raise ServiceError(422, "k", f"k: {body.k} exceeds the maximum of {settings.max_k}")
    assignment = exp.assign(body.user_id)
    if body.arm is not None:
        if body.arm not in exp.arm_names:
            raise ServiceError(422, "arm", f"arm: {body.arm!r} is not an arm of the experiment "
                               f"({list(exp.arm_names)})")  # fmt: skip
        arm_name = body.arm
    else:
        arm_name = assignment.arm
    arm = exp.arm(arm_name)
    model = bundle.model(arm_name)
    user_f = None
    if body.user_features:
        try:
            user_f = bundle.tables.user_with(body.user_id, body.user_features)
        except KeyError as e:
            raise ServiceError(422, "user_features", str(e.args[0])) from None
    session_id = body.session_id if body.session_id is not None else _new_id()
    key = state_key(bundle.manifest.state_schema_version, arm_name, session_id)

    t0 = time.perf_counter()
    raw, ok = await svc.store.lookup(key)
    state_kind = "degraded" if not ok else ("warm" if raw is not None else "cold")
    state = None
    if raw is not None:
        try:
            state = SessionState.from_bytes(raw)
        except ValueError:
            state_kind = "cold"
            m.errors.labels(reason="state_decode").inc()
    if state is None or state.buffer.shape != (model.memory, model.enc_dim):
        state = SessionState.new(model, bundle.spec.recent_window)
    t1 = time.perf_counter()

    if body.exploration is not None:
        exploration = Exploration(body.exploration.epsilon, body.exploration.top_k)
    else:
        exploration = Exploration(arm.exploration_rate, arm.exploration_top_k)
    ts = (
        body.context.timestamp_ms
        if body.context.timestamp_ms is not None
        else int(time.time() * 1000)
    )
    req_idx = None if body.context.request_index is None else np.array([body.context.request_index])
    candidates = np.asarray(body.candidates, dtype=np.int64)[None]
    try:
        lists = build_lists(bundle, model, [state], np.array([body.user_id]), np.array([ts]),
                            candidates, body.k, exploration, svc.rng, request_index=req_idx,
                            user_f=user_f)  # fmt: skip
    except RankingInputError as e:
        raise ServiceError(422, "candidates", str(e)) from None
    t2 = time.perf_counter()
    new_state = lists.states[0]
    await svc.store.set(key, new_state.to_bytes())
    t3 = time.perf_counter()

    request_id = _new_id()
    order = np.concatenate(
        [
            lists.index[0],
            np.setdiff1d(np.arange(candidates.shape[1]), lists.index[0], assume_unique=True),
        ]
    )
    svc.sinks.exposures.submit_columns({
        "request_id": np.array([request_id]), "session_id": np.array([session_id]),
        "user_id": np.array([body.user_id]), "timestamp": np.array([ts]),
        "request_index": np.array([new_state.request_index - 1], dtype=np.int32),
        "item_id": candidates[:, order], "propensity": lists.propensity,
    }, arm_name, model.spec.model_version)  # fmt: skip
    t4 = time.perf_counter()

    n_unknown = int(lists.unknown.sum())
    items = [
        {"item_id": int(i), "position": p, "score": float(s), "explored": bool(x),
         "propensity": float(pr)}
        for p, (i, s, x, pr) in enumerate(zip(lists.item_ids[0].tolist(), lists.scores[0].tolist(),
                                              lists.explored[0].tolist(),
                                              lists.propensity[0].tolist(), strict=True))
    ]  # fmt: skip
    response = JSONResponse({
        "request_id": request_id, "session_id": session_id, "arm": arm_name,
        "bucket": assignment.bucket, "model_version": model.spec.model_version,
        "bundle_version": bundle.version, "state": state_kind, "unknown_items": n_unknown,
        "items": items,
    })  # fmt: skip
    t5 = time.perf_counter()

    stage = m.stage_seconds
    stage.labels(stage="state_fetch", arm=arm_name).observe(t1 - t0)
    stage.labels(stage="featurise", arm=arm_name).observe(lists.timings["featurise"])
    stage.labels(stage="model", arm=arm_name).observe(lists.timings["model"])
    stage.labels(stage="list_build", arm=arm_name).observe(t2 - t1)
    stage.labels(stage="state_write", arm=arm_name).observe(t3 - t2)
    stage.labels(stage="log", arm=arm_name).observe(t4 - t3)
    stage.labels(stage="serialise", arm=arm_name).observe(t5 - t4)
    m.candidates.observe(candidates.shape[1])
    if n_unknown:
        m.unknown_items.labels(arm=arm_name).inc(n_unknown)
    n_explored = int(lists.explored.sum())
    if n_explored:
        m.explored_items.labels(arm=arm_name).inc(n_explored)
    m.request_seconds.labels(route="/v1/rank", arm=arm_name).observe(time.perf_counter() - t_start)
    return response


async def _feedback(body: FeedbackRequest, svc: Services) -> FeedbackResponse:
    t_start = time.perf_counter()
    serving = svc.serving
    exp, bundle = serving.experiment, serving.bundle
    if body.arm is not None and body.arm not in exp.arm_names:
        raise ServiceError(422, "arm", f"arm: {body.arm!r} is not an arm of the experiment "
                           f"({list(exp.arm_names)})")  # fmt: skip
    arm = body.arm or exp.assign(body.user_id).arm
    now = int(time.time() * 1000)
    cols: dict[str, list] = {f.name: [] for f in FEEDBACK_SCHEMA}
    clicks = 0
    for e in body.events:
        cols["request_id"].append(body.request_id)
        cols["item_id"].append(e.item_id)
        cols["position"].append(e.position)
        cols["timestamp"].append(e.timestamp_ms if e.timestamp_ms is not None else now)
        for name in FEEDBACK_BINARY:
            cols[name].append(getattr(e, name))
        cols["watch_time"].append(e.watch_time)
        clicks += int(e.click or 0)
    svc.sinks.feedback.submit(pa.table(cols, schema=FEEDBACK_SCHEMA))
    session_clicks = None
    key = state_key(bundle.manifest.state_schema_version, arm, body.session_id)
    raw, ok = await svc.store.lookup(key)
    if raw is not None:
        try:
            state = SessionState.from_bytes(raw)
            state.clicks += clicks
            session_clicks = state.clicks
            if clicks:
                await svc.store.set(key, state.to_bytes())
        except ValueError:
            svc.metrics.errors.labels(reason="state_decode").inc()
    svc.metrics.request_seconds.labels(route="/v1/feedback", arm=arm).observe(
        time.perf_counter() - t_start
    )
    return FeedbackResponse(accepted=len(body.events), session_clicks=session_clicks)
