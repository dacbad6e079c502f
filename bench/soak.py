"""Soak: N closed-loop clients with mixed-length text for a fixed time; is memory flat and is nothing failing?

    .venv/bin/python -m bench.soak --seconds 600 --clients 32                 # the recorded run
    .venv/bin/python -m bench.soak --seconds 180 --pad-multiple 1             # bucketing off, for comparison

Starts one `python -m service` process (the real MiniLM artifact by default), drives it with `--clients`
concurrent clients sending one corpus sentence each (bench/corpus.py "mixed": short queries, passages, long
documents, CJK and emoji), and samples the server's RSS every `--sample-seconds`. onnxruntime allocates per new
input shape, so an unbucketed server keeps growing while it meets new padded widths; `EMBED_PAD_TO_MULTIPLE`
(passed with --pad-multiple) and `EMBED_ORT_MEM_PATTERN` (--mem-pattern) are the two knobs compared.

Latency figures are over the 200 replies only; every other reply is counted by status (`statuses`, 0 for a
transport error), bench/closed_loop.py's one policy.

Pass criteria (printed, and the exit status): zero 5xx, p99 under --p99-limit-ms, RSS growth after the warm-up
≤ --rss-limit-mb. Everything is bounded: the run ends at --seconds whatever happens, each request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.closed_loop import split_replies
from bench.corpus import sentences
from bench.server_process import running_server

log = logging.getLogger("bench.soak")
REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def client(url: str, texts: list[str], seed: int, stop_at: float, out: list[tuple[float, int, float]]) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = await http.post("/embed", json={"inputs": rng.choice(texts)})
                status = r.status_code
            except httpx.HTTPError:
                status = 0  # transport error: counted as a failure
            out.append((t0, status, time.monotonic() - t0))


async def sampler(pid: int, stop_at: float, every_s: float, samples: list[tuple[float, float]]) -> None:
    while time.monotonic() < stop_at:
        samples.append((time.monotonic(), rss_mb(pid)))
        await asyncio.sleep(every_s)
    samples.append((time.monotonic(), rss_mb(pid)))


async def drive(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    texts = sentences(2000, seed=7, profile="mixed")
    start = time.monotonic()
    stop_at = start + args.seconds
    results: list[tuple[float, int, float]] = []
    samples: list[tuple[float, float]] = []
    await asyncio.gather(
        sampler(pid, stop_at, args.sample_seconds, samples),
        *(client(url, texts, i, stop_at, results) for i in range(args.clients)),
    )
    return summarise(results, samples, start=start, seconds=args.seconds, warmup_seconds=args.warmup_seconds)


def _ms(values_ms: list[float], q: float) -> float | None:
    return round(float(np.percentile(values_ms, q)), 1) if values_ms else None


def summarise(results: list[tuple[float, int, float]], samples: list[tuple[float, float]], *, start: float,
              seconds: float, warmup_seconds: float) -> dict[str, Any]:
    """The soak's report from its (sent at, status, seconds) replies and (time, RSS MB) samples: latency over the
    200 replies only (None when there is none), every status counted, RSS growth after the warm-up."""
    statuses = Counter(s for _, s, _ in results)
    latencies, _ = split_replies((s, d * 1000) for _, s, d in results)
    after_warmup = [(t - start, mb) for t, mb in samples if t - start >= warmup_seconds]
    base = after_warmup[0][1] if after_warmup else samples[0][1]
    peak = max(mb for _, mb in after_warmup) if after_warmup else base
    windows = []
    for w0 in range(0, int(seconds), 60):
        window = [(s, d * 1000) for t, s, d in results if w0 <= t - start < w0 + 60]
        lat, non_200 = split_replies(window)
        if window:
            windows.append({"from_s": w0, "requests": len(window), "ok": len(lat), "p99_ms": _ms(lat, 99),
                            "non_200": {str(k): v for k, v in non_200.items()}})
    return {
        "requests": len(results),
        "requests_per_s": round(len(results) / seconds, 1),
        "ok": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500 or k == 0),
        "latency_ms": {q: _ms(latencies, p) for q, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "p99_per_minute": windows,
        "rss_mb": {"start": round(samples[0][1], 1), "after_warmup": round(base, 1), "peak_after_warmup":
                   round(peak, 1), "end": round(samples[-1][1], 1), "growth_after_warmup": round(peak - base, 1)},
        "rss_samples": [(round(t - start, 1), round(mb, 1)) for t, mb in samples],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact-dir", default=str(REPO / "artifacts" / "all-MiniLM-L6-v2"))
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=60)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--pad-multiple", type=int, default=8)
    parser.add_argument("--mem-pattern", action="store_true")
    parser.add_argument("--rss-limit-mb", type=float, default=50)
    parser.add_argument("--p99-limit-ms", type=float, default=2000)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would cost client CPU
    env = {
        "EMBED_ARTIFACT_DIR": args.artifact_dir,
        "EMBED_PAD_TO_MULTIPLE": str(args.pad_multiple),
        "EMBED_ORT_MEM_PATTERN": "true" if args.mem_pattern else "false",
    }
    log.info("soak: %d clients for %.0f s, pad multiple %d, mem pattern %s", args.clients, args.seconds,
             args.pad_multiple, args.mem_pattern)
    with running_server(env) as (url, pid):
        report = asyncio.run(drive(url, pid, args))
    report["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "note": "shared 2-core box: other engineers' jobs ran concurrently"}
    checks = {
        "zero_5xx": report["server_errors"] == 0,
        "p99_bounded": report["latency_ms"]["p99"] is not None and report["latency_ms"]["p99"] <= args.p99_limit_ms,
        "rss_flat": report["rss_mb"]["growth_after_warmup"] <= args.rss_limit_mb,
    }
    report["checks"] = checks
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"soak-pad{args.pad_multiple}-{'mp' if args.mem_pattern else 'nomp'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (out / name).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    log.info("%s\nwritten to %s", json.dumps(summary, indent=1), out / name)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
