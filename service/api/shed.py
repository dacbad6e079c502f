"""Load shedding at the door: when the admission queue is full, answer 429 before routing, auth or the body.

Under a burst the event loop's cost per rejected request decides how fast rejections are and whether /health
still gets a turn. `Door` counts the inference requests let in and not yet answered and refuses a newcomer the
queue cannot take (`Batcher.check_capacity`); `Batcher.try_admit` stays the authority (it reserves the slots),
this is the cheap early answer for the clear case. Only POSTs to inference routes are shed: probes, /metrics and
/info never wait behind the queue.

The door is kept at the earliest point available. Under `python -m service` that is the HTTP protocol
(service/protocol.py): a refused request is answered from the parser callback that completed its headers, with
no ASGI task, no middleware and no body read, in the same loop iteration its bytes arrived. A 1,000-client burst
arrives as one wave of such callbacks, so every refusal of the wave is written before any admitted request
starts its body read and JSON parse. Under any other ASGI server `LoadShedMiddleware` keeps the door instead,
inside the app; a request the protocol already let in is not counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import family_of, reply_parts, service_error_response
from service.api.request_ids import request_id
from service.errors import OverloadError
from service.metrics import Metrics

INFERENCE_PATHS = frozenset({"/v1/embeddings", "/embed", "/embed_all", "/v1/encode", "/", "/invocations",
                             "/similarity", "/rerank", "/predict", "/embed_sparse", "/v1/rerank", "/v2/rerank",
                             "/v2/embed"})
COUNTED = "embed_door_counted"  # scope["state"] key: the protocol's door let this request in and counts it


class Door:
    """The count of inference requests let in and not yet answered, and the decision for the next one.

    It knows nothing of models or batchers: `capacity(inside)` raises the OverloadError a newcomer would get
    (the model registry's answer across every model's queue), and `is_open()` says whether the app is serving
    at all (while starting or stopping the app itself answers 503 with the reason).
    """

    def __init__(self, capacity: Callable[[int, bool], None], is_open: Callable[[], bool], metrics: Metrics,
                 small_body_bytes: int = 0) -> None:
        self._capacity = capacity
        self._is_open = is_open
        self._metrics = metrics
        # A body at most this long may be a small request (the batcher's small lane), which the door prices at
        # the small lane's wait instead of the whole queue's; 0: no small lane.
        self._small_body_bytes = small_body_bytes
        self.inside = 0

    @staticmethod
    def guards(method: str, path: str) -> bool:
        return method == "POST" and path in INFERENCE_PATHS

    def refusal(self, scope: Mapping[str, Any] | None = None) -> OverloadError | None:
        """The error to answer the next inference request with, or None to let it in (and count it). `scope`
        (its headers) says whether its body is short enough to be a small request."""
        if not self._is_open():
            return None
        try:
            self._capacity(self.inside, scope is not None and self._may_be_small(scope))
        except OverloadError as exc:
            self._metrics.rejected.labels(exc.code).inc()
            return exc
        return None

    def _may_be_small(self, scope: Mapping[str, Any]) -> bool:
        if self._small_body_bytes <= 0:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value) <= self._small_body_bytes
                except ValueError:
                    return False
        return False  # chunked: its size is not known before reading it

    def raw_reply(self, exc: OverloadError, scope: Mapping[str, Any], *, keep_alive: bool,
                  default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole HTTP/1.1 response for a refusal at the protocol level, in the one error shape, counted in
        /metrics as the app would count it."""
        status, content, headers = reply_parts(exc, family_of(scope["path"]))
        body = orjson.dumps(content)
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode("ascii")]
        head += [name + b": " + value for name, value in default_headers]
        head += [b"content-type: application/json", b"content-length: %d" % len(body)]
        head += [name.lower().encode("latin-1") + b": " + value.encode("latin-1") for name, value in headers.items()]
        head += [b"x-request-id: " + request_id(scope).encode("ascii")]
        if not keep_alive:
            head.append(b"connection: close")
        self._metrics.requests.labels(scope["path"], str(status)).inc()
        self._metrics.request_duration.labels(scope["path"]).observe(0.0)
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def counted(self, app: ASGIApp) -> ASGIApp:
        """`app` for one request let in, counted from now until the app is done with it, whatever happened
        (answered, failed, client gone)."""

        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            finally:
                self.inside -= 1

        self.inside += 1
        return run


class LoadShedMiddleware:
    """The door inside the app, for requests no protocol-level door has seen (other ASGI servers, tests).

    uvicorn starts request tasks in arrival order and each runs to its first await (reading the body) before the
    next starts; a burst's first wave therefore meets this count in order, so the requests past capacity are
    answered here without their bodies being read.
    """

    def __init__(self, app: ASGIApp, door: Door) -> None:
        self.app = app
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and Door.guards(scope["method"], scope["path"])) or \
                scope.get("state", {}).get(COUNTED):
            await self.app(scope, receive, send)
            return
        exc = self.door.refusal(scope)
        if exc is not None:
            await service_error_response(exc, family_of(scope["path"]))(scope, receive, send)
            return
        await self.door.counted(self.app)(scope, receive, send)
