"""`python -m service`: verify and warm up before binding the port, then serve with uvicorn (uvloop, httptools or h11).

Failing fast here (one ERROR line, exit code 2, no listener) is what orchestrators need for a missing or corrupt
model: a crash loop with a clear reason instead of a pod that listens but never becomes ready.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import begin_drain, create_app
from service.errors import ServiceError
from service.http_limits import ConnectionLimits
from service.logs import configure_logging
from service.protocol import http_protocol
from service.registry import load_models
from service.settings import Settings

logger = logging.getLogger("service")

EXIT_STARTUP_FAILED = 2


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but /ready turns 503 the moment SIGTERM/SIGINT arrives, not after connections close.

    With `drain_delay_s` > 0 the listener stays open (serving, /ready 503) that long before uvicorn's graceful
    shutdown starts, so load balancers observe the 503 before connections are refused. A second signal during
    the delay shuts down at once.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_delay_s = drain_delay_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delaying = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        begin_drain(self._app)
        if self._drain_delay_s > 0 and not self._delaying and self._loop is not None:
            self._delaying = True  # runs in the signal handler: hand the timer to the loop thread-safely
            self._loop.call_soon_threadsafe(
                self._loop.call_later, self._drain_delay_s, super().handle_exit, sig, frame
            )
            return
        super().handle_exit(sig, frame)


def main() -> int:
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: say which variable, then exit
        logging.basicConfig(level=logging.ERROR)
        logger.error("invalid EMBED_* settings: %s", exc)
        return EXIT_STARTUP_FAILED
    configure_logging(settings.log_level)
    try:
        models = load_models(settings)
    except ServiceError as exc:
        logger.error("start-up failed: %s", exc.message)
        return EXIT_STARTUP_FAILED
    app = create_app(settings, models=models)
    try:
        # The protocol keeps the load-shedding door unless CORS is on: its refusals carry no CORS headers, so
        # then the door stays inside the app (service/api/shed.py), behind the CORS middleware.
        limits = ConnectionLimits(settings.max_request_line_bytes, settings.max_header_bytes, settings.max_connections)
        http = http_protocol(settings.header_timeout_s, door=None if settings.cors_origins else app.state.context.door,
                             limits=limits, parser=settings.http_parser, metrics=app.state.context.metrics)
    except ServiceError as exc:
        logger.error("start-up failed: %s", exc.message)
        return EXIT_STARTUP_FAILED
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http,
        lifespan="on",
        log_level=settings.log_level,
        # Whole seconds (uvicorn's type): a sub-second timeout rounds up to 1 s, and 0 means do not wait, never
        # "wait forever" (which `int(x) or None` made of both).
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        access_log=False,
        server_header=False,
        log_config=None,
    )
    server = _DrainingServer(config, app, settings.drain_delay_s)
    # uvicorn re-raises the captured SIGTERM/SIGINT after a graceful shutdown, which would end the process
    # "killed by signal"; with these no-op handlers in place a drained shutdown exits 0 instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
