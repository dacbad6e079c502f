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

Both parsers' protocols also bound each connection's memory (service/http_limits.py: head sizes 414 / 431, the
open-connection cap 503); `EMBED_HTTP_PARSER=h11` picks the h11 one (service/h11_protocol.py) on purpose.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from starlette.types import ASGIApp

from service.api.shed import COUNTED, Door
from service.errors import ServiceError
from service.h11_protocol import H11_HOOKS, bounded_h11_protocol
from service.http_limits import BoundedConnection, ConnectionLimits, bad_http_request
from service.metrics import Metrics

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger(__name__)

HTTPTOOLS_IMPL = "uvicorn.protocols.http.httptools_impl"
# What HeaderDeadlineProtocol overrides or calls on uvicorn's classes.
_PROTOCOL_HOOKS = ("_start_asgi_task", "connection_made", "connection_lost", "data_received", "on_message_begin",
                   "on_headers_complete", "on_message_complete", "on_response_complete", "send_400_response")
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


def http_protocol(header_timeout_s: float, door: Door | None, impl: ModuleType | None = None, *,
                  limits: ConnectionLimits | None = None, parser: Literal["auto", "httptools", "h11"] = "auto",
                  metrics: Metrics | None = None) -> type[asyncio.Protocol]:
    """uvicorn's `http=` value for `parser` (auto | httptools | h11): our httptools protocol after checking uvicorn
    still has its hooks, or, for h11 or when httptools is not installed under auto, our h11 protocol (the door
    then works inside the app; there is no header deadline). Both bound head sizes and open connections."""
    limits = limits or ConnectionLimits()
    if parser not in ("auto", "httptools", "h11"):
        raise ValueError(f"unknown HTTP parser {parser!r}")
    if parser == "h11":
        return _checked_h11(limits, metrics)
    if impl is None:
        try:
            impl = importlib.import_module(HTTPTOOLS_IMPL)
        except ImportError:
            if parser == "httptools":
                raise ProtocolCheckError("EMBED_HTTP_PARSER=httptools, but httptools is not installed") from None
            logger.warning("httptools is not installed: serving with h11; the load-shedding door runs inside the "
                           "app and there is no header deadline (slowloris guard)")
            return _checked_h11(limits, metrics)
    missing = missing_hooks(impl.HttpToolsProtocol, impl.RequestResponseCycle)
    if missing:
        raise ProtocolCheckError(
            f"uvicorn {_uvicorn_version()} lacks {', '.join(missing)}, which the load-shedding door and "
            "the header deadline need: install the pinned uvicorn (requirements/serve.txt)"
        )
    protocol: type[asyncio.Protocol] = header_deadline_protocol(header_timeout_s, door, impl.HttpToolsProtocol,
                                                                limits=limits, metrics=metrics)
    return protocol


def _checked_h11(limits: ConnectionLimits, metrics: Metrics | None) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    missing = [f"H11Protocol.{name}" for name in H11_HOOKS if not callable(getattr(H11Protocol, name, None))]
    if missing:
        raise ProtocolCheckError(f"uvicorn {_uvicorn_version()} lacks {', '.join(missing)}, which the header size "
                                 "limits need: install the pinned uvicorn (requirements/serve.txt)")
    return bounded_h11_protocol(limits, metrics)


def _uvicorn_version() -> str:
    from importlib import metadata

    return metadata.version("uvicorn")


def header_deadline_protocol(header_timeout_s: float, door: Door | None = None,
                             base: type[HttpToolsProtocol] | None = None, *, limits: ConnectionLimits | None = None,
                             metrics: Metrics | None = None) -> type[HttpToolsProtocol]:
    """uvicorn `http=` protocol class that closes connections whose headers take over `header_timeout_s` and,
    given a `door`, refuses inference requests the queue cannot take before they become ASGI tasks.

    It also answers requests the HTTP parser rejects (a control character in a header, a broken request line)
    in the one JSON error shape with an X-Request-ID, instead of uvicorn's plain-text 400, and bounds each
    connection's memory with `limits` (service/http_limits.py).
    """
    connection_limits, protocol_metrics = limits or ConnectionLimits(), metrics

    if base is None:
        base = importlib.import_module(HTTPTOOLS_IMPL).HttpToolsProtocol

    # `base` is picked at run time (uvicorn's class, or a test's stand-in) and mypy cannot subclass a variable:
    # the class is checked as a subclass of Any.
    class HeaderDeadlineProtocol(BoundedConnection, base):  # type: ignore[valid-type,misc]
        limits = connection_limits
        metrics = protocol_metrics
        _header_timer: asyncio.TimerHandle | None = None
        # Where llhttp is, for the head meter: inside a body (between headers-complete and message-complete),
        # how many of those two events have passed, and whether a message began since the last one.
        _in_body = False
        _crossings = 0
        _begun = False

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
            """Called when a request may start (at once, or when a pipelined one's turn comes)."""
            scope = cycle.scope
            if door is None or not door.guards(scope["method"], scope["path"]):
                super()._start_asgi_task(cycle, app)
                return
            exc = door.refusal(scope)
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

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_body, self._begun = True, False
            self._crossings += 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_body = False
            self._crossings += 1

        def _reading_head(self) -> bool:
            return not self._in_body

        def _head_marker(self) -> object:
            return self._crossings

        def _head_begun(self) -> bool:
            return self._begun

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._refuse(bad_http_request())

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
