"""Closed-loop HTTP load shared by the benchmarks: N clients send prepared requests back to back, bounded twice.

Every benchmark that compares servers must load them the same way, so the loop lives here once: the caller
prepares the request bodies (what is sent is decided before the clock starts, identical for every system) and
this module sends them, with `max_requests` and `max_seconds` both capping the run (a wedged server cannot make
it endless). It records client latency, throughput in sentences and tokens, statuses, and the server's own stage
times when it sends the TEI timing headers (ours does; Infinity does not).

One latency policy for the whole harness (`split_replies`): latency percentiles are over the 200 replies only, and
every other reply is counted by status beside them. A refusal answered in microseconds or a timeout after seconds
answers another question than "how long does an embedding take"; mixed into the percentiles it moves them in
whichever direction the failures happen to lie.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

STAGE_HEADERS = {
    "tokenize_ms": "x-tokenization-time",
    "queue_ms": "x-queue-time",
    "inference_ms": "x-inference-time",
    "server_total_ms": "x-total-time",
}


@dataclass(frozen=True)
class Request:
    """One prepared request: its JSON body and what it counts for when it succeeds."""

    body: dict[str, Any]
    sentences: int
    tokens: int


OK_STATUS = 200
Status = TypeVar("Status", int, str)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def split_replies(replies: Iterable[tuple[Status, float]]) -> tuple[list[float], dict[Status, int]]:
    """(latencies of the 200 replies, count of every other reply by status, sorted): the harness's one policy.

    A status may be an int or its string ("200", or a transport error's name where a client records one).
    """
    ok: list[float] = []
    other: dict[Status, int] = {}
    for status, latency in replies:
        if str(status) == str(OK_STATUS):
            ok.append(latency)
        else:
            other[status] = other.get(status, 0) + 1
    return ok, dict(sorted(other.items(), key=lambda item: str(item[0])))


def summarise_loop(concurrency: int, replies: Sequence[tuple[int, float]], *, sentences: int, tokens: int,
                   seconds: float, stages: dict[str, list[float]]) -> dict[str, Any]:
    """The figures of one closed loop from its (status, latency ms) replies: percentiles over the 200s only,
    `non_200` counted by status, `statuses` every reply (200 included), throughput from what succeeded."""
    latencies, non_200 = split_replies(replies)
    statuses: dict[int, int] = {}
    for status, _ in replies:
        statuses[status] = statuses.get(status, 0) + 1
    result: dict[str, Any] = {
        "concurrency": concurrency, "requests": len(replies), "ok": len(latencies), "non_200": non_200,
        "statuses": statuses, "seconds": seconds, "sentences": sentences, "tokens": tokens,
        "sentences_per_s": sentences / seconds, "tokens_per_s": tokens / seconds,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
    }
    server_stages = {name: {"mean": float(np.mean(v)), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                     for name, v in stages.items() if v}
    if server_stages:
        result["server_stages"] = server_stages
    return result


async def closed_loop(url: str, route: str, requests: Sequence[Request], *, concurrency: int, max_requests: int,
                      max_seconds: float, warmup: int = 1,
                      transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Any]:
    """`concurrency` clients send `requests[i % len]` for i = 0, 1, ... until `max_requests` or `max_seconds`.

    `warmup` requests go first, untimed, to open connections and let lazy server paths run once. With
    `concurrency == max_requests` every request is in flight at once: a burst. `transport` replaces the network
    (tests pass an `httpx.MockTransport`).
    """
    if not requests:
        raise ValueError("no requests to send")
    replies: list[tuple[int, float]] = []
    stages: dict[str, list[float]] = {name: [] for name in STAGE_HEADERS}
    done = {"sentences": 0, "tokens": 0}
    next_index = 0
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < max_requests and time.monotonic() < deadline:
            request = requests[next_index % len(requests)]
            next_index += 1
            t0 = time.perf_counter()
            response = await http.post(f"{url}{route}", json=request.body)
            replies.append((response.status_code, (time.perf_counter() - t0) * 1000))
            if response.status_code == OK_STATUS:
                done["sentences"] += request.sentences
                done["tokens"] += request.tokens
                for name, header in STAGE_HEADERS.items():
                    if header in response.headers:
                        stages[name].append(float(response.headers[header]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits, transport=transport) as http:
        for i in range(warmup):
            await http.post(f"{url}{route}", json=requests[i % len(requests)].body)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return summarise_loop(concurrency, replies, sentences=done["sentences"], tokens=done["tokens"], seconds=elapsed,
                          stages=stages)
