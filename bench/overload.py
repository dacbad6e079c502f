"""Overload: a burst of N concurrent clients against one server process (RELIABILITY #31, #42).

    .venv/bin/python -m bench.overload --clients 1000                  # the recorded run (real MiniLM)
    .venv/bin/python -m bench.overload --clients 300 --artifact-dir X  # what tests/e2e/test_overload.py runs

Every client opens its own connection, all wait on one start signal, then each sends `--requests-per-client`
requests one after another (closed loop). Meanwhile a prober GETs /health every 50 ms on its own connection.
The clients speak minimal HTTP/1.1 over asyncio streams rather than through httpx: a thousand httpx clients in
one Python process would spend more CPU than the server and measure themselves.

Reported and checked: every reply is a 200 or a 429/503 JSON error with Retry-After; rejections are fast
(p99 ≤ --reject-p99-ms); no request runs past its deadline (queue timeout + slack); /health stays fast
(p99 ≤ --health-p99-ms); after the burst the server is back to normal (queue empty, a request as fast as
before the burst) within --recovery-limit-s.

Latency policy (bench/closed_loop.py's): the 200 latencies and the `/health` latencies are over 200 replies only,
other replies counted by status beside them; the rejection latencies are, by design, over the 429/503 replies,
reported under their own names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.closed_loop import split_replies
from bench.corpus import sentences

log = logging.getLogger("bench.overload")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    wave: int = 0  # the client's k-th request: wave 0 is the simultaneous burst itself


@dataclass
class Results:
    replies: list[Reply] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # transport errors and timeouts, by kind
    health: list[tuple[int, float]] = field(default_factory=list)


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> Reply:
    """One HTTP/1.1 exchange on an open connection (replies always carry Content-Length here)."""
    t0 = time.perf_counter()
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(status, headers, body, time.perf_counter() - t0)


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one_client(host: str, port: int, bodies: list[bytes], go: asyncio.Event, deadline_s: float,
                     out: Results) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, TimeoutError) as exc:
        out.failures[f"connect:{type(exc).__name__}"] += 1
        return
    try:
        await go.wait()
        for wave, raw in enumerate(bodies):
            try:
                reply = await asyncio.wait_for(request(reader, writer, raw), deadline_s)
            except TimeoutError:
                out.failures["past_deadline"] += 1
                return
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
                out.failures[f"transport_or_malformed:{type(exc).__name__}"] += 1
                return
            reply.wave = wave
            out.replies.append(reply)
            if reply.headers.get("connection", "").lower() == "close":
                return
    finally:
        writer.close()


async def prober(host: str, port: int, stop: asyncio.Event, out: Results) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not stop.is_set():
            try:
                reply = await asyncio.wait_for(request(reader, writer, GET_HEALTH), 10)
                out.health.append((reply.status, reply.seconds))
            except TimeoutError:
                out.health.append((0, 10.0))
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def single_latency(host: str, port: int, raw: bytes) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        reply = await request(reader, writer, raw)
        return reply.status, reply.seconds
    finally:
        writer.close()


async def queue_depth(host: str, port: int) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        reply = await request(reader, writer, b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    finally:
        writer.close()
    for line in reply.body.decode().splitlines():
        if line.startswith("embed_queue_depth{"):  # one model: one labelled series
            return float(line.split()[1])
    return -1.0


def _ms(values_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(values_s, q)) * 1000, 1) if values_s else None


def health_summary(probes: list[tuple[int, float]]) -> dict[str, Any]:
    """The /health prober's (status, seconds) replies, 0 for a timeout: latency over the 200s, the rest counted."""
    ok, non_200 = split_replies(probes)
    return {"probes": len(probes), "non_200": sum(non_200.values()),
            "non_200_by_status": {str(k): v for k, v in non_200.items()},
            "p50_ms": _ms(ok, 50), "p99_ms": _ms(ok, 99), "max_ms": _ms(ok, 100)}


