"""create_app(settings) and its lifespan. Nothing is built at import time.

Start-up order, per served model: verify artifacts -> tokenizer -> onnxruntime sessions -> warm-up with the
largest batch its limits allow; then one registry of immutable model handles; the lifespan starts every
model's batcher and /ready turns 200. `python -m service` loads the models (`load_models`) *before* binding the
port, so a missing or corrupt file ends the process with one ERROR line naming the model and the file, and no
listener; `create_app(settings)` without `models` loads them itself, synchronously.

Shutdown: /ready turns 503 as soon as the signal arrives (`begin_drain`, called by __main__), uvicorn stops
accepting and waits for in-flight requests, then the lifespan drains every model's batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api import explain_routes, task_routes  # noqa: F401  (they register their routes on `inference`)
from service.api.deps import AppContext, Lifecycle
from service.api.errors import INTERNAL_ERROR_MESSAGE, error_response, family_of, install_error_handlers
from service.api.openapi import ServedLimits, describe
from service.api.request_ids import request_id as _request_id
from service.api.routes import ClientDisconnectedError, inference, probes
from service.api.shed import INFERENCE_PATHS, Door, LoadShedMiddleware
from service.metrics import Metrics
from service.registry import LoadedModel, build_registry, load_models
from service.settings import Settings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

STATIC_DIR = Path(__file__).parent / "static"


def begin_drain(app: FastAPI) -> None:
    """Flip /ready to 503 at once (called from the signal handler); the batchers drain in the lifespan."""
    lifecycle: Lifecycle = app.state.context.lifecycle
    if not lifecycle.draining:
        lifecycle.draining = True
        lifecycle.drain_began = time.monotonic()
        logger.info("shutdown requested: /ready is now 503; draining in-flight requests")


def _drain_budget_s(settings: Settings, lifecycle: Lifecycle) -> float:
    """What is left of drain delay + graceful timeout since the signal: uvicorn's wait for open requests and the
    batchers' drain share one budget, so shutdown never takes drain delay + 2 x graceful timeout."""
    if lifecycle.drain_began is None:  # the lifespan ended without a signal (tests, an embedding ASGI server)
        return settings.graceful_timeout_s
    spent = time.monotonic() - lifecycle.drain_began
    return max(0.0, settings.drain_delay_s + settings.graceful_timeout_s - spent)


async def _watch_loop_lag(metrics: Metrics, interval_s: float = 0.05) -> None:
    """Sample how late the event loop runs a timer (`embed_event_loop_lag_seconds`): under a burst, the time a
    probe or a refusal waits before any code of ours runs for it."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


def create_app(settings: Settings, *, models: Sequence[LoadedModel] | None = None) -> FastAPI:
    """Build the app. `models` (from `load_models`) skips loading when __main__ has already done it."""
    metrics = Metrics()
    registry = build_registry(models if models is not None else load_models(settings), settings, metrics)
    lifecycle = Lifecycle()
    # A small request's body: its tokens at ~6 bytes each (English averages ~4.5 characters a token, JSON
    # escapes add some) plus the JSON around them.
    small_body = settings.small_request_tokens * 6 + 256 if settings.small_request_tokens else 0
    door = Door(registry.check_capacity, lambda: lifecycle.ready, metrics, small_body_bytes=small_body)
    context = AppContext(settings=settings, metrics=metrics, models=registry, lifecycle=lifecycle, door=door)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        lifecycle.started_at = time.time()
        lifecycle.ready = True
        lag_watch = asyncio.create_task(_watch_loop_lag(metrics), name="loop-lag")
        for handle in registry:
            logger.info("ready: model=%s task=%s provider=%s graph=%s", handle.name, handle.task,
                        handle.runner.provider, handle.runner.variant)
        try:
            yield
        finally:
            lag_watch.cancel()
            lifecycle.draining = True
            lifecycle.ready = False
            await registry.stop(timeout_s=_drain_budget_s(settings, lifecycle))
            logger.info("every model's batcher drained; shut down")

    app = FastAPI(
        title="encoder-serve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    app.include_router(probes)
    app.include_router(inference)
    install_error_handlers(app)

    async def on_disconnect(request: Request, _exc: Exception) -> Response:
        logger.info("client disconnected before its reply (499)")
        family = family_of(request.scope["path"])
        err_type = "Validation" if family == "tei" else "client_closed_request"
        return error_response(499, "client closed the request", err_type, None, "client_closed", family=family)

    app.add_exception_handler(ClientDisconnectedError, on_disconnect)
    app.add_exception_handler(ClientDisconnect, on_disconnect)  # gone while its body was being read
    _mount_explorer(app)
    _describe_bodies(app, context)
    app.add_middleware(LoadShedMiddleware, door=door)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def _describe_bodies(app: FastAPI, context: AppContext) -> None:
    """Bodies, replies and errors into /openapi.json, with the default model's limits."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            handle = context.models.default
            m = handle.manifest
            limits = ServedLimits(m.embedding_dim, m.num_layers, m.num_heads, context.settings.max_inputs_per_request,
                                  handle.tokenizer.vocab_size, tuple(context.models.names),
                                  context.settings.max_documents_per_request)
            app.openapi_schema = describe(base(), limits)  # base() caches FastAPI's document first
        return app.openapi_schema

    # Replacing the method is FastAPI's documented way to extend the schema ("Extending OpenAPI").
    app.openapi = openapi  # type: ignore[method-assign]


def _mount_explorer(app: FastAPI) -> None:
    """The attention explorer: `GET /` is its page, `/static/*` its files (absent in slim images: skipped)."""
    if not (STATIC_DIR / "index.html").is_file():
        return
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def explorer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware, which would break disconnect detection and streaming).

    Gives every reply an X-Request-ID, counts requests by route template and status, times them, tracks
    in-flight requests, and turns any exception that escaped the handlers into the generic 500 error shape
    (before Starlette's ServerErrorMiddleware would answer in plain text without our headers).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error (request id %s)", request_id)
            if not started:
                family = family_of(scope["path"])
                response = error_response(500, INTERNAL_ERROR_MESSAGE, "Backend" if family == "tei" else "server_error",
                                          None, "internal_error", family=family)
                await response(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in INFERENCE_PATHS else "unmatched"  # shed before routing
            )
            elapsed = time.perf_counter() - t0
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_duration.labels(label).observe(elapsed)
            if access_logger.isEnabledFor(logging.DEBUG):  # client-controlled fields: escaped by service/logs.py
                access_logger.debug(
                    "%s %s %d %.1fms rid=%s ua=%s", scope.get("method"), scope.get("path"), status,
                    elapsed * 1000, request_id, _header(scope, b"user-agent"),
                )


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            text: str = value.decode("utf-8", errors="backslashreplace")
            return text[:200]
    return "-"
