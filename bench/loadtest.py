"""Closed-loop HTTP load test: ramp concurrency per scenario, report client latency and server stage times.

    .venv/bin/python -m bench.loadtest --url http://127.0.0.1:8080 --concurrency 1,4,16,64 --step-seconds 10

Each step runs `concurrency` clients that send one request after another until `--step-seconds` or
`--step-requests` is reached (both bound every step, so a wedged server cannot make the run endless). Per step it
reports requests/s, sentences/s, client p50/p95/p99 over the 200 replies only, every other reply by status
(`errors`, transport errors by name; bench/closed_loop.py's one policy), and the server's own stage times from
the timing headers (x-tokenization-time, x-queue-time, x-inference-time, x-total-time): a rising queue time with
flat inference time says "batcher saturated", a rising inference time says "model saturated".

Writes `loadtest.json` and `loadtest.png` (throughput and p99 vs concurrency, one line per scenario) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.closed_loop import OK_STATUS
from bench.corpus import sentences

log = logging.getLogger("bench.loadtest")

STAGE_HEADERS = {
    "tokenization": "x-tokenization-time",
    "queue": "x-queue-time",
    "inference": "x-inference-time",
    "total": "x-total-time",
}


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes and how its body is built from the i-th draw of the corpus."""

    name: str
    route: str
    description: str
    build: Callable[[int], tuple[dict[str, Any], int]]  # request index -> (JSON body, sentences in it)


def make_scenarios(seed: int) -> dict[str, Scenario]:
    short = sentences(4096, seed=seed, profile="short")
    mixed = sentences(4096, seed=seed, profile="mixed")

    def single(i: int) -> tuple[dict[str, Any], int]:
        return {"inputs": short[i % len(short)]}, 1

    def batch32(i: int) -> tuple[dict[str, Any], int]:
        start = (i * 32) % len(mixed)
        chunk = (mixed + mixed[:32])[start : start + 32]
        return {"inputs": chunk}, 32

    def mixed_lengths(i: int) -> tuple[dict[str, Any], int]:
        n = 1 + (i * 7) % 8  # 1..8 inputs of mixed length: unequal rows sharing batches
        start = (i * 8) % len(mixed)
        chunk = (mixed + mixed[:8])[start : start + n]
        return {"inputs": chunk}, n

    def attention(i: int) -> tuple[dict[str, Any], int]:
        body = {"input": [short[i % len(short)]], "attention": {"layers": "all", "heads": "all", "aggregate": "mean"}}
        return body, 1

    return {
        s.name: s
        for s in (
            Scenario("single", "/embed", "one short sentence per request", single),
            Scenario("batch32", "/embed", "32 mixed-length sentences per request", batch32),
            Scenario("mixed", "/embed", "1-8 mixed-length sentences per request", mixed_lengths),
            Scenario("attention", "/v1/encode", "one short sentence with head-averaged attention maps", attention),
        )
    }


@dataclass
class StepRecord:
    """Raw observations of one step; summarised by `summarise`."""

    latencies_ms: list[float] = field(default_factory=list)  # 200 replies only
    sentences_ok: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAGE_HEADERS})
    issued: int = 0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    arr = np.asarray(values)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "mean": round(float(arr.mean()), 3), "max": round(float(arr.max()), 3)}


def summarise(scenario: str, concurrency: int, record: StepRecord, duration_s: float) -> dict[str, Any]:
    ok = len(record.latencies_ms)
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "duration_s": round(duration_s, 3),
        "requests": sum(record.statuses.values()),
        "ok": ok,
        "requests_per_s": round(ok / duration_s, 2) if duration_s > 0 else 0.0,
        "sentences_per_s": round(record.sentences_ok / duration_s, 2) if duration_s > 0 else 0.0,
        "latency_ms": _percentiles(record.latencies_ms),
        "errors": {k: v for k, v in sorted(record.statuses.items()) if k != str(OK_STATUS)},  # every non-200
        "server_ms": {stage: _percentiles(values) for stage, values in record.server_ms.items()},
    }


