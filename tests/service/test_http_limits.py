"""Memory bounded per connection (service/http_limits.py): the head meter on its own, then both protocol
subclasses (httptools and h11) driven through a fake transport: 414 / 431 as bytes arrive, exact limits, heads
and bodies sharing a read, keep-alive and pipelining, lingering close, the connection cap's 503, and h11's own
buffer cap answered 431."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from service import http_limits
from service.h11_protocol import bounded_h11_protocol
from service.http_limits import ConnectionLimits, HeadMeter
from service.metrics import Metrics
from service.protocol import header_deadline_protocol

LIMITS = ConnectionLimits(max_request_line_bytes=256, max_header_bytes=1024, max_connections=3)
LINE = b"GET /health HTTP/1.1\r\n"


def header_block(size: int) -> bytes:
    """A header block of exactly `size` bytes, blank line included."""
    start, end = b"host: x\r\nx-pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def request_line(size: int) -> bytes:
    """A request line of exactly `size` bytes, CRLF included."""
    return b"GET /" + b"a" * (size - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"


# --- the meter on its own -------------------------------------------------------------------------------------

def feed_all(meter: HeadMeter, data: bytes, step: int) -> Any:
    for i in range(0, len(data), step):
        error = meter.feed(data[i:i + step])
        if error is not None or meter.done:
            return error
    return None


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 100_000])
def test_meter_limits_are_exact_however_the_bytes_are_split(step: int) -> None:
    for line, block, code in ((256, 1024, None), (257, 1024, "uri_too_long"),
                              (256, 1025, "request_header_fields_too_large")):
        meter = HeadMeter(LIMITS)
        error = feed_all(meter, request_line(line) + header_block(block), step)
        assert (error.code if error else None) == code, (line, block, step)
        if code is None:
            assert meter.done
            assert (meter.line_bytes, meter.header_bytes) == (line, block)


def test_meter_stops_at_the_blank_line_and_ignores_the_body() -> None:
    meter = HeadMeter(LIMITS)
    assert meter.feed(LINE + b"host: x\r\n\r\n" + b"x" * 100_000) is None
    assert meter.done
    assert meter.header_bytes == len(b"host: x\r\n\r\n")


def test_meter_cuts_a_header_that_never_ends_and_keeps_nothing_of_it() -> None:
    meter = HeadMeter(LIMITS)
    assert meter.feed(LINE + b"x-endless: ") is None
    error = None
    for _ in range(100):
        error = meter.feed(b"a" * 100)
        if error:
            break
    assert error is not None
    assert error.code == "request_header_fields_too_large"
    assert meter.header_bytes <= LIMITS.max_header_bytes + 100
    assert len(vars(meter)["_tail"]) <= 2


def test_meter_counts_a_head_without_headers_and_lf_only_lines() -> None:
    for head in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\n\n", b"GET / HTTP/1.1\r\nhost: x\n\n"):
        meter = HeadMeter(LIMITS)
        assert feed_all(meter, head, 1) is None
        assert meter.done, head


def test_meter_counts_empty_lines_before_the_request_line_as_part_of_it() -> None:
    meter = HeadMeter(LIMITS)
    assert meter.feed(b"\r\n" * 100) is None
    assert meter.line_bytes == 200
    error = meter.feed(request_line(100))
    assert error is not None
    assert error.code == "uri_too_long"


def test_meter_restarted_mid_head_counts_everything_as_headers() -> None:
    meter = HeadMeter(LIMITS)
    meter.restart(mid_head=True)
    error = meter.feed(b"a" * 1025)  # no LF at all: as the rest of a head, it is the header block that is over
    assert error is not None
    assert error.code == "request_header_fields_too_large"


# --- both protocols through a fake transport ------------------------------------------------------------------

class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class App:
    """An ASGI app that answers every request 200 "ok" after reading its body, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["path"], len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Harness:
    def __init__(self, parser: str, limits: ConnectionLimits = LIMITS) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = App()
        self.metrics = Metrics()
        self.config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False)
        self.state = ServerState()
        if parser == "httptools":
            self.cls: type[asyncio.Protocol] = header_deadline_protocol(10.0, None, limits=limits,
                                                                        metrics=self.metrics)
        else:
            self.cls = bounded_h11_protocol(limits, self.metrics)

    def connect(self) -> tuple[Any, FakeTransport]:
        protocol: Any = self.cls(config=self.config, server_state=self.state, app_state={},  # type: ignore[call-arg]
                                 _loop=self.loop)
        transport = FakeTransport()
        protocol.connection_made(transport)
        return protocol, transport

    def settle(self) -> None:
        """Run the request tasks the protocol started until they are done."""
        for _ in range(20):
            self.loop.run_until_complete(asyncio.sleep(0))
        if self.state.tasks:
            self.loop.run_until_complete(asyncio.wait(list(self.state.tasks), timeout=5))

    def close(self) -> None:
        for task in self.state.tasks:
            task.cancel()
        if self.state.tasks:
            self.loop.run_until_complete(asyncio.wait(list(self.state.tasks)))
        self.loop.close()


