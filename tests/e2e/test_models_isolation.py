"""Several models in one real process, when one of them fails: the others keep serving (docs/reliability.md,
"Several models").

Two names over the tiny artifact, each with its own batcher and session ("left", the default, and "right").
Through the test-only fault hook a marker sent to one model makes only that model's forward pass raise, hang or
keep failing; the other model answers throughout, /health and /ready report each model, and the process stays
live and ready while any model is. SIGTERM drains the queues of every model.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.faults import FAULT_MARKERS
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_faults import wait_for

FAULT_DURATION_S = 4.0


@pytest.fixture(scope="module")
def two(start_server: Callable[..., ServerProcess], tiny_artifact_dir: Path) -> ServerProcess:
    return start_server(
        EMBED_MODELS=f"left={tiny_artifact_dir},right={tiny_artifact_dir}",
        EMBED_FAULT_INJECTION="true", EMBED_FAULT_DURATION_S=str(FAULT_DURATION_S), EMBED_WATCHDOG_TIMEOUT_S="1",
        EMBED_QUEUE_TIMEOUT_S="2", EMBED_FAILURE_THRESHOLD="2", EMBED_INTRA_OP_THREADS="1",
    )


def _embed(url: str, model: str, text: str, timeout: float = 10) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": text}, timeout=timeout)


def test_a_poison_input_fails_only_on_its_model(two: ServerProcess) -> None:
    assert _embed(two.base_url, "left", f"x {FAULT_MARKERS['raise']}").status_code == 500
    assert _embed(two.base_url, "right", "fine").status_code == 200
    assert _embed(two.base_url, "left", "fine again").status_code == 200


def test_a_hung_model_leaves_the_other_serving_and_the_process_live(two: ServerProcess) -> None:
    url = two.base_url
    replies: dict[str, httpx.Response] = {}
    hang = threading.Thread(target=lambda: replies.update(hung=_embed(url, "left", f"stall {FAULT_MARKERS['hang']}")))
    hang.start()
    try:
        assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).json()["models"]["left"]["status"] != "ok", 5)
        health = httpx.get(f"{url}/health", timeout=2)
        assert health.status_code == 200, health.text  # live: "right" still serves
        body = health.json()
        assert body["status"] == "degraded"
        assert body["models"]["right"]["status"] == "ok"
        ready = httpx.get(f"{url}/ready", timeout=2)
        assert ready.status_code == 200
        assert ready.json()["models"]["right"] == "ready"
        assert ready.json()["models"]["left"].startswith("not ready")
        t0 = time.monotonic()
        for i in range(5):
            assert _embed(url, "right", f"while left hangs {i}").status_code == 200
        assert time.monotonic() - t0 < 2.0, "the healthy model waited behind the hung one"
    finally:
        hang.join(timeout=FAULT_DURATION_S + 5)
    assert replies["hung"].status_code == 503  # answered at the watchdog
    assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok", FAULT_DURATION_S + 3)
    assert _embed(url, "left", "after the hang").status_code == 200


def test_a_broken_model_is_reported_not_ready_while_the_other_stays_ready(two: ServerProcess) -> None:
    url = two.base_url
    for _ in range(2):  # EMBED_FAILURE_THRESHOLD batches in a row
        assert _embed(url, "left", FAULT_MARKERS["break"]).status_code == 500
    ready = httpx.get(f"{url}/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["models"]["left"].startswith("not ready")
    assert _embed(url, "right", "still fine").status_code == 200
    assert wait_for(lambda: httpx.get(f"{url}/ready", timeout=5).json()["models"]["left"] == "ready",
                 FAULT_DURATION_S + 4)


def test_health_is_503_only_when_every_model_is_unhealthy(two: ServerProcess) -> None:
    url = two.base_url
    threads = [threading.Thread(target=_embed, args=(url, name, f"stall {FAULT_MARKERS['hang']}"))
               for name in ("left", "right")]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 503, 5)
        reply = httpx.get(f"{url}/health", timeout=2)
        assert "left" in reply.json()["error"]["message"]
        assert "right" in reply.json()["error"]["message"]
        assert int(reply.headers["retry-after"]) >= 1
    finally:
        for t in threads:
            t.join(timeout=FAULT_DURATION_S + 5)
    assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, FAULT_DURATION_S + 3)


def test_sigterm_drains_every_models_queue(start_server: Callable[..., ServerProcess],
                                           tiny_artifact_dir: Path) -> None:
    srv = start_server(EMBED_MODELS=f"left={tiny_artifact_dir},right={tiny_artifact_dir}", EMBED_MAX_WAIT_MS="500",
                       EMBED_BATCH_WINDOW_ADAPTIVE="false", EMBED_INTRA_OP_THREADS="1")
    outcomes: list[tuple[str, int | str]] = []
    lock = threading.Lock()
    go = threading.Barrier(17)

    def client(model: str, i: int) -> None:
        go.wait()
        try:
            status: int | str = _embed(srv.base_url, model, f"request {i} " * 20, timeout=30).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            outcomes.append((model, status))

    threads = [threading.Thread(target=client, args=("left" if i % 2 else "right", i)) for i in range(16)]
    for t in threads:
        t.start()
    go.wait()

    def both_queued() -> bool:  # a 500 ms batching window holds the requests in both queues
        text = httpx.get(f"{srv.base_url}/metrics", timeout=2).text
        depths = dict(re.findall(r'^embed_queue_depth\{model="(\w+)"\} (\S+)$', text, re.MULTILINE))
        # Every request received, not only some: a connection whose request is still on the wire when SIGTERM
        # comes is idle to uvicorn and closed (the client's ReadError), which is not work the server accepted.
        return sum(float(depths.get(m, 0)) for m in ("left", "right")) >= 16

    assert wait_for(both_queued, 5)
    srv.terminate()
    for t in threads:
        t.join(timeout=30)
    assert srv.proc.wait(timeout=30) == 0
    assert len(outcomes) == 16
    assert {m for m, _ in outcomes} == {"left", "right"}
    queued = {m for m, s in outcomes if s == 200}
    assert queued == {"left", "right"}, outcomes  # what both queues held was answered
    assert all(s in (200, "ConnectError") for _, s in outcomes), outcomes  # nothing accepted was lost
    assert "every model's batcher drained" in srv.log()


def test_start_up_names_the_bad_model_and_file(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    from tests.e2e.test_overload_and_lifecycle import _start_and_wait

    copy = tmp_path / "broken"
    shutil.copytree(tiny_artifact_dir, copy)
    (copy / "tokenizer.json").write_text("{}")
    proc = _start_and_wait(tiny_artifact_dir, EMBED_MODELS=f"good={tiny_artifact_dir},bad={copy}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "model 'bad'" in errors[0]
    assert "tokenizer.json" in errors[0]
    assert "checksum mismatch" in errors[0]
    assert "Traceback" not in proc.stderr
    assert "Uvicorn running" not in proc.stderr
    twice = _start_and_wait(tiny_artifact_dir, EMBED_MODELS=f"{tiny_artifact_dir},{tiny_artifact_dir}")
    assert twice.returncode == 2
    assert "served twice" in twice.stderr


def test_per_model_queue_limit_refuses_only_that_model(start_server: Callable[..., ServerProcess],
                                                       tiny_artifact_dir: Path) -> None:
    srv = start_server(EMBED_MODELS=f"small={tiny_artifact_dir};max_queue_size=1;max_batch_tokens=512,"
                                    f"big={tiny_artifact_dir}",
                       EMBED_FAULT_INJECTION="true", EMBED_FAULT_DURATION_S="3", EMBED_WATCHDOG_TIMEOUT_S="10",
                       EMBED_INTRA_OP_THREADS="1")
    url = srv.base_url
    info = httpx.get(f"{url}/info", params={"model": "small"}).json()
    assert info["limits"]["max_queue_size"] == 1
    assert info["max_batch_tokens"] == 512
    assert httpx.get(f"{url}/info", params={"model": "big"}).json()["limits"]["max_queue_size"] == 2048
    hold = threading.Thread(target=_embed, args=(url, "small", f"hold {FAULT_MARKERS['hang']}"))
    hold.start()
    try:
        assert wait_for(lambda: 'embed_queue_depth{model="small"} 1.0' in httpx.get(f"{url}/metrics").text, 5)
        refused = _embed(url, "small", "one more")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert _embed(url, "big", "the other model has room").status_code == 200
    finally:
        hold.join(timeout=10)
