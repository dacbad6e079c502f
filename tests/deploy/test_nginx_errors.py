"""The errors nginx itself answers (no replica, body too large) come in the route family's shape, like the
replicas' own: TEI's {"error", "error_type"} on text-embeddings-inference's routes, OpenAI's elsewhere."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy import nginx_conf
from tests.deploy.processes import stop, wait_ready
from tests.server_process import free_port
from tests.tei_openapi import tei_errors


@pytest.fixture
def lb_without_replicas(nginx: str, tmp_path: Path) -> Iterator[str]:
    """nginx with one upstream that nothing listens on: every proxied request becomes its own 503 page."""
    port = free_port()
    conf = nginx_conf.render(tmp_path / "nginx", listen_port=port, upstream_ports=[free_port()])
    check = nginx_conf.check(nginx, conf)
    assert check.returncode == 0, check.stderr
    with (conf.parent / "logs" / "stderr.log").open("wb") as err:
        lb = subprocess.Popen(nginx_conf.command(nginx, conf), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_ready(f"http://127.0.0.1:{port}/lb-health", lb, conf.parent / "logs" / "stderr.log", timeout_s=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(lb)


@pytest.mark.parametrize("route", ["/embed", "/", "/invocations", "/similarity", "/decode"])
def test_tei_routes_get_tei_shaped_nginx_errors(lb_without_replicas: str, route: str) -> None:
    r = httpx.post(lb_without_replicas + route, json={"inputs": "a"}, timeout=30)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers.get("x-request-id")
    assert r.json()["error_type"] == "Unhealthy"
    assert tei_errors("ErrorResponse", r.json()) == []
    big = httpx.post(lb_without_replicas + route, content=b'{"inputs": "' + b"a" * 3_000_000 + b'"}',
                     headers={"content-type": "application/json"}, timeout=30)
    assert big.status_code == 413
    assert big.json() == {"error": "request body too large", "error_type": "Validation"}


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/encode", "/embedx"])
def test_other_routes_keep_openai_shaped_nginx_errors(lb_without_replicas: str, route: str) -> None:
    r = httpx.post(lb_without_replicas + route, json={"input": "a"}, timeout=30)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_upstream"
