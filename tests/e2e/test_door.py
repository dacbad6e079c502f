"""The load-shedding door (service/api/shed.py) over raw sockets: with the queue full, an inference request is
refused before its body is read, in the one error shape with Retry-After and X-Request-ID, counted in /metrics;
the rest of its body is discarded and the keep-alive connection serves the next request; `Connection: close`
is honoured. Run with the door in the HTTP protocol (the default) and inside the app (what CORS selects)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import ServerProcess

BODY = json.dumps({"inputs": "x" * 20_000}).encode()


def _read_response(sock: socket.socket, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def _hold_the_only_slot(srv: ServerProcess) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = httpx.get(f"{srv.base_url}/metrics").text
        if re.search(r'^embed_queue_depth\{model="[^"]+"\} 1\.0$', text, re.MULTILINE):
            return
        time.sleep(0.02)
    raise AssertionError("the holding request never reached the queue")


@pytest.mark.parametrize("where", ["protocol", "app"])
def test_refusal_at_the_door_keeps_the_connection(start_server: Callable[..., ServerProcess], where: str) -> None:
    env = {"EMBED_MAX_QUEUE_SIZE": "1", "EMBED_MAX_WAIT_MS": "4000", "EMBED_QUEUE_TIMEOUT_S": "3",
           "EMBED_BATCH_WINDOW_ADAPTIVE": "false"}
    if where == "app":
        env["EMBED_CORS_ORIGINS"] = "https://example.test"  # CORS keeps the door inside the app
    srv = start_server(**env)
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, f"{srv.base_url}/embed", json={"inputs": "a"}, timeout=10)
        _hold_the_only_slot(srv)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            head = (b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"x-request-id: door-test-1\r\ncontent-length: %d\r\n\r\n" % len(BODY))
            sock.sendall(head + BODY[:100])  # most of the body is still unsent when the answer comes
            status, headers, body = _read_response(sock)
            assert status == 429
            assert headers["content-type"] == "application/json"
            assert int(headers["retry-after"]) >= 1
            assert headers["x-request-id"] == "door-test-1"
            err = json.loads(body)  # TEI's shape on /embed
            assert set(err) == {"error", "error_type"}
            assert err["error_type"] == "Overloaded"
            assert "xxxx" not in body.decode()
            # The rest of the refused body is discarded; the same connection serves the next request.
            sock.sendall(BODY[100:] + b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            status, _, body = _read_response(sock)
            assert status == 200
            assert json.loads(body)["status"] == "ok"
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY)
            status, headers, _ = _read_response(sock)
            assert status == 429
            assert headers.get("connection") == "close"
            assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
            sock.settimeout(5)
            assert sock.recv(1) == b"", "the server closes a connection: close request after its answer"
        assert holder.result().status_code in (200, 503)
    metrics = httpx.get(f"{srv.base_url}/metrics").text
    assert re.search(r'^embed_requests_total\{route="/embed",status="429"\} 1\.0$', metrics, re.MULTILINE)
    assert re.search(r'^embed_requests_total\{route="/v1/embeddings",status="429"\} 1\.0$', metrics, re.MULTILINE)
    assert re.search(r'^embed_rejected_total\{reason="queue_full"\} 2\.0$', metrics, re.MULTILINE)
    # Once the slot is free the door lets requests in again (its count went back down): this one is admitted,
    # then, alone in a 4 s batching window with a 3 s deadline, answered queue_timeout rather than queue_full.
    after = httpx.post(f"{srv.base_url}/embed", json={"inputs": "after"}, timeout=10)
    assert (after.status_code, after.json()["error_type"]) == (503, "Unhealthy")  # TEI's name for it
    assert "Traceback" not in srv.log()
