"""create_app(settings) and its lifespan. Nothing is built at import time.

Start-up order: verify artifacts -> tokenizer -> onnxruntime sessions -> warm-up with the largest batch the
settings allow -> start the batcher -> /ready turns 200. `python -m service` runs the synchronous part
(`build_core`) *before* binding the port, so a missing or corrupt file ends the process with one ERROR line and
no listener; `create_app(settings)` alone builds it in the lifespan (tests).

Shutdown: /ready turns 503 as soon as the signal arrives (`begin_drain`, called by __main__), uvicorn stops
accepting and waits for in-flight requests, then the lifespan drains the batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.deps import Services
from service.api.errors import INTERNAL_ERROR_MESSAGE, error_response, family_of, install_error_handlers
from service.api.openapi import ServedLimits, describe
from service.api.request_ids import request_id as _request_id
from service.api.routes import ClientDisconnectedError, inference, probes
from service.api.shed import INFERENCE_PATHS, Door, LoadShedMiddleware
from service.artifacts import Manifest, load_manifest
from service.batching import Batcher, BatcherConfig, BatchRunner
from service.engine import Engine
from service.faults import FaultInjectingRunner
from service.metrics import Metrics
from service.runner import OnnxRunner
from service.settings import Settings
from service.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Core:
    """The synchronous, loop-free part of start-up: verified manifest, tokenizer, warmed sessions."""

    manifest: Manifest
    tokenizer: TextTokenizer
    runner: OnnxRunner


def build_core(settings: Settings) -> Core:
    """Verify, load and warm up. Raises ArtifactError / ProviderError with a message naming the culprit."""
    manifest = load_manifest(settings.artifact_dir)
    vocab = manifest.raw.get("config", {}).get("vocab_size")
    tokenizer = TextTokenizer(
        manifest.tokenizer_path,
        max_length=manifest.max_seq_length,
        max_chars=settings.max_chars_per_input,
        vocab_size=int(vocab) if vocab else None,
    )
    runner = OnnxRunner(manifest, settings)
    runner.warm_up(settings.max_batch_size, settings.max_batch_tokens)
    return Core(manifest, tokenizer, runner)


def batcher_config(settings: Settings) -> BatcherConfig:
    return BatcherConfig(
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        padding_slack_tokens=settings.batch_padding_slack_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue_size=settings.max_queue_size,
        queue_timeout_s=settings.queue_timeout_s,
        watchdog_timeout_s=settings.watchdog_timeout_s,
    )


def begin_drain(app: FastAPI) -> None:
    """Flip /ready to 503 at once (called from the signal handler); the batcher drains in the lifespan."""
    services: Services = app.state.services
    if not services.draining:
        services.draining = True
        logger.info("shutdown requested: /ready is now 503; draining in-flight requests")


def create_app(settings: Settings, *, core: Core | None = None) -> FastAPI:
    """Build the app. `core` (from `build_core`) skips re-verifying when __main__ has already done it."""
    metrics = Metrics()
    services = Services(settings=settings, metrics=metrics)
    services.door = Door(services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = core if core is not None else await asyncio.to_thread(build_core, settings)
        services.manifest, services.runner = built.manifest, built.runner
        batch_runner: BatchRunner = built.runner
        if settings.fault_injection:
            batch_runner = FaultInjectingRunner(built.runner, built.tokenizer, settings.fault_duration_s)
        batcher = Batcher(batch_runner, batcher_config(settings), observer=metrics)
        await batcher.start()
        services.batcher = batcher
        services.engine = Engine(built.manifest, built.tokenizer, batcher, settings, metrics, built.runner.graphs)
        services.started_at = time.time()
        services.ready = True
        logger.info(
            "ready: model=%s provider=%s graph=%s", services.served_model_name, built.runner.provider,
            built.runner.variant,
        )
        try:
            yield
        finally:
            services.draining = True
            services.ready = False
            await batcher.stop(timeout_s=settings.graceful_timeout_s)
            services.engine.close()
            logger.info("batcher drained; shut down")

    app = FastAPI(
        title="encoder-serve",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
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
    _describe_bodies(app)
    app.add_middleware(LoadShedMiddleware, door=services.door)
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


def _describe_bodies(app: FastAPI) -> None:
    """Bodies, replies and errors into /openapi.json; with the served model's limits once it is loaded."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            services: Services = app.state.services
            m, s = services.manifest, services.settings
            limits = None
            if m is not None and services.engine is not None:
                vocab = services.engine.tokenizer.vocab_size  # the manifest's, else the tokenizer's own
                limits = ServedLimits(m.embedding_dim, m.num_layers, m.num_heads, s.max_inputs_per_request, vocab)
            schema = describe(base(), limits)  # base() caches FastAPI's document in app.openapi_schema
            app.openapi_schema = schema if limits is not None else None  # no model yet: rebuild with limits later
            return schema
        return app.openapi_schema

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
            return value.decode("utf-8", errors="backslashreplace")[:200]
    return "-"
