"""A header deadline and the load-shedding door in uvicorn's httptools protocol.

The header deadline is the slowloris guard uvicorn lacks (uvicorn#157).

uvicorn times out idle keep-alive connections but not a request whose line and headers trickle in: 200 sockets
sending a byte every few seconds would each hold a connection forever. This subclass arms a timer when a
connection opens and when a new request begins, disarms it once the headers are complete, and closes the socket
if it fires first. The body has its own deadline in `api/jsonio.read_json` (408), where the app can still answer.

The door (service/api/shed.py) decides, as each request's headers complete, whether an inference request is
let in; a refused one is answered here and then, as for any finished response, uvicorn discards the rest of its
body and keeps the connection for the next request (HTTP/1.1 keep-alive).

It reaches into uvicorn's protocol callbacks (`on_message_begin`, `on_headers_complete`, `_start_asgi_task`),
which are stable across uvicorn releases but not a public API. So uvicorn is pinned exactly, and
`http_protocol` checks at start-up that every hook is still there: a uvicorn that lacks one stops the server
with one line naming it, rather than silently serving without the door. Without httptools at all the server
runs on h11 with the door inside the app (`LoadShedMiddleware`) and no header deadline, and says so.
`tests/e2e/test_slow_clients.py`, `tests/e2e/test_door.py` and `tests/e2e/test_overload.py` pin the behaviour.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp

from service.api.shed import COUNTED, Door
from service.errors import ServiceError

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger(__name__)

HTTPTOOLS_IMPL = "uvicorn.protocols.http.httptools_impl"
# What HeaderDeadlineProtocol overrides or calls on uvicorn's classes.
_PROTOCOL_HOOKS = ("_start_asgi_task", "connection_made", "connection_lost", "on_message_begin",
                   "on_headers_complete", "on_response_complete", "send_400_response")
_CYCLE_FIELDS = ("scope", "keep_alive", "response_started", "response_complete")


class ProtocolCheckError(ServiceError):
    """The installed uvicorn lacks a hook the door or the header deadline needs."""


def missing_hooks(protocol: type, cycle: type) -> list[str]:
    """Names the door and the header deadline need that `protocol` / `cycle` do not have."""
    missing = [f"{protocol.__name__}.{name}" for name in _PROTOCOL_HOOKS if not callable(getattr(protocol, name, None))]
    init = getattr(cycle, "__init__", None)
    code = getattr(init, "__code__", None)
    assigned = set(code.co_names) if code is not None else set()
    missing += [f"{cycle.__name__}.{name}" for name in _CYCLE_FIELDS
                if name not in assigned and not hasattr(cycle, name)]
    return missing


def http_protocol(header_timeout_s: float, door: Door | None, impl: ModuleType | None = None) -> Any:
    """uvicorn's `http=` value: our httptools protocol after checking uvicorn still has its hooks, or "h11"
    when httptools is not installed (the door then works inside the app; there is no header deadline)."""
    if impl is None:
        try:
            impl = importlib.import_module(HTTPTOOLS_IMPL)
        except ImportError:
            logger.warning("httptools is not installed: serving with h11; the load-shedding door runs inside the "
                           "app and there is no header deadline (slowloris guard)")
            return "h11"
    missing = missing_hooks(impl.HttpToolsProtocol, impl.RequestResponseCycle)
    if missing:
        from importlib import metadata

        raise ProtocolCheckError(
            f"uvicorn {metadata.version('uvicorn')} lacks {', '.join(missing)}, which the load-shedding door and "
            "the header deadline need: install the pinned uvicorn (requirements/serve.txt)"
        )
    return header_deadline_protocol(header_timeout_s, door, impl.HttpToolsProtocol)


_BAD_REQUEST_BODY = orjson.dumps(
    {"error": {"message": "malformed HTTP request", "type": "invalid_request_error", "param": None,
               "code": "bad_http_request"}}
)


def header_deadline_protocol(header_timeout_s: float, door: Door | None = None,
                             base: type[HttpToolsProtocol] | None = None) -> type[HttpToolsProtocol]:
    """uvicorn `http=` protocol class that closes connections whose headers take over `header_timeout_s` and,
    given a `door`, refuses inference requests the queue cannot take before they become ASGI tasks.

    It also answers requests the HTTP parser rejects (a control character in a header, a broken request line)
    in the one JSON error shape with an X-Request-ID, instead of uvicorn's plain-text 400.
    """

    if base is None:
        base = importlib.import_module(HTTPTOOLS_IMPL).HttpToolsProtocol

    # `base` is picked at run time (uvicorn's class, or a test's stand-in) and mypy cannot subclass a variable:
    # the class is checked as a subclass of Any.
    class HeaderDeadlineProtocol(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
            """Called when a request may start (at once, or when a pipelined one's turn comes)."""
            scope = cycle.scope
            if door is None or not door.guards(scope["method"], scope["path"]):
                super()._start_asgi_task(cycle, app)
                return
            exc = door.refusal()
            if exc is None:
                scope["state"][COUNTED] = True
                super()._start_asgi_task(cycle, door.counted(app))
                return
            # Answered now; marking the cycle complete makes uvicorn drop this request's body as it arrives.
            cycle.response_started = cycle.response_complete = True
            self.transport.write(door.raw_reply(exc, scope, keep_alive=cycle.keep_alive,
                                                default_headers=self.server_state.default_headers))
            if cycle.keep_alive:
                self.on_response_complete()
            else:
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            head = (
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n"
            ) % (len(_BAD_REQUEST_BODY), uuid.uuid4().hex.encode())
            self.transport.write(head + _BAD_REQUEST_BODY)
            self.transport.close()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._on_header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered on this connection; its own deadlines apply
            if not self.transport.is_closing():
                logger.info("closing a connection whose request headers took over %gs", header_timeout_s)
                self.transport.close()

    return HeaderDeadlineProtocol
