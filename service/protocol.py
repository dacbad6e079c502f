"""A header deadline for uvicorn's httptools protocol: the slowloris guard uvicorn lacks (uvicorn#157).

uvicorn times out idle keep-alive connections but not a request whose line and headers trickle in: 200 sockets
sending a byte every few seconds would each hold a connection forever. This subclass arms a timer when a
connection opens and when a new request begins, disarms it once the headers are complete, and closes the socket
if it fires first. The body has its own deadline in `api/jsonio.read_json` (408), where the app can still answer.

It reaches into uvicorn's protocol callbacks (`on_message_begin`, `on_headers_complete`), which are stable
across uvicorn releases but not a public API: `tests/e2e/test_slow_clients.py` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


_BAD_REQUEST_BODY = orjson.dumps(
    {"error": {"message": "malformed HTTP request", "type": "invalid_request_error", "param": None,
               "code": "bad_http_request"}}
)


def header_deadline_protocol(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn `http=` protocol class that closes connections whose headers take over `header_timeout_s`.

    It also answers requests the HTTP parser rejects (a control character in a header, a broken request line)
    in the one JSON error shape with an X-Request-ID, instead of uvicorn's plain-text 400.
    """

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
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
