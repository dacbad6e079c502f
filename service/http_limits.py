"""Memory bounded per connection: each request head is counted as it arrives and cut at its limits (414 / 431),
and a connection past the open-connection cap is answered 503, under either of uvicorn's HTTP/1.1 parsers.

Neither parser bounds a request head. llhttp (httptools) has no size limit, and uvicorn and httptools keep the
URL and the current header in Python bytes until they end: one 8 MB header line was read whole and answered 200,
and 20 sockets each sending 32 MB of a header that never ends took RSS from 303 MB to 1 GB in 2 s. h11 caps its
buffer (`max_incomplete_event_size`, 16 KiB by default, below our header limit) but uvicorn answers that with a
plain-text 400. So `BoundedConnection`, mixed into both protocol subclasses, meters the bytes in `data_received`,
before the parser holds them:

- Each read that starts inside a request head is counted before the parser is given it, up to the blank line
  that ends the head: the request line through its LF, then the header block through that blank line. A read that
  takes either past its limit is answered (414 / 431) and never fed, so a header that never ends costs one read.
  The parser still decides where the head ends; the meter only restarts when the parser says a head or a message
  has ended (the three hooks below), and where it sees an end the parser does not, it counts on from there.
- A head that begins inside a read that carried the end of an earlier request (pipelining) is counted from the
  next read, so it may run over by at most that one read: still bounded. (h11's own buffer cap, set to the same
  total, catches even that and is answered 431 too.)
- Every refusal here ends in a lingering close: the reply is written, the write side shut, and whatever the client
  still sends is read and dropped for up to `LINGER_S` before the socket closes. A client in the middle of
  sending its 8 MB header then reads the 431 rather than a connection reset, and nothing is buffered meanwhile.

The connection cap counts open connections (uvicorn's `server_state.connections`), never requests in flight, so
a burst of clients below it meets the door's 429 and not this 503. uvicorn's own `limit_concurrency` counts both,
answers plain text without Retry-After, and puts probes behind it (RELIABILITY #28, #31), hence this instead.
An over-cap connection is answered when its first bytes arrive, not at accept: a reply written and closed before
the client has sent its request would often reach it as a reset instead.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, ClassVar

import orjson

from service.api.errors import reply_parts
from service.errors import (
    HeaderTooLargeError,
    RequestError,
    RequestLineTooLongError,
    ServiceError,
    TooManyConnectionsError,
)
from service.metrics import Metrics

if TYPE_CHECKING:
    from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

# How long a refused connection keeps reading (and dropping) what its client still sends before it is closed.
LINGER_S = 2.0
# How long a connection over the cap may stay silent before it is closed without a reply.
OVER_CAP_GRACE_S = 1.0
_BLANK_LINE = re.compile(rb"\n\r?\n")


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection bounds (EMBED_MAX_REQUEST_LINE_BYTES, EMBED_MAX_HEADER_BYTES, EMBED_MAX_CONNECTIONS).

    The request line counts from its first byte through its LF; the header block from the byte after that through
    the blank line that ends the head, CRLFs included.
    """

    max_request_line_bytes: int = 8192
    max_header_bytes: int = 32768
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if min(self.max_request_line_bytes, self.max_header_bytes, self.max_connections) < 1:
            raise ValueError(f"connection limits must be >= 1: {self}")


def bad_http_request() -> RequestError:
    """What a request the HTTP parser rejects (a control character in a header, a broken request line) gets."""
    return RequestError("malformed HTTP request", code="bad_http_request")


