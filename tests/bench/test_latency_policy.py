"""The harness's one load-client policy (bench/closed_loop.py `split_replies`): latency percentiles over the 200
replies only, every other reply counted by status beside them. Checked on the pure summaries and on the two
httpx clients against an in-process mock transport (no server): a slow 429 must not move the percentiles."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench import loadtest, overload, soak
from bench.closed_loop import Request, closed_loop, split_replies, summarise_loop

pytestmark = pytest.mark.timeout(60)

SLOW_S = 0.2  # a refusal far slower than any 200 from the mock: mixed in, it would own p95 and p99


async def _handler(request: httpx.Request) -> httpx.Response:
    """200 at once, unless the body asks for another status, which comes after SLOW_S."""
    status = json.loads(request.content).get("want", 200)
    if status != 200:
        await asyncio.sleep(SLOW_S)
    return httpx.Response(status, json={"ok": status == 200})


def test_split_replies_keeps_200_latencies_and_counts_the_rest_by_status() -> None:
    latencies, other = split_replies([(200, 1.0), (429, 500.0), (200, 2.0), (503, 9.0), (429, 7.0)])
    assert latencies == [1.0, 2.0]
    assert other == {429: 2, 503: 1}
    latencies, other = split_replies([("200", 1.0), ("ReadTimeout", 60_000.0), ("201", 3.0)])
    assert latencies == [1.0]
    assert other == {"201": 1, "ReadTimeout": 1}


def test_summarise_loop_reports_percentiles_over_200s_and_non_200_separately() -> None:
    replies = [(200, 10.0)] * 9 + [(429, 0.01)] * 20 + [(504, 60_000.0)]
    result = summarise_loop(4, replies, sentences=9, tokens=90, seconds=1.0, stages={"queue_ms": [1.0, 3.0]})
    assert result["p50_ms"] == result["p95_ms"] == result["p99_ms"] == 10.0
    assert result["requests"] == 30
    assert result["ok"] == 9
    assert result["non_200"] == {429: 20, 504: 1}
    assert result["statuses"] == {200: 9, 429: 20, 504: 1}
    assert result["sentences_per_s"] == 9.0
    assert result["server_stages"]["queue_ms"]["p50"] == 2.0


def test_summarise_loop_with_no_200_has_no_latency() -> None:
    result = summarise_loop(1, [(503, 5.0)], sentences=0, tokens=0, seconds=1.0, stages={"queue_ms": []})
    assert result["p99_ms"] != result["p99_ms"]  # NaN: no 200 to measure
    assert result["non_200"] == {503: 1}
    assert "server_stages" not in result


def test_closed_loop_leaves_slow_refusals_out_of_its_percentiles() -> None:
    requests = [Request({"inputs": "a"}, 1, 5), Request({"inputs": "b", "want": 429}, 1, 5),
                Request({"inputs": "c"}, 1, 5)]
    result = asyncio.run(closed_loop("http://bench", "/embed", requests, concurrency=2, max_requests=9,
                                     max_seconds=10.0, transport=httpx.MockTransport(_handler)))
    assert result["statuses"] == {200: 6, 429: 3}
    assert result["non_200"] == {429: 3}
    assert result["ok"] == 6
    assert result["sentences"] == 6
    assert result["tokens"] == 30
    assert result["p99_ms"] < SLOW_S * 1000 / 2


def test_loadtest_step_leaves_non_200_out_of_its_percentiles() -> None:
    wants = [200, 429, 200, 201, 200]

    def build(i: int) -> tuple[dict, int]:
        return {"inputs": "x", "want": wants[i % len(wants)]}, 1

    scenario = loadtest.Scenario("mock", "/embed", "mock statuses", build)

    async def step() -> dict:
        async with httpx.AsyncClient(base_url="http://bench", transport=httpx.MockTransport(_handler)) as client:
            return await loadtest.run_step(client, scenario, 2, step_s=10.0, step_requests=10)

    result = asyncio.run(step())
    assert result["requests"] == 10
    assert result["ok"] == 6
    assert result["errors"] == {"201": 2, "429": 2}
    assert result["latency_ms"]["max"] < SLOW_S * 1000 / 2
    assert result["sentences_per_s"] == pytest.approx(result["requests_per_s"])


def test_loadtest_summarise_counts_transport_errors_beside_statuses() -> None:
    record = loadtest.StepRecord(latencies_ms=[1.0, 3.0], sentences_ok=2)
    record.statuses.update({"200": 2, "503": 1, "ReadTimeout": 1})
    result = loadtest.summarise("s", 1, record, 2.0)
    assert result["latency_ms"]["p50"] == 2.0
    assert result["errors"] == {"503": 1, "ReadTimeout": 1}
    assert result["requests"] == 4
    assert result["ok"] == 2


def test_soak_summary_is_over_200s_with_every_status_counted() -> None:
    start = 100.0
    results = [(start + i, 200, 0.010) for i in range(50)]
    results += [(start + 5, 503, 30.0), (start + 70, 0, 30.0), (start + 80, 200, 0.020)]
    samples = [(start, 100.0), (start + 60, 101.0), (start + 119, 102.5)]
    report = soak.summarise(results, samples, start=start, seconds=120, warmup_seconds=60)
    assert report["latency_ms"] == {"p50": 10.0, "p99": 15.0, "max": 20.0}  # not 30 s
    assert report["statuses"] == {"0": 1, "200": 51, "503": 1}
    assert report["ok"] == 51
    assert report["server_errors"] == 2
    first, second = report["p99_per_minute"]
    assert first == {"from_s": 0, "requests": 51, "ok": 50, "p99_ms": 10.0, "non_200": {"503": 1}}
    assert second == {"from_s": 60, "requests": 2, "ok": 1, "p99_ms": 20.0, "non_200": {"0": 1}}
    assert report["rss_mb"]["growth_after_warmup"] == 1.5


def test_soak_summary_without_a_200_has_no_latency() -> None:
    report = soak.summarise([(0.0, 503, 1.0)], [(0.0, 10.0)], start=0.0, seconds=60, warmup_seconds=0)
    assert report["latency_ms"] == {"p50": None, "p99": None, "max": None}


def test_overload_health_latency_is_over_200s_and_failures_are_counted() -> None:
    summary = overload.health_summary([(200, 0.001), (200, 0.003), (0, 10.0), (503, 2.0)])
    assert summary == {"probes": 4, "non_200": 2, "non_200_by_status": {"0": 1, "503": 1},
                       "p50_ms": 2.0, "p99_ms": pytest.approx(3.0, abs=0.05), "max_ms": 3.0}
