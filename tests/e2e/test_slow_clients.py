"""Slow clients (RELIABILITY #28, #29): slowloris headers and trickled bodies are cut off at their deadlines
(service/protocol.py, api/jsonio.py) while normal clients and probes on the same server are unaffected.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_http_api import assert_error

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
SLOW_SOCKETS = 150


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_sockets_are_closed_and_normal_clients_unaffected(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server(EMBED_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), EMBED_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    socks: list[socket.socket] = []
    closed_at: dict[int, float] = {}
    try:
        opened_at = time.monotonic()
        for i in range(SLOW_SOCKETS):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setblocking(False)
            if i % 3:  # two in three trickle a request line and headers; the rest never send a byte
                s.send(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set() and time.monotonic() - opened_at < HEADER_TIMEOUT_S + 5:
                for i, s in enumerate(socks):
                    if i in closed_at:
                        continue
                    if _closed_by_peer(s):
                        closed_at[i] = time.monotonic() - opened_at
                        continue
                    if i % 3:
                        with contextlib.suppress(OSError):
                            s.send(b"x")  # one header byte per round
                if len(closed_at) == len(socks):
                    return
                time.sleep(0.25)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        latencies = []
        # Normal clients keep going until the trickler ends by itself (all slow sockets closed, or its own time
        # bound): stopping it after a request count would end the test before the header deadline on a fast machine.
        with httpx.Client(base_url=srv.base_url, timeout=10) as http:
            while trickler.is_alive():
                t0 = time.monotonic()
                assert http.post("/embed", json={"inputs": "a normal client"}).status_code == 200
                assert http.get("/health").status_code == 200
                latencies.append(time.monotonic() - t0)
        trickler.join(timeout=10)
        stop.set()
    finally:
        for s in socks:
            s.close()
    assert len(closed_at) == SLOW_SOCKETS, f"{SLOW_SOCKETS - len(closed_at)} slow sockets still open"
    assert max(closed_at.values()) < HEADER_TIMEOUT_S + 1.5
    assert min(closed_at.values()) >= HEADER_TIMEOUT_S - 0.1  # not before their deadline
    assert len(latencies) >= 20
    assert float(np.percentile(latencies, 99)) < 1.0, "normal clients were slowed down"
    assert "Traceback" not in srv.log()


def test_slow_body_gets_408_and_is_not_a_5xx(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(EMBED_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), EMBED_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))
    head = (b"POST /embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000000\r\n\r\n" + b'{"inputs": "')
    reply = b""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(head)
        s.setblocking(False)
        while time.monotonic() - t0 < BODY_TIMEOUT_S + 3:
            with contextlib.suppress(BlockingIOError):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            with contextlib.suppress(OSError):
                s.send(b"a" * 1024)  # 1 KB every 0.1 s: ~10 KB/s, far short of 1 MB in 2 s
            time.sleep(0.1)
    elapsed = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b'"error_type":"Validation"' in reply
    assert b"connection: close" in reply.lower()  # TEI's shape
    assert BODY_TIMEOUT_S - 0.1 <= elapsed < BODY_TIMEOUT_S + 3
    metrics = httpx.get(f"{srv.base_url}/metrics").text
    assert re.search(r'embed_requests_total\{route="/embed",status="408"\} 1\.0', metrics)
    assert not re.search(r'status="5\d\d"', metrics)
    # The body deadline is whole-body: a fast client with a normal body is unaffected.
    assert httpx.post(f"{srv.base_url}/embed", json={"inputs": "fine"}).status_code == 200
    assert_error(httpx.post(f"{srv.base_url}/embed", content=b"{", headers={"content-type": "application/json"}),
                 400, "invalid_json")


def test_client_leaving_mid_body_is_a_quiet_499(server: ServerProcess) -> None:
    """RELIABILITY #30 for the body phase: no traceback, no 5xx, just one info line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000\r\n\r\n" + b'{"inputs": "')
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while "client disconnected" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client disconnected before its reply (499)" in server.log()
    assert "Traceback" not in server.log()
    assert " ERROR " not in server.log()
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert not re.search(r'status="5\d\d"', metrics)