class HeadMeter:
    """The bytes of one request head as they arrive, split into the request line and the header block.

    `feed` is given each read that starts inside the head, before the parser sees it, and counts it up to the
    blank line that ends the head (h11's rule, `\n\r?\n`, which also covers llhttp's stricter CRLF one). It keeps
    two counts and the last two bytes, never the head itself.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.max_line_bytes = limits.max_request_line_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.restart()

    def restart(self, *, mid_head: bool = False) -> None:
        """A new head starts with the next byte fed; `mid_head`: its start went by unseen (pipelining), so where
        its request line ended is unknown and every byte from here counts against the header block."""
        self.line_bytes = 0
        self.header_bytes = 0
        self.done = False
        self._line_started = mid_head
        self._line_done = mid_head
        self._tail = b""  # the last bytes of the header block so far, for a blank line split across reads

    def feed(self, data: bytes) -> RequestError | None:
        """Count the head bytes at the start of `data`; the error to answer if they pass a limit."""
        start = 0
        if not self._line_done:
            if not self._line_started:  # llhttp skips empty lines before a request line: they count as its own
                start = len(data) - len(data.lstrip(b"\r\n"))
                self.line_bytes += start
                self._line_started = start < len(data)
            end = data.find(b"\n", start)
            self.line_bytes += (len(data) if end < 0 else end + 1) - start
            if self.line_bytes > self.max_line_bytes:
                return self.line_error()
            if end < 0:
                return None
            self._line_done, self._tail, start = True, b"\n", end + 1  # that LF may begin the blank line
        window = self._tail + data[start:]
        blank = _BLANK_LINE.search(window)
        if blank is None:
            self.header_bytes += len(data) - start
            self._tail = window[-2:]
        else:
            self.header_bytes += blank.end() - len(self._tail)
            self.done = True
        return self.header_error() if self.header_bytes > self.max_header_bytes else None

    def line_error(self) -> RequestLineTooLongError:
        return RequestLineTooLongError(f"the request line is longer than {self.max_line_bytes} bytes")

    def header_error(self) -> HeaderTooLargeError:
        return HeaderTooLargeError(f"the request headers are larger than {self.max_header_bytes} bytes")


def error_reply(exc: ServiceError, default_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 reply to `exc` in the one JSON error shape (the OpenAI one: no route is known yet),
    with an X-Request-ID and `connection: close`, for a protocol to write before any ASGI task exists."""
    status, content, headers = reply_parts(exc)
    body = orjson.dumps(content)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode("ascii")]
    head += [name + b": " + value for name, value in default_headers]
    head += [b"content-type: application/json", b"content-length: %d" % len(body)]
    head += [name.lower().encode("latin-1") + b": " + value.encode("latin-1") for name, value in headers.items()
             if name.lower() != "connection"]
    head += [b"x-request-id: " + uuid.uuid4().hex.encode("ascii"), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class BoundedConnection(asyncio.Protocol):
    """Mixed in before a uvicorn HTTP protocol class: the head meter, the connection cap and lingering refusals.

    The parser-specific subclass says where its parser is through three hooks: `_reading_head` (inside a
    request head, or waiting for the next one), `_head_marker` (a value that changes whenever the parser
    finishes a head or a message) and `_head_begun` (after such a change: has the next head's first byte already
    been parsed).
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    metrics: ClassVar[Metrics | None] = None

    # Set by the uvicorn protocol this is mixed into.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: ServerState

    _meter: HeadMeter
    _refused = False
    _over_cap = False
    _linger: asyncio.TimerHandle | None = None

    def _reading_head(self) -> bool:
        raise NotImplementedError

    def _head_marker(self) -> object:
        raise NotImplementedError

    def _head_begun(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._meter = HeadMeter(self.limits)
        if len(self.server_state.connections) > self.limits.max_connections:  # uvicorn has counted this one
            self._over_cap = True
            self._linger = self.loop.call_later(OVER_CAP_GRACE_S, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        if self._over_cap:
            self._refuse(TooManyConnectionsError(
                f"the server already has {self.limits.max_connections} connections open; retry shortly"))
            return
        in_head, marker = self._reading_head(), self._head_marker()
        if in_head and not self._meter.done:
            error = self._meter.feed(data)
            if error is not None:
                self._refuse(error)  # the parser never sees the bytes past the limit
                return
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._head_marker() != marker or (not in_head and self._reading_head()):
            # A head or a message ended inside `data`: the next head starts after it, or started inside it.
            self._meter.restart(mid_head=self._head_begun())
        elif in_head and self._meter.done:
            # The meter saw a blank line the parser did not take as the end of the head: count on from here.
            self._meter.restart(mid_head=True)

    def _refuse(self, exc: ServiceError) -> None:
        """Answer `exc` on this connection and close it, lingering so the client can read the reply."""
        self._refused = True
        status, _, _ = reply_parts(exc)
        logger.info("refused a connection's request with %d %s: %s", status, exc.code, exc.message)
        if self.metrics is not None:
            self.metrics.rejected.labels(exc.code).inc()
        self.transport.write(error_reply(exc, self.server_state.default_headers))
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self._close)
        else:
            self.transport.close()

    def _close(self) -> None:
        self._linger = None
        if not self.transport.is_closing():
            self.transport.close()
