"""Closed-loop HTTP load shared by the benchmarks: N clients send prepared requests back to back, bounded twice.

Every benchmark that compares servers must load them the same way, so the loop lives here once: the caller
prepares the request bodies (what is sent is decided before the clock starts, identical for every system) and
this module sends them, with `max_requests` and `max_seconds` both capping the run (a wedged server cannot make
it endless). It records client latency, throughput in sentences and tokens, statuses, and the server's own stage
times when it sends the TEI timing headers (ours does; Infinity does not).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


async def closed_loop(url: str, route: str, requests: Sequence[Request], *, concurrency: int, max_requests: int,
                      max_seconds: float, warmup: int = 1) -> dict[str, Any]:
    """`concurrency` clients send `requests[i % len]` for i = 0, 1, ... until `max_requests` or `max_seconds`.

    `warmup` requests go first, untimed, to open connections and let lazy server paths run once. With
    `concurrency == max_requests` every request is in flight at once: a burst.
    """
    if not requests:
        raise ValueError("no requests to send")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
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
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                done["sentences"] += request.sentences
                done["tokens"] += request.tokens
                for name, header in STAGE_HEADERS.items():
                    if header in response.headers:
                        stages[name].append(float(response.headers[header]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        for i in range(warmup):
            await http.post(f"{url}{route}", json=requests[i % len(requests)].body)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {
        "concurrency": concurrency, "requests": sum(statuses.values()), "statuses": statuses, "seconds": elapsed,
        "sentences": done["sentences"], "tokens": done["tokens"],
        "sentences_per_s": done["sentences"] / elapsed, "tokens_per_s": done["tokens"] / elapsed,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
    }
    server_stages = {name: {"mean": float(np.mean(v)), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                     for name, v in stages.items() if v}
    if server_stages:
        result["server_stages"] = server_stages
    return result
