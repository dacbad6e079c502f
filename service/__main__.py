"""`python -m service`: verify and warm up before binding the port, then serve with uvicorn (uvloop, httptools).

Failing fast here (one ERROR line, exit code 2, no listener) is what orchestrators need for a missing or corrupt
model: a crash loop with a clear reason instead of a pod that listens but never becomes ready.
"""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from service.app import begin_drain, build_core, create_app
from service.errors import ServiceError
from service.settings import Settings

logger = logging.getLogger("service")

EXIT_STARTUP_FAILED = 2


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but /ready turns 503 the moment SIGTERM/SIGINT arrives, not after connections close."""

    def __init__(self, config: uvicorn.Config, app: object) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: object) -> None:
        begin_drain(self._app)  # type: ignore[arg-type]
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def main() -> int:
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: say which variable, then exit
        logging.basicConfig(level=logging.ERROR)
        logger.error("invalid EMBED_* settings: %s", exc)
        return EXIT_STARTUP_FAILED
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        core = build_core(settings)
    except ServiceError as exc:
        logger.error("start-up failed: %s", exc.message)
        return EXIT_STARTUP_FAILED
    app = create_app(settings, core=core)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        access_log=False,
        server_header=False,
        log_config=None,
    )
    server = _DrainingServer(config, app)
    # uvicorn re-raises the captured SIGTERM/SIGINT after a graceful shutdown, which would end the process
    # "killed by signal"; with these no-op handlers in place a drained shutdown exits 0 instead.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