def is_good_error(reply: Reply) -> bool:
    """A 429/503 in its route family's error shape (TEI's on /embed, OpenAI's on /v1/*), JSON, Retry-After ≥ 1."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    err = body.get("error")
    tei = set(body) == {"error", "error_type"} and body["error_type"] in ("Overloaded", "Unhealthy")
    openai = isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
    return (reply.headers.get("content-type", "").startswith("application/json") and (tei or openai)
            and int(reply.headers.get("retry-after", "0")) >= 1)


async def run_burst(host: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    texts = sentences(args.clients * args.requests_per_client, seed=3, profile="mixed")
    normal = post("/embed", {"inputs": "a normal request before and after the burst"})
    base = sorted([(await single_latency(host, port, normal))[1] for _ in range(5)])[2]
    out = Results()
    go, stop = asyncio.Event(), asyncio.Event()
    deadline_s = args.queue_timeout_s + args.deadline_slack_s
    bodies = [[post("/embed", {"inputs": texts[c * args.requests_per_client + k]})
               for k in range(args.requests_per_client)] for c in range(args.clients)]
    clients = [asyncio.create_task(one_client(host, port, bodies[c], go, deadline_s, out))
               for c in range(args.clients)]
    await asyncio.sleep(args.connect_seconds)  # let the connections open first: the burst is the requests
    probe = asyncio.create_task(prober(host, port, stop, out))
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*clients)
    burst_s = time.perf_counter() - t0
    stop.set()
    await probe
    # Recovery: the queue empties and a normal request is about as fast as before the burst.
    t_end = time.perf_counter()
    recovered_after = None
    while time.perf_counter() - t_end < args.recovery_limit_s * 3:
        status, seconds = await single_latency(host, port, normal)
        if status == 200 and seconds <= max(3 * base, base + 0.05) and await queue_depth(host, port) == 0:
            recovered_after = time.perf_counter() - t_end
            break
        await asyncio.sleep(0.1)

    statuses = Counter(r.status for r in out.replies)
    rejected = [r for r in out.replies if r.status in (429, 503)]
    ok = [r.seconds for r in out.replies if r.status == 200]
    rej = [r.seconds for r in rejected]
    rej_first = [r.seconds for r in rejected if r.wave == 0]
    rej_later = [r.seconds for r in rejected if r.wave > 0]
    pct = _ms

    return {
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "replies": len(out.replies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "other_statuses": sum(v for k, v in statuses.items() if k not in (200, 429, 503)),
        "bad_error_replies": sum(not is_good_error(r) for r in rejected),
        "failures": dict(out.failures),
        "burst_seconds": round(burst_s, 2),
        "ok_latency_ms": {"p50": pct(ok, 50), "p99": pct(ok, 99), "max": pct(ok, 100)},
        "reject_latency_ms": {"p50": pct(rej, 50), "p99": pct(rej, 99), "max": pct(rej, 100)},
        "reject_latency_first_wave_ms": {"n": len(rej_first), "p50": pct(rej_first, 50), "p99": pct(rej_first, 99)},
        "reject_latency_later_waves_ms": {"n": len(rej_later), "p50": pct(rej_later, 50), "p99": pct(rej_later, 99)},
        "health": health_summary(out.health),
        "baseline_request_ms": round(base * 1000, 1),
        "recovered_after_s": None if recovered_after is None else round(recovered_after, 2),
    }


def evaluate(report: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    expected = args.clients * args.requests_per_client
    reject_p99 = report["reject_latency_ms"]["p99"]
    return {
        "every_reply_200_429_503": report["other_statuses"] == 0 and report["replies"] == expected,
        "errors_json_with_retry_after": report["bad_error_replies"] == 0,
        "nothing_past_deadline": not report["failures"],
        "rejections_fast": reject_p99 is None or reject_p99 <= args.reject_p99_ms,
        "health_fast": report["health"]["non_200"] == 0 and (report["health"]["p99_ms"] or 0) <= args.health_p99_ms,
        "recovered": report["recovered_after_s"] is not None and report["recovered_after_s"] <= args.recovery_limit_s,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact-dir", default=str(REPO / "artifacts" / "all-MiniLM-L6-v2"))
    p.add_argument("--url", help="an already running server (host:port taken from it); else one is started")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--max-queue-size", type=int, default=256)
    p.add_argument("--queue-timeout-s", type=float, default=10.0)
    p.add_argument("--intra-op-threads", type=int, default=0, help="EMBED_INTRA_OP_THREADS (0: onnxruntime's)")
    p.add_argument("--deadline-slack-s", type=float, default=5.0)
    p.add_argument("--connect-seconds", type=float, default=2.0)
    p.add_argument("--reject-p99-ms", type=float, default=100.0)
    p.add_argument("--health-p99-ms", type=float, default=500.0)
    p.add_argument("--recovery-limit-s", type=float, default=5.0)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


def main() -> int:
    from bench.server_process import running_server

    args = parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request costs client CPU
    env = {
        "EMBED_ARTIFACT_DIR": args.artifact_dir,
        "EMBED_MAX_QUEUE_SIZE": str(args.max_queue_size),
        "EMBED_QUEUE_TIMEOUT_S": str(args.queue_timeout_s),
        "EMBED_INTRA_OP_THREADS": str(args.intra_op_threads),
    }
    with running_server(env) as (url, _pid):
        host, port = url.removeprefix("http://").split(":")
        report = asyncio.run(run_burst(host, int(port), args))
    report["checks"] = evaluate(report, args)
    report["config"] = {k: v for k, v in vars(args).items() if k not in ("out", "url")}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "note": "shared 2-core box; client and server on the same cores"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overload-{args.clients}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    log.info("%s\nwritten to %s", json.dumps(report, indent=1), path)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