@pytest.fixture(params=["httptools", "h11"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param)
    yield h
    h.close()


def reply(transport: FakeTransport) -> tuple[int, dict[str, str], Any]:
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body.startswith(b"{") else body


def assert_refused(transport: FakeTransport, status: int, code: str) -> dict[str, str]:
    got, headers, body = reply(transport)
    assert got == status, bytes(transport.written)[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert len(headers["x-request-id"]) == 32
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert transport.eof
    assert not transport.closed
    return headers


def feed(protocol: Any, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        protocol.data_received(data[i:i + step])


@pytest.mark.parametrize("step", [1, 64, 65536])
def test_a_header_over_the_limit_is_431_as_it_arrives(harness: Harness, step: int) -> None:
    protocol, transport = harness.connect()
    feed(protocol, LINE + header_block(1025), step)
    harness.settle()
    assert_refused(transport, 431, "request_header_fields_too_large")
    assert harness.app.seen == []
    written = len(transport.written)
    feed(protocol, b"a" * 1_000_000, 65536)  # the rest of the attack: read and dropped, never parsed
    assert len(transport.written) == written
    assert 'reason="request_header_fields_too_large"} 1.0' in harness.metrics.render().decode()


def test_a_header_that_never_ends_is_cut_after_one_read(harness: Harness) -> None:
    protocol, transport = harness.connect()
    protocol.data_received(LINE + b"x-endless: ")
    fed = 0
    while not transport.written:
        protocol.data_received(b"a" * 512)
        fed += 512
        assert fed < 10_000
    assert fed <= LIMITS.max_header_bytes + 512
    assert_refused(transport, 431, "request_header_fields_too_large")


@pytest.mark.parametrize("step", [1, 65536])
def test_a_request_line_over_the_limit_is_414(harness: Harness, step: int) -> None:
    protocol, transport = harness.connect()
    feed(protocol, request_line(257) + b"host: x\r\n\r\n", step)
    harness.settle()
    assert_refused(transport, 414, "uri_too_long")
    assert harness.app.seen == []


@pytest.mark.parametrize("step", [1, 65536])
def test_a_head_exactly_at_both_limits_is_served(harness: Harness, step: int) -> None:
    protocol, transport = harness.connect()
    feed(protocol, request_line(256) + header_block(1024), step)
    harness.settle()
    assert reply(transport)[0] == 200
    assert len(harness.app.seen) == 1


def test_a_body_sharing_the_head_read_is_not_counted_as_head(harness: Harness) -> None:
    protocol, transport = harness.connect()
    body = b"x" * 200_000
    protocol.data_received(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    harness.settle()
    assert reply(transport)[0] == 200
    assert harness.app.seen == [("/embed", len(body))]


def test_every_request_of_a_keep_alive_connection_is_metered(harness: Harness) -> None:
    protocol, transport = harness.connect()
    for _ in range(3):
        protocol.data_received(request_line(256) + header_block(1024))
        harness.settle()
        assert reply(transport)[0] == 200
        transport.written.clear()
    protocol.data_received(request_line(257) + b"host: x\r\n\r\n")
    harness.settle()
    assert_refused(transport, 414, "uri_too_long")
    assert len(harness.app.seen) == 3


def test_pipelined_requests_in_one_read_are_all_served(harness: Harness) -> None:
    protocol, transport = harness.connect()
    protocol.data_received((LINE + header_block(1000)) * 5)  # 5 KB in one read, each head under its limit
    for _ in range(5):
        harness.settle()
    assert bytes(transport.written).count(b"HTTP/1.1 200 ") == 5
    assert not transport.eof


def test_a_malformed_request_is_400_in_the_json_shape(harness: Harness) -> None:
    protocol, transport = harness.connect()
    protocol.data_received(b"GET /health HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n")
    assert_refused(transport, 400, "bad_http_request")


def test_lingering_ends_in_a_close(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "LINGER_S", 0.01)
    protocol, transport = harness.connect()
    protocol.data_received(request_line(300))
    assert transport.eof
    assert not transport.closed
    harness.loop.run_until_complete(asyncio.sleep(0.05))
    assert transport.closed
    protocol.connection_lost(None)


def test_connections_past_the_cap_get_503_with_retry_after(harness: Harness) -> None:
    held = [harness.connect() for _ in range(LIMITS.max_connections)]
    protocol, transport = harness.connect()
    protocol.data_received(LINE + b"host: x\r\n\r\n")
    headers = assert_refused(transport, 503, "too_many_connections")
    assert headers["retry-after"] == "1"
    protocol.connection_lost(None)
    for p, _t in held:  # the connections under the cap are served as usual
        p.data_received(LINE + b"host: x\r\n\r\n")
    harness.settle()
    assert all(reply(t)[0] == 200 for _, t in held)
    held[0][0].connection_lost(None)
    again, transport = harness.connect()
    again.data_received(LINE + b"host: x\r\n\r\n")
    harness.settle()
    assert reply(transport)[0] == 200


def test_a_silent_connection_past_the_cap_is_closed(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_limits, "OVER_CAP_GRACE_S", 0.01)
    for _ in range(LIMITS.max_connections):
        harness.connect()
    _, transport = harness.connect()
    harness.loop.run_until_complete(asyncio.sleep(0.05))
    assert transport.closed
    assert not transport.written


def test_h11s_own_buffer_cap_is_answered_431_not_400() -> None:
    """The backstop behind the meter: h11 fed directly (as a pipelined head the meter saw only part of)."""
    h = Harness("h11")
    try:
        protocol, transport = h.connect()
        H11Protocol.data_received(protocol, LINE + b"x-endless: " + b"a" * 2000)
        assert_refused(transport, 431, "request_header_fields_too_large")
    finally:
        h.close()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        ConnectionLimits(max_connections=0)
