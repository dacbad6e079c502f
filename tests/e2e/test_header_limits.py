"""Memory bounded per connection, over real sockets against `python -m service` (service/http_limits.py): an
8 MB header line is 431 and closed, an over-long request line 414, a head at the limit is served, under both
HTTP parsers; 200 attacking connections leave RSS flat while normal clients keep getting 200; past
EMBED_MAX_CONNECTIONS a connection gets 503 + Retry-After, and is served again once others close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from bench.proc_rss import vm_rss_bytes
from tests.e2e.conftest import ServerProcess

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 8192  # the defaults: the servers here run with them
MAX_HEADER_BYTES = 32768
ATTACKERS = 200
ATTACK_BYTES = 1 << 20  # what each attacker sends: 26 times the whole head limit
RSS_GROWTH_LIMIT = 50 << 20


@pytest.fixture(scope="module", params=["httptools", "h11"])
def parser_server(request: pytest.FixtureRequest, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(EMBED_HTTP_PARSER=request.param, EMBED_INTRA_OP_THREADS="1")


def exchange(port: int, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send `request` from a thread (the server may answer and stop reading long before it is all sent) while
    reading the reply here until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        def send() -> None:
            with contextlib.suppress(OSError):  # the server closed after its lingering read: expected
                sock.sendall(request)

        sender = threading.Thread(target=send)
        sender.start()
        reply = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        else:
            raise AssertionError(f"the server did not close the connection: {reply[:300]!r}")
        sender.join(timeout=timeout_s)
        return reply


def parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_json_error(reply: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse(reply)
    assert got == status, reply[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert "x-request-id" in headers
    assert len(body) == int(headers["content-length"])  # one whole reply, nothing after it
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["type"] == ("service_unavailable_error" if status == 503 else "invalid_request_error")
    assert "aaaa" not in body.decode()  # never echoes the request
    return headers


def head_at_limit(path: bytes = b"/health") -> bytes:
    """A request whose header block is exactly EMBED_MAX_HEADER_BYTES (blank line included)."""
    line = b"GET " + path + b" HTTP/1.1\r\n"
    start, end = b"host: x\r\nconnection: close\r\nx-pad: ", b"\r\n\r\n"
    return line + start + b"a" * (MAX_HEADER_BYTES - len(start) - len(end)) + end


def test_an_8_mb_header_line_is_431_and_closed(parser_server: ServerProcess) -> None:
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    assert_json_error(exchange(parser_server.port, request), 431, "request_header_fields_too_large")


def test_an_over_long_request_line_is_414(parser_server: ServerProcess) -> None:
    target = b"/health?q=" + b"a" * MAX_LINE_BYTES
    assert_json_error(exchange(parser_server.port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n"),
                      414, "uri_too_long")


def test_a_head_at_the_limit_is_served_and_one_byte_more_is_not(parser_server: ServerProcess) -> None:
    status, _, body = parse(exchange(parser_server.port, head_at_limit()))
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    over = head_at_limit().replace(b"x-pad: ", b"x-pad: a", 1)
    assert_json_error(exchange(parser_server.port, over), 431, "request_header_fields_too_large")
    # The same limits with a body behind the head: the body is not counted against them.
    payload = json.dumps({"inputs": "a normal input"}).encode()
    post = (b"POST /embed HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nx-pad: " % len(payload) + b"b" * 30_000 + b"\r\n\r\n" + payload)
    assert parse(exchange(parser_server.port, post))[0] == 200


def test_200_attacking_connections_leave_rss_flat_and_clients_served(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server(EMBED_INTRA_OP_THREADS="1")
    pid = srv.proc.pid
    with httpx.Client(base_url=srv.base_url, timeout=30) as http:
        for _ in range(20):  # warm the allocator with the normal path before the baseline
            assert http.post("/embed", json={"inputs": "warm up"}).status_code == 200
    before = vm_rss_bytes(pid)

    peak = [before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], vm_rss_bytes(pid))
            time.sleep(0.02)

    statuses: list[int] = []
    attacking = threading.Event()

    def normal_client() -> None:
        with httpx.Client(base_url=srv.base_url, timeout=30) as http:
            while attacking.is_set() or not statuses:
                statuses.append(http.post("/embed", json={"inputs": "a normal client"}).status_code)

    sampler, client = threading.Thread(target=sample), threading.Thread(target=normal_client)
    attacking.set()
    sampler.start()
    client.start()
    try:
        replies = _attack(srv.port)
    finally:
        attacking.clear()
        client.join(timeout=30)
    time.sleep(0.5)
    after = vm_rss_bytes(pid)
    sampling.set()
    sampler.join()
    logger.info("RSS before %.1f MB, peak during the attack %.1f MB, after %.1f MB", before / 2**20,
                peak[0] / 2**20, after / 2**20)

    refused = [parse(r)[0] if r.startswith(b"HTTP/1.1 ") else None for r in replies]
    assert refused.count(431) == ATTACKERS, refused  # every attacker got its answer before the close
    assert peak[0] - before < RSS_GROWTH_LIMIT, f"RSS {before >> 20} -> {peak[0] >> 20} MB during the attack"
    assert after - before < RSS_GROWTH_LIMIT
    assert statuses
    assert set(statuses) == {200}, statuses
    with httpx.Client(base_url=srv.base_url, timeout=30) as http:
        assert http.post("/embed", json={"inputs": "after the attack"}).status_code == 200
        metrics = http.get("/metrics").text
    assert re.search(r'embed_rejected_total\{reason="request_header_fields_too_large"\} 200\.0', metrics)
    assert "Traceback" not in srv.log()


def _attack(port: int) -> list[bytes]:
    """ATTACKERS sockets, half sending a complete 1 MB header line and half a header that never ends (1 MB of it,
    then silence), round-robin from this one thread; what each received before the server closed it."""
    socks = []
    for _ in range(ATTACKERS):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
    head = b"POST /embed HTTP/1.1\r\nhost: x\r\nx-attack: "
    payloads = [memoryview(head + b"a" * (ATTACK_BYTES - len(head)) + (b"\r\n\r\n" if i % 2 else b""))
                for i in range(ATTACKERS)]
    sent, replies, eof = [0] * ATTACKERS, [b""] * ATTACKERS, [False] * ATTACKERS
    deadline = time.monotonic() + 20
    try:
        # Each keeps sending after its reply (the server reads and drops it while lingering) until it has sent
        # everything or the server has closed; the reply is read as it comes, never after the close.
        while not all(e and n == len(p) for e, n, p in zip(eof, sent, payloads, strict=True)):
            assert time.monotonic() < deadline, "the attack did not finish"
            for i, s in enumerate(socks):
                if sent[i] < len(payloads[i]):
                    try:
                        sent[i] += s.send(payloads[i][sent[i]:sent[i] + 65536])
                    except BlockingIOError:
                        pass
                    except OSError:
                        sent[i] = len(payloads[i])  # closed by the server
                if eof[i]:
                    continue
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                replies[i] += chunk
                eof[i] = not chunk
            time.sleep(0.001)
    finally:
        for s in socks:
            s.close()
    return replies


def test_connections_past_the_cap_get_503_and_are_served_after_others_close(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server(EMBED_MAX_CONNECTIONS="20", EMBED_INTRA_OP_THREADS="1")
    request = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    held: list[socket.socket] = []
    try:
        for _ in range(20):  # 20 keep-alive connections, each known to be accepted: it was served
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(request)
            assert _read_reply(s)[0] == 200
            held.append(s)
        headers = assert_json_error(exchange(srv.port, request), 503, "too_many_connections")
        assert headers["retry-after"] == "1"
        for s in held[:5]:
            s.close()
        del held[:5]
        deadline = time.monotonic() + 10
        while True:  # the server notices the closes within a loop turn; poll instead of sleeping a guess
            reply = exchange(srv.port, request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
            if parse(reply)[0] == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert parse(reply)[0] == 200, reply[:300]
        for s in held:  # the connections under the cap were served all along
            s.sendall(request)
            assert _read_reply(s)[0] == 200
    finally:
        for s in held:
            s.close()
    assert 'embed_rejected_total{reason="too_many_connections"}' in httpx.get(f"{srv.base_url}/metrics").text


def _read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    status, headers, body = parse(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body
