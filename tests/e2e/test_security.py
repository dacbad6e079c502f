"""Security settings on real servers: API key and public probes, CORS off by default and configurable, token
limits before compute, no secret in the logs even at debug, and client-controlled characters escaped in logs.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_http_api import assert_error

KEY = "sk-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {KEY}"}
ALLOWED = "https://allowed.example"


@pytest.fixture(scope="module")
def secured(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(EMBED_API_KEY=KEY, EMBED_LOG_LEVEL="debug", EMBED_CORS_ORIGINS=ALLOWED,
                        EMBED_MAX_TOKENS_PER_REQUEST="200")


def test_key_guards_every_route_but_the_public_probes(secured: ServerProcess) -> None:
    url = secured.base_url
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path
    for path in ("/info", "/v1/models"):
        r = httpx.get(url + path)
        assert_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + path, headers=AUTH).status_code == 200
    for path, body in (("/embed", {"inputs": "a"}), ("/v1/embeddings", {"input": "a"}), ("/tokenize", {"inputs": "a"}),
                       ("/embed_all", {"inputs": "a"}), ("/v1/encode", {"input": "a"})):
        assert_error(httpx.post(url + path, json=body), 401, "invalid_api_key")
        assert_error(httpx.post(url + path, json=body, headers={"authorization": f"Bearer {KEY[:-1]}"}), 401)
        assert httpx.post(url + path, json=body, headers=AUTH).status_code == 200, path


def test_probes_need_the_key_when_not_public(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    srv = ServerProcess(tiny_artifact_dir, tmp_path / "server.log", EMBED_API_KEY=KEY, EMBED_PUBLIC_PROBES="false")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and srv.proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{srv.base_url}/ready", headers=AUTH, timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        for path in ("/health", "/ready", "/metrics"):
            assert_error(httpx.get(srv.base_url + path), 401, "invalid_api_key")
            assert httpx.get(srv.base_url + path, headers=AUTH).status_code == 200
    finally:
        assert srv.stop() == 0


def test_token_limit_is_checked_before_compute(secured: ServerProcess) -> None:
    def inferences() -> float:
        text = httpx.get(f"{secured.base_url}/metrics").text
        match = re.search(r'^embed_stage_duration_seconds_count\{model="[^"]+",stage="inference"\} (\S+)$', text,
                          re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    before = inferences()
    err = assert_error(httpx.post(f"{secured.base_url}/embed", json={"inputs": ["word " * 100] * 3}, headers=AUTH),
                       413, "too_many_tokens")
    assert "200" in err["message"]
    assert inferences() == before


def test_cors_preflight_allowed_and_refused_origins(secured: ServerProcess) -> None:
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}
    ok = httpx.options(f"{secured.base_url}/v1/embeddings", headers={"origin": ALLOWED, **ask})
    assert ok.status_code == 200  # preflights carry no credentials: answered without the key
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in ok.headers["access-control-allow-methods"]
    refused = httpx.options(f"{secured.base_url}/v1/embeddings", headers={"origin": "https://evil.example", **ask})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = httpx.post(f"{secured.base_url}/embed", json={"inputs": "a"}, headers={**AUTH, "origin": ALLOWED})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ALLOWED
    other = httpx.post(f"{secured.base_url}/embed", json={"inputs": "a"}, headers={**AUTH, "origin": "https://x.y"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(server: ServerProcess) -> None:
    ask = {"origin": ALLOWED, "access-control-request-method": "POST"}
    preflight = httpx.options(f"{server.base_url}/embed", headers=ask)
    assert_error(preflight, 405, "method_not_allowed")
    assert not any(h.startswith("access-control-") for h in preflight.headers)
    r = httpx.post(f"{server.base_url}/embed", json={"inputs": "a"}, headers={"origin": ALLOWED})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def _raw_get(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def test_logs_escape_control_characters_and_never_hold_the_key(secured: ServerProcess) -> None:
    # Percent-encoded ESC and RTL override in the path; a raw RTL override (UTF-8, legal obs-text) in a header.
    path = b"/no/such/%1B[31mred%E2%80%AEdesrever"
    reply = _raw_get(secured.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\xe2\x80\xaereversed\r\n"
                     b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 ")
    # A raw ESC in a header is refused by the HTTP parser, still in the one JSON error shape.
    bad = _raw_get(secured.port, b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: \x1b[31mred\r\n"
                   b"Connection: close\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"bad_http_request"' in bad
    assert b"x-request-id" in bad
    for headers in (AUTH, {"authorization": f"Bearer {KEY}wrong"}, {"authorization": f"Basic {KEY}"}):
        httpx.post(f"{secured.base_url}/embed", json={"inputs": "a"}, headers=headers)
    log = secured.log()
    assert re.search(r"GET /no/such/\\x1b\[31mred\\u202edesrever 404 .* ua=ua\\u202ereversed", log), log[-2000:]
    assert "\x1b" not in log
    assert "\u202e" not in log
    assert " DEBUG " in log  # the debug level really was on
    assert KEY not in log
