"""SIGTERM under 64-client load (RELIABILITY #36): /ready 503 at once, every accepted request 200, exit 0 in time.

uvicorn closes its listener and idle keep-alive connections as soon as its shutdown starts, so a probe sent
after the signal usually finds no socket to ask. `EMBED_DRAIN_DELAY_S` keeps serving (with /ready 503) for that
long first, the built-in form of a Kubernetes preStop sleep; that is the window in which this test watches
/ready, over a keep-alive connection opened before the signal, and in which a fresh connection still works.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess

CLIENTS = 64
DRAIN_DELAY_S = 1.5
GRACEFUL_S = 10.0


def test_sigterm_under_load_drains_and_exits_zero(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(EMBED_DRAIN_DELAY_S=str(DRAIN_DELAY_S), EMBED_MAX_WAIT_MS="5", EMBED_QUEUE_TIMEOUT_S="10",
                       EMBED_INTRA_OP_THREADS="1")
    stop = threading.Event()
    started: list[float] = []  # when each request was sent
    outcomes: list[tuple[float, int | str]] = []  # (sent at, status or exception name)
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=srv.base_url, timeout=30.0) as http:
            n = 0
            while not stop.is_set() and n < 500:  # bounded even if the signal never comes
                n += 1
                sent = time.monotonic()
                with lock:
                    started.append(sent)
                try:
                    result: int | str = http.post("/embed", json={"inputs": f"client {i} request {n}"}).status_code
                except httpx.HTTPError as exc:
                    result = type(exc).__name__
                with lock:
                    outcomes.append((sent, result))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    with httpx.Client(base_url=srv.base_url, timeout=5.0) as probe:
        assert probe.get("/ready").status_code == 200  # opens the keep-alive connection before the signal
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(outcomes) < 3 * CLIENTS and time.monotonic() < deadline:  # real load first
            time.sleep(0.05)
        signalled_at = time.monotonic()
        stop.set()  # clients send nothing new after the signal: everything counted was accepted before it
        srv.terminate()
        first = probe.get("/ready")
        first_latency = time.monotonic() - signalled_at
        assert first.status_code == 503, first.text
        assert first.json()["error"]["code"] == "unavailable"
        assert int(first.headers["retry-after"]) >= 1
        assert first_latency < 1.0, f"/ready took {first_latency:.2f}s to turn 503"
        with httpx.Client(base_url=srv.base_url, timeout=5.0) as fresh:  # still serving inside the drain delay
            assert fresh.get("/ready").status_code == 503
            assert fresh.post("/embed", json={"inputs": "during the delay"}).status_code == 200
    for t in threads:
        t.join(timeout=GRACEFUL_S + DRAIN_DELAY_S + 10)
    assert not any(t.is_alive() for t in threads), "a client hung"
    code = srv.proc.wait(timeout=GRACEFUL_S + DRAIN_DELAY_S + 10)
    exited_after = time.monotonic() - signalled_at
    assert code == 0
    assert exited_after < GRACEFUL_S + DRAIN_DELAY_S
    accepted = [result for sent, result in outcomes if sent < signalled_at]
    assert len(accepted) >= 3 * CLIENTS
    assert all(result == 200 for result in accepted), {r for r in accepted if r != 200}
    log = srv.log()
    assert "shutdown requested: /ready is now 503" in log
    assert "Traceback" not in log
    try:
        httpx.get(f"{srv.base_url}/health", timeout=2.0)
        raise AssertionError("the listener is still open after exit")
    except httpx.ConnectError:
        pass


def test_second_sigterm_skips_the_drain_delay(start_server: Callable[..., ServerProcess]) -> None:
    """RELIABILITY #37: a second signal during the drain delay shuts down at once (still cleanly, exit 0)."""
    srv = start_server(EMBED_DRAIN_DELAY_S="60")
    srv.terminate()
    deadline = time.monotonic() + 5
    while httpx.get(f"{srv.base_url}/ready", timeout=2).status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{srv.base_url}/health", timeout=2).status_code == 200  # still serving inside the delay
    t0 = time.monotonic()
    srv.terminate()
    assert srv.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5


def test_teardown_fails_a_server_that_does_not_exit_zero(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    """What every e2e fixture's teardown relies on (tests/e2e/conftest.py): SIGTERM must end a ready server with
    exit code 0, and a server that ends any other way fails the test."""
    clean = ServerProcess(tiny_artifact_dir, tmp_path / "clean.log", EMBED_INTRA_OP_THREADS="1").wait_ready()
    clean.stop_and_check()
    assert clean.proc.returncode == 0
    killed = ServerProcess(tiny_artifact_dir, tmp_path / "killed.log", EMBED_INTRA_OP_THREADS="1").wait_ready()
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(timeout=10)
    with pytest.raises(AssertionError, match="exited with -9"):
        killed.stop_and_check()
