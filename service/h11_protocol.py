"""uvicorn's h11 protocol with the per-connection bounds of service/http_limits.py: the fallback parser
(`EMBED_HTTP_PARSER=h11`, or no httptools installed), answering over-long heads 414 / 431 and connections past
the cap 503 in the one JSON error shape, as the httptools protocol does.

h11 has a cap of its own, `max_incomplete_event_size` (16 KiB by default, so a 20 KB header block, legal under
our 32 KiB limit, was refused), and uvicorn answers it with a plain-text 400 although h11 suggests 431. Here the
cap is raised to exactly the request line plus the header limit and stays as the backstop behind the meter,
answered 431; the meter normally cuts first. The load-shedding door runs inside the app on h11 (no protocol
hook is needed for it), and there is no header deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service.errors import ServiceError
from service.http_limits import BoundedConnection, ConnectionLimits, HeadMeter, bad_http_request
from service.metrics import Metrics

# What BoundedH11Protocol overrides or calls on uvicorn's class (checked at start-up by service/protocol.py).
H11_HOOKS = ("connection_made", "connection_lost", "data_received", "handle_events", "on_response_complete",
             "send_400_response")


class _Connection(h11.Connection):
    """h11's connection, remembering the status h11 suggested for the protocol error it last raised: uvicorn's
    handler is only given a message, and 431 (h11's buffer cap) must not come out as 400."""

    error_status_hint: int | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status_hint = exc.error_status_hint
            raise


def bounded_h11_protocol(limits: ConnectionLimits, metrics: Metrics | None = None) -> type[H11Protocol]:
    """uvicorn `http=` protocol class: h11 with `limits` (head sizes, open connections) enforced."""

    class BoundedH11Protocol(BoundedConnection, H11Protocol):
        def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                     _loop: asyncio.AbstractEventLoop | None = None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._h11 = _Connection(h11.SERVER, limits.max_request_line_bytes + limits.max_header_bytes)
            self.conn = self._h11

        def _reading_head(self) -> bool:
            return self.conn.their_state is h11.IDLE

        def _head_marker(self) -> object:
            return self.cycle  # a new cycle per request head h11 completes

        def _head_begun(self) -> bool:
            return bool(self.conn.trailing_data[0])  # h11 already holds bytes of the next request

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start the next cycle and parse what was already buffered
            if self._reading_head():
                self._meter.restart(mid_head=self._head_begun())

        def send_400_response(self, msg: str) -> None:
            error: ServiceError = bad_http_request()
            if self._h11.error_status_hint == 431:
                error = HeadMeter(limits).header_error()
            self._refuse(error)

    BoundedH11Protocol.limits = limits
    BoundedH11Protocol.metrics = metrics
    return BoundedH11Protocol
