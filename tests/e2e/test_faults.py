"""Inference faults on a real server, through the test-only fault hook (service/faults.py, RELIABILITY #38, #39).

- a poison input fails only its own request (500 inference_error, generic message); co-batched requests and the
  next 200 requests succeed; the failure counter counts it;
- a hung forward pass trips the watchdog: /health and /ready 503 while it hangs, a request waiting behind it gets
  503 at its queue deadline, and everything recovers when the pass ends;
- inference that keeps failing (a "lost GPU") trips readiness after EMBED_FAILURE_THRESHOLD failed batches in a
  row; /ready re-probes with a 1-token pass and turns 200 once inference works again; liveness stays 200.
Start-up faults (missing/corrupt model, REQUIRE_GPU on CPU) are in test_overload_and_lifecycle.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.api.errors import INFERENCE_FAILED_MESSAGE
from service.faults import FAULT_MARKERS
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_http_api import assert_error

FAULT_DURATION_S = 5.0
FAULT_ENV = {
    "EMBED_FAULT_INJECTION": "true",
    "EMBED_FAULT_DURATION_S": str(FAULT_DURATION_S),
    "EMBED_WATCHDOG_TIMEOUT_S": "1",
    "EMBED_QUEUE_TIMEOUT_S": "2",
    "EMBED_FAILURE_THRESHOLD": "3",
    "EMBED_MAX_WAIT_MS": "100",  # a wide window, so concurrent requests share the poison input's batch
    "EMBED_BATCH_WINDOW_ADAPTIVE": "false",  # ... even the first of them
    "EMBED_BATCH_PADDING_SLACK_TOKENS": "1000",
    "EMBED_INTRA_OP_THREADS": "1",
}


def metric(base_url: str, name: str) -> float:
    match = re.search(rf'^{re.escape(name)}(?:\{{model="[^"]*"\}})? (\S+)$', httpx.get(f"{base_url}/metrics").text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def faulty(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**FAULT_ENV)


def test_fault_hook_is_off_by_default(server: ServerProcess) -> None:
    r = httpx.post(f"{server.base_url}/embed", json={"inputs": f"hello {FAULT_MARKERS['raise']}"}, timeout=10)
    assert r.status_code == 200


def test_poison_input_fails_only_its_own_request(faulty: ServerProcess) -> None:
    url = faulty.base_url
    before = metric(url, "embed_inference_failures_total")
    poison = f"innocent looking text {FAULT_MARKERS['raise']} more"
    bodies = [{"inputs": poison}] + [{"inputs": f"co-batched request {i}"} for i in range(8)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: httpx.post(f"{url}/embed", json=b, timeout=10), bodies))
    err = assert_error(replies[0], 500, "inference_error")
    assert err["message"] == INFERENCE_FAILED_MESSAGE
    assert FAULT_MARKERS["raise"] not in replies[0].text
    assert [r.status_code for r in replies[1:]] == [200] * 8
    assert "re-running rows one by one" in faulty.log(), "the poison input never shared a batch"
    assert metric(url, "embed_inference_failures_total") == before + 1

    # A request holding the poison among good inputs fails as a whole, with the same generic 500.
    assert_error(httpx.post(f"{url}/embed", json={"inputs": ["good", poison, "good"]}, timeout=10), 500,
                 "inference_error")

    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda i: httpx.post(f"{url}/embed", json={"inputs": f"later {i}"}, timeout=10),
                              range(200)))
    assert [r.status_code for r in later] == [200] * 200
    assert httpx.get(f"{url}/ready").status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    assert "Traceback" not in "".join(r.text for r in replies)


def test_hung_inference_trips_the_watchdog(faulty: ServerProcess) -> None:
    url = faulty.base_url
    replies: dict[str, httpx.Response] = {}

    def post(name: str, text: str) -> None:
        replies[name] = httpx.post(f"{url}/embed", json={"inputs": text}, timeout=15)

    hang = threading.Thread(target=post, args=("hung", f"stall {FAULT_MARKERS['hang']}"))
    t0 = time.monotonic()
    hang.start()
    assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 503, timeout_s=2.5)
    assert_error(httpx.get(f"{url}/health", timeout=2), 503, "unavailable")
    assert httpx.get(f"{url}/ready", timeout=2).status_code == 503
    waiting = threading.Thread(target=post, args=("queued", "behind the hang"))
    queued_at = time.monotonic()
    waiting.start()
    waiting.join(timeout=10)
    hang.join(timeout=10)
    assert_error(replies["queued"], 503, "queue_timeout")
    assert 1.5 < replies["queued"].elapsed.total_seconds() < 3.5, "not answered at its 2 s deadline"
    assert time.monotonic() - queued_at < 4
    assert_error(replies["hung"], 503, "unavailable")  # answered at the watchdog, not after the 3 s hang
    assert replies["hung"].elapsed.total_seconds() < FAULT_DURATION_S
    assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, timeout_s=FAULT_DURATION_S + 2)
    assert httpx.post(f"{url}/embed", json={"inputs": "after the hang"}, timeout=10).status_code == 200
    assert httpx.get(f"{url}/ready").status_code == 200
    assert time.monotonic() - t0 < FAULT_DURATION_S + 5


def test_repeated_failures_trip_readiness_until_a_probe_passes(faulty: ServerProcess) -> None:
    url = faulty.base_url
    t0 = time.monotonic()
    assert_error(httpx.post(f"{url}/embed", json={"inputs": FAULT_MARKERS["break"]}, timeout=10), 500,
                 "inference_error")
    for i in range(3):  # every forward pass now fails: innocent requests get the generic 500 too
        assert_error(httpx.post(f"{url}/embed", json={"inputs": f"innocent {i}"}, timeout=10), 500, "inference_error")
    assert time.monotonic() - t0 < FAULT_DURATION_S - 0.5, "too slow to observe the broken window"
    err = assert_error(httpx.get(f"{url}/ready", timeout=5), 503, "unavailable")
    assert "batches failed" in err["message"]
    assert httpx.get(f"{url}/health").status_code == 200  # liveness: the process is fine, restarting won't help
    assert wait_for(lambda: httpx.get(f"{url}/ready", timeout=5).status_code == 200, timeout_s=FAULT_DURATION_S + 3)
    assert httpx.post(f"{url}/embed", json={"inputs": "works again"}, timeout=10).status_code == 200
