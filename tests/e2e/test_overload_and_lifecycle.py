"""Settings-specific servers: 429 / 503 / client disconnect / 401, drain on SIGTERM, refusal to start."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, ServerProcess
from tests.e2e.test_http_api import assert_error
from tests.server_process import free_port

# One queue slot, a long batching window and a short deadline: a lone request waits the whole window in the
# queue, so it times out (503) deterministically, and while it waits the queue is full (429).
SLOW_QUEUE_ENV = {
    "EMBED_MAX_QUEUE_SIZE": "1",
    "EMBED_MAX_WAIT_MS": "1500",
    "EMBED_BATCH_WINDOW_ADAPTIVE": "false",  # the window must hold even a lone request
    "EMBED_QUEUE_TIMEOUT_S": "0.6",
    "EMBED_API_KEY": "test-key",
}
AUTH = {"authorization": "Bearer test-key"}


def metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(rf'^{re.escape(name)}(?:\{{model="[^"]*"\}})? (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def slow(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**SLOW_QUEUE_ENV)


def test_401_without_key(slow: ServerProcess) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic dGVzdC1rZXk="}):
        r = httpx.post(f"{slow.base_url}/embed", json={"inputs": "a"}, headers=headers)
        assert_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{slow.base_url}/health").status_code == 200  # probes stay open


def test_queue_timeout_is_503(slow: ServerProcess) -> None:
    before = metric(slow.base_url, "embed_queue_timeouts_total")
    t0 = time.monotonic()
    r = httpx.post(f"{slow.base_url}/embed", json={"inputs": "a"}, headers=AUTH, timeout=10)
    assert_error(r, 503, "queue_timeout")
    assert time.monotonic() - t0 < 1.4  # answered at the deadline, not after the batching window
    assert metric(slow.base_url, "embed_queue_timeouts_total") == before + 1


def test_queue_full_is_429_and_health_stays_up(slow: ServerProcess) -> None:
    assert_error(httpx.post(f"{slow.base_url}/embed", json={"inputs": ["a", "b"]}, headers=AUTH), 429, "queue_full")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(httpx.post, f"{slow.base_url}/embed", json={"inputs": "a"}, headers=AUTH, timeout=10)
                   for _ in range(8)]
        time.sleep(0.2)
        t0 = time.monotonic()
        assert httpx.get(f"{slow.base_url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{slow.base_url}/ready", timeout=5).status_code == 200  # a full queue is still ready
        assert time.monotonic() - t0 < 1.0
        statuses = sorted(f.result().status_code for f in futures)
    assert statuses.count(429) >= 1
    assert set(statuses) <= {429, 503}
    for f in futures:
        assert_error(f.result(), f.result().status_code)
    assert 'embed_rejected_total{reason="queue_full"}' in httpx.get(f"{slow.base_url}/metrics").text


def test_disconnect_while_queued_cancels(slow: ServerProcess) -> None:
    before = metric(slow.base_url, "embed_cancelled_before_compute_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{slow.base_url}/embed", json={"inputs": "a"}, headers=AUTH, timeout=0.2)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and metric(slow.base_url, "embed_cancelled_before_compute_total") == before:
        time.sleep(0.05)
    assert metric(slow.base_url, "embed_cancelled_before_compute_total") == before + 1
    assert metric(slow.base_url, "embed_queue_depth") == 0


def test_sigterm_drains_accepted_requests(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(EMBED_MAX_WAIT_MS="800", EMBED_BATCH_WINDOW_ADAPTIVE="false", EMBED_QUEUE_TIMEOUT_S="10")
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(f"{srv.base_url}/embed", json={"inputs": ["drain me", "too"]}, timeout=15)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)  # the request is now queued inside the 800 ms window
    srv.terminate()
    worker.join(timeout=15)
    assert result["r"].status_code == 200
    assert len(result["r"].json()) == 2
    assert srv.stop() == 0
    assert "shutdown requested: /ready is now 503" in srv.log()


def _start_and_wait(artifact: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"EMBED_ARTIFACT_DIR": str(artifact), "EMBED_PORT": str(free_port()), "PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, "-m", "service"], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_refuses_to_start_on_bad_artifact(tiny_artifact_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact_dir, copy)
    if damage == "corrupt":
        (copy / "model.onnx").write_bytes(b"\x00" * 128)
    else:
        (copy / "model.onnx").unlink()
    proc = _start_and_wait(copy)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "model.onnx" in errors[0], proc.stderr
    assert ("checksum mismatch" if damage == "corrupt" else "missing") in errors[0]
    assert "Traceback" not in proc.stderr
    assert "Uvicorn running" not in proc.stderr


def test_require_gpu_exits_on_cpu_only_machine(tiny_artifact_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    proc = _start_and_wait(tiny_artifact_dir, EMBED_REQUIRE_GPU="true")
    assert proc.returncode == 2
    assert "EMBED_REQUIRE_GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("CUDAExecutionProvider unavailable") == 1