async def run_step(client: httpx.AsyncClient, scenario: Scenario, concurrency: int, *, step_s: float,
                   step_requests: int) -> dict[str, Any]:
    """`concurrency` closed-loop clients until step_s seconds or step_requests requests, whichever is first."""
    record = StepRecord()
    start = time.perf_counter()
    deadline = start + step_s

    async def worker() -> None:
        while time.perf_counter() < deadline and record.issued < step_requests:
            index = record.issued
            record.issued += 1
            body, n_sentences = scenario.build(index)
            sent = time.perf_counter()
            try:
                reply = await client.post(scenario.route, json=body)
            except httpx.HTTPError as exc:
                record.statuses[type(exc).__name__] += 1
                continue
            elapsed_ms = (time.perf_counter() - sent) * 1000.0
            record.statuses[str(reply.status_code)] += 1
            if reply.status_code == OK_STATUS:
                record.latencies_ms.append(elapsed_ms)
                record.sentences_ok += n_sentences
                for stage, header in STAGE_HEADERS.items():
                    value = reply.headers.get(header)
                    if value is not None:
                        record.server_ms[stage].append(float(value))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarise(scenario.name, concurrency, record, time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = make_scenarios(args.seed)
    chosen = [scenarios[name] for name in args.scenarios]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    steps: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout) as probe:
        info_reply = await probe.get("/info")
        server_info = info_reply.json() if info_reply.is_success else {"status": info_reply.status_code}
    total = len(chosen) * len(args.concurrency)
    for scenario in chosen:
        for concurrency in args.concurrency:
            log.info("step %d/%d: %s at concurrency %d (<= %.0f s, <= %d requests)", len(steps) + 1, total,
                     scenario.name, concurrency, args.step_seconds, args.step_requests)
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout,
                                         limits=limits) as client:
                step = await run_step(client, scenario, concurrency, step_s=args.step_seconds,
                                      step_requests=args.step_requests)
            steps.append(step)
            lat, srv = step["latency_ms"], step["server_ms"]
            log.info(
                "  %s c=%d: %.1f req/s, %.1f sent/s, p50 %s ms, p99 %s ms, server queue p50 %s ms, "
                "inference p50 %s ms, errors %s",
                scenario.name, concurrency, step["requests_per_s"], step["sentences_per_s"], lat["p50"],
                lat["p99"], srv["queue"]["p50"], srv["inference"]["p50"], step["errors"] or "none",
            )
    return {
        "meta": {
            "url": args.url,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "scenarios": {s.name: {"route": s.route, "description": s.description} for s in chosen},
            "concurrency": args.concurrency,
            "step_seconds": args.step_seconds,
            "step_requests": args.step_requests,
            "seed": args.seed,
            "client": {"python": platform.python_version(), "httpx": httpx.__version__,
                       "machine": platform.machine(), "cpus": os.cpu_count()},
            "server_info": server_info,
        },
        "steps": steps,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput (sentences/s) and client p99 against concurrency, one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in report["meta"]["scenarios"]:
        rows = [s for s in report["steps"] if s["scenario"] == name]
        xs = [s["concurrency"] for s in rows]
        ax_tp.plot(xs, [s["sentences_per_s"] for s in rows], marker="o", label=name)
        ax_p99.plot(xs, [s["latency_ms"]["p99"] or float("nan") for s in rows], marker="o", label=name)
    for ax, title, ylabel in ((ax_tp, "Throughput", "sentences / s"), (ax_p99, "Client latency p99", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["meta"]["concurrency"], [str(c) for c in report["meta"]["concurrency"]])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_p99.set_yscale("log")
    model = report["meta"]["server_info"].get("model_id") or report["meta"]["server_info"].get("model", "")
    fig.suptitle(f"bench.loadtest {model} ({report['meta']['url']}, {report['meta']['step_seconds']:.0f} s steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server or load balancer base URL")
    parser.add_argument("--scenarios", default="single,batch32,mixed,attention",
                        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help="comma-separated: single, batch32, mixed, attention")
    parser.add_argument("--concurrency", default="1,4,16,64", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated concurrency ramp")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="time bound of each step")
    parser.add_argument("--step-requests", type=int, default=20_000, help="request bound of each step")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (bench/corpus.py)")
    parser.add_argument("--api-key", default=os.environ.get("EMBED_API_KEY"), help="bearer key (EMBED_API_KEY)")
    parser.add_argument("--out", type=Path, default=Path("bench/results") / time.strftime("loadtest-%Y%m%d-%H%M%S"))
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(make_scenarios(0))
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    if min(args.concurrency) < 1 or args.step_seconds <= 0 or args.step_requests < 1:
        parser.error("concurrency, --step-seconds and --step-requests must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except httpx.HTTPError as exc:
        log.error("cannot reach %s: %s", args.url, exc)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "loadtest.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", json_path)
    if not args.no_plot:
        png_path = args.out / "loadtest.png"
        plot(report, png_path)
        log.info("wrote %s", png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

