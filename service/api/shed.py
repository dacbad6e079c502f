"""Load shedding at the door: when the admission queue is full, answer 429 before routing, auth or the body.

Under a burst the event loop's cost per rejected request is what decides how fast rejections are and whether
/health still gets a turn, so a full queue is checked here, in a pure ASGI layer, before FastAPI routes,
resolves dependencies or reads a byte of the body. `Batcher.try_admit` stays the authority (it reserves the
slots); this is the cheap early answer for the clear case. Only POSTs to inference routes are shed: probes,
/metrics and /info never wait behind the queue.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import service_error_response
from service.errors import OverloadError

INFERENCE_PATHS = frozenset({"/v1/embeddings", "/embed", "/embed_all", "/v1/encode"})


class LoadShedMiddleware:
    """Counts inference requests between the door and their reply, and refuses newcomers the queue cannot take.

    uvicorn starts request tasks in arrival order and each runs to its first await (reading the body) before the
    next starts; a burst's first wave therefore meets this count in order, so the requests past capacity are
    answered here without their bodies being read, instead of after every request ahead of them was parsed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.at_door = 0  # inference requests let in and not yet answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in INFERENCE_PATHS):
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        batcher = services.batcher
        if batcher is not None and services.ready:
            try:
                batcher.check_capacity(self.at_door)
            except OverloadError as exc:
                services.metrics.rejected.labels(exc.code).inc()
                await service_error_response(exc)(scope, receive, send)
                return
        self.at_door += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.at_door -= 1
