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


def retry_pause_s(headers: dict[str, str], *, milliseconds: bool = True) -> float:
    """How long a refused client waits, as the official openai and cohere SDKs decide it: `retry-after-ms` when
    the reply has it, else `retry-after` (whole seconds); `milliseconds=False`: whole seconds only, as a client
    that knows only RFC 9110's header."""
    names = (("retry-after-ms", 1000.0), ("retry-after", 1.0)) if milliseconds else (("retry-after", 1.0),)
    for name, divisor in names:
        try:
            return float(headers[name]) / divisor
        except (KeyError, ValueError):
            continue
    return 1.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    wave: int = 0  # the client's k-th request: wave 0 is the simultaneous burst itself
    inputs: int = 1  # sentences the request carried
    done_at: float = 0.0  # perf_counter() when the reply was complete


@dataclass
class Results:
    replies: list[Reply] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # transport errors and timeouts, by kind
    probes: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # path -> (status, seconds)
    small: list[Reply] = field(default_factory=list)  # the single-sentence requests sent during the burst
    other: list[Reply] = field(default_factory=list)  # the other model's steady clients during the burst
    reconnects: int = 0  # keep-alive connections the server closed while their client slept, opened again

    @property
    def health(self) -> list[tuple[int, float]]:
        return self.probes.get("/health", [])


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
    done = time.perf_counter()
    return Reply(status, headers, body, done - t0, done_at=done)


def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


GET_HEALTH = get("/health")
PROBE_PATHS = ("/health", "/ready", "/metrics")


def embed_body(texts: list[str], model: str | None = None) -> bytes:
    """The request a burst client sends: OpenAI's /v1/embeddings, whose `usage` counts the tokens served."""
    body: dict[str, Any] = {"input": texts[0] if len(texts) == 1 else texts}
    if model:
        body["model"] = model
    return post("/v1/embeddings", body)


@dataclass(frozen=True)
class ClientPlan:
    """What one burst client does: `bodies` in turn (cycling when the burst has a duration), until `until`
    (perf_counter; None: each body once), sleeping Retry-After after a 429/503 when `honor_retry_after`."""

    bodies: list[bytes]
    inputs: int
    until: float | None = None
    honor_retry_after: bool = False
    max_sleep_s: float = 5.0
    retry_after_ms: bool = True  # read Retry-After-Ms first, as the openai and cohere SDKs do


async def one_client(host: str, port: int, plan: ClientPlan, go: asyncio.Event, deadline_s: float,
                     out: Results) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, TimeoutError) as exc:
        out.failures[f"connect:{type(exc).__name__}"] += 1
        return
    try:
        await go.wait()
        wave = 0
        idle = False  # the connection sat unused (Retry-After): the server may have closed it (keep-alive timeout)
        while True:
            if plan.until is None and wave >= len(plan.bodies):
                return
            if plan.until is not None and time.perf_counter() >= plan.until:
                return
            raw = plan.bodies[wave % len(plan.bodies)]
            try:
                reply = await asyncio.wait_for(request(reader, writer, raw), deadline_s)
            except TimeoutError:
                out.failures["past_deadline"] += 1
                return
            except (OSError, asyncio.IncompleteReadError) as exc:
                if not idle:
                    out.failures[f"transport:{type(exc).__name__}"] += 1
                    return
                # What an HTTP client library does with a keep-alive connection the server closed while it
                # slept: open a new one and send again (nothing was answered on the old one).
                writer.close()
                out.reconnects += 1
                idle = False
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                except (OSError, TimeoutError) as exc2:
                    out.failures[f"connect:{type(exc2).__name__}"] += 1
                    return
                continue
            except (asyncio.LimitOverrunError, ValueError, IndexError) as exc:
                out.failures[f"malformed:{type(exc).__name__}"] += 1
                return
            idle = False
            reply.wave, reply.inputs = wave, plan.inputs
            out.replies.append(reply)
            wave += 1
            if reply.headers.get("connection", "").lower() == "close":
                return
            if plan.honor_retry_after and reply.status in (429, 503):
                pause = min(retry_pause_s(reply.headers, milliseconds=plan.retry_after_ms), plan.max_sleep_s)
                if plan.until is not None:
                    pause = min(pause, max(0.0, plan.until - time.perf_counter()))
                await asyncio.sleep(pause)
                idle = pause > 0
    finally:
        writer.close()


async def prober(host: str, port: int, path: str, stop: asyncio.Event, out: Results,
                 interval_s: float = 0.05) -> None:
    """GET `path` every `interval_s` on a connection of its own, recording (status, seconds); 0 = timed out."""
    reader, writer = await asyncio.open_connection(host, port)
    raw = get(path)
    series = out.probes.setdefault(path, [])
    try:
        while not stop.is_set():
            try:
                reply = await asyncio.wait_for(request(reader, writer, raw), 10)
                series.append((reply.status, reply.seconds))
            except TimeoutError:
                series.append((0, 10.0))
                return  # the connection is in an unknown state now
            await asyncio.sleep(interval_s)
    finally:
        writer.close()


async def small_requester(host: str, port: int, raw: bytes, stop: asyncio.Event, out: Results,
                          interval_s: float = 0.25) -> None:
    """A single-sentence client during the burst, on its own connection: is a small request still served fast?"""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not stop.is_set():
            try:
                reply = await asyncio.wait_for(request(reader, writer, raw), 30)
            except TimeoutError:
                out.failures["small_past_deadline"] += 1
                return
            out.small.append(reply)
            await asyncio.sleep(interval_s)
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
    depth = 0.0
    found = False
    for line in reply.body.decode().splitlines():
        if line.startswith("embed_queue_depth{"):  # one labelled series per model: the sum is the server's
            depth += float(line.split()[1])
            found = True
    return depth if found else -1.0


async def calm_baseline(host: str, port: int, bodies: list[bytes], inputs: int, clients: int,
                        seconds: float) -> dict[str, Any]:
    """The server's throughput for the burst's request shape with a few closed-loop clients, just before it."""
    out = Results()
    go = asyncio.Event()
    until = time.perf_counter() + seconds + 0.2
    tasks = [asyncio.create_task(one_client(host, port, ClientPlan(bodies[c::clients], inputs, until=until), go,
                                            60.0, out)) for c in range(clients)]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    ok = [r for r in out.replies if r.status == 200]
    tokens = sum(_prompt_tokens(r) for r in ok)
    return {"clients": clients, "seconds": round(wall, 2), "requests_200": len(ok),
            "non_200": len(out.replies) - len(ok), "sentences_per_s": round(sum(r.inputs for r in ok) / wall, 1),
            "tokens_per_s": round(tokens / wall, 1),
            "latency_ms": {"p50": _ms([r.seconds for r in ok], 50), "p99": _ms([r.seconds for r in ok], 99)}}


def _prompt_tokens(reply: Reply) -> int:
    """Tokens the server counted for a 200 (OpenAI's usage); TEI's /embed reply carries none (0)."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        return 0
    return int(body.get("usage", {}).get("prompt_tokens", 0)) if isinstance(body, dict) else 0


async def loop_lag_buckets(host: str, port: int) -> dict[float, float]:
    """The server's `embed_event_loop_lag_seconds` histogram: cumulative count per upper bound."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        reply = await request(reader, writer, get("/metrics"))
    finally:
        writer.close()
    out: dict[float, float] = {}
    for line in reply.body.decode().splitlines():
        if line.startswith("embed_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = float(line.split()[1])
    return out


def lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """The burst's share of the loop-lag histogram: samples, and the bucket bound its p50 / p99 fall under."""
    counts = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return {"samples": 0}

    def bound(q: float) -> float:
        return next(b for b, c in counts.items() if c >= q * total)

    return {"samples": int(total), "p50_under_s": bound(0.5), "p99_under_s": bound(0.99),
            "share_over_100ms": round(1 - counts.get(0.1, 0.0) / total, 4)}


def _ms(values_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(values_s, q)) * 1000, 1) if values_s else None


def health_summary(probes: list[tuple[int, float]]) -> dict[str, Any]:
    """A prober's (status, seconds) replies, 0 for a timeout: latency over the 200s, the rest counted."""
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


def _error_code(reply: Reply) -> str:
    try:
        body = json.loads(reply.body)
    except ValueError:
        return "?"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("code"))
    return str(body.get("error_type", "?")) if isinstance(body, dict) else "?"


async def run_burst(host: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    k = args.inputs_per_request
    n_bodies = args.clients * args.requests_per_client
    texts = sentences(n_bodies * k + max(args.calm_clients, 2) * 64 * k, seed=3, profile="mixed")
    burst_texts, calm_texts = texts[:n_bodies * k], texts[n_bodies * k:]
    normal = embed_body(["a normal request before and after the burst"])
    small = post("/v1/embeddings", {"input": "a small request during the burst"})
    base = sorted([(await single_latency(host, port, normal))[1] for _ in range(5)])[2]
    calm_small = sorted([(await single_latency(host, port, small))[1] for _ in range(9)])
    calm = None
    if args.calm_seconds > 0:
        calm_bodies = [embed_body(calm_texts[i * k:(i + 1) * k]) for i in range(len(calm_texts) // k)]
        calm = await calm_baseline(host, port, calm_bodies, k, args.calm_clients, args.calm_seconds)
        calm["small_request_ms_p50"] = round(calm_small[len(calm_small) // 2] * 1000, 1)
    out = Results()
    go, stop = asyncio.Event(), asyncio.Event()
    deadline_s = args.queue_timeout_s + args.deadline_slack_s
    per = args.requests_per_client
    bodies = [[embed_body(burst_texts[(c * per + j) * k:(c * per + j + 1) * k], args.model) for j in range(per)]
              for c in range(args.clients)]
    t_start = time.perf_counter() + args.connect_seconds
    until = t_start + args.burst_seconds if args.burst_seconds > 0 else None
    clients = [asyncio.create_task(one_client(
        host, port, ClientPlan(bodies[c], k, until=until, honor_retry_after=args.honor_retry_after,
                                retry_after_ms=not args.retry_after_seconds_only), go,
        deadline_s, out)) for c in range(args.clients)]
    await asyncio.sleep(args.connect_seconds)  # let the connections open first: the burst is the requests
    lag_before = await loop_lag_buckets(host, port)
    side = [asyncio.create_task(prober(host, port, path, stop, out)) for path in PROBE_PATHS]
    side.append(asyncio.create_task(small_requester(host, port, small, stop, out)))
    other = Results()
    if args.other_model:  # a steady load on another model of the same process: is its admitted work finished?
        other_bodies = [embed_body(calm_texts[i * k:(i + 1) * k], args.other_model)
                        for i in range(len(calm_texts) // k)]
        other_until = time.perf_counter() + args.burst_seconds if args.burst_seconds > 0 else None
        side += [asyncio.create_task(one_client(
            host, port, ClientPlan(other_bodies[c::2], k, until=other_until, honor_retry_after=True), go,
            deadline_s, other)) for c in range(2)]
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*clients)
    burst_s = time.perf_counter() - t0
    stop.set()
    await asyncio.gather(*side)
    lag_after = await loop_lag_buckets(host, port)
    # Recovery: a normal request is about as fast as before the burst; drained: the queue is empty too.
    t_end = time.perf_counter()
    recovered_after = drained_after = None
    while time.perf_counter() - t_end < args.recovery_limit_s * 3 and drained_after is None:
        status, seconds = await single_latency(host, port, normal)
        fast = status == 200 and seconds <= max(3 * base, base + 0.05)
        if fast and recovered_after is None:
            recovered_after = time.perf_counter() - t_end
        if fast and await queue_depth(host, port) == 0:
            drained_after = time.perf_counter() - t_end
        await asyncio.sleep(0.1)

    statuses = Counter(r.status for r in out.replies)
    codes = Counter(f"{r.status}:{_error_code(r)}" for r in out.replies if r.status != 200)
    rejected = [r for r in out.replies if r.status in (429, 503)]
    ok = [r.seconds for r in out.replies if r.status == 200]
    rej = [r.seconds for r in rejected]
    rej_first = [r.seconds for r in rejected if r.wave == 0]
    rej_later = [r.seconds for r in rejected if r.wave > 0]
    pct = _ms
    not_refused = [r for r in out.replies if r.status != 429]
    window_s = args.burst_seconds if until is not None else burst_s
    window_end = t0 + window_s
    good = sum(r.inputs for r in out.replies if r.status == 200 and r.done_at <= window_end)
    small_ok = [r.seconds for r in out.small if r.status == 200]

    report: dict[str, Any] = {
        "clients": args.clients,
        "requests_per_client": args.requests_per_client,
        "inputs_per_request": k,
        "replies": len(out.replies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "error_codes": dict(sorted(codes.items())),
        "other_statuses": sum(v for k, v in statuses.items() if k not in (200, 429, 503)),
        "bad_error_replies": sum(not is_good_error(r) for r in rejected),
        "failures": dict(out.failures),
        "reconnects": out.reconnects,
        "burst_seconds": round(burst_s, 2),
        "admitted_finished_share": round(statuses.get(200, 0) / len(not_refused), 4) if not_refused else None,
        "goodput_sentences_per_s": round(good / window_s, 1),
        "ok_latency_ms": {"p50": pct(ok, 50), "p99": pct(ok, 99), "max": pct(ok, 100)},
        "reject_latency_ms": {"p50": pct(rej, 50), "p99": pct(rej, 99), "max": pct(rej, 100)},
        "reject_latency_first_wave_ms": {"n": len(rej_first), "p50": pct(rej_first, 50), "p99": pct(rej_first, 99)},
        "reject_latency_later_waves_ms": {"n": len(rej_later), "p50": pct(rej_later, 50), "p99": pct(rej_later, 99)},
        "health": health_summary(out.health),
        "event_loop_lag": lag_summary(lag_before, lag_after),
        "probes": {path: health_summary(series) for path, series in out.probes.items()},
        "small_requests": {"sent": len(out.small), "ok": len(small_ok),
                           "statuses": dict(Counter(str(r.status) for r in out.small)),
                           "p50_ms": pct(small_ok, 50), "p90_ms": pct(small_ok, 90), "max_ms": pct(small_ok, 100)},
        "baseline_request_ms": round(base * 1000, 1),
        "recovered_after_s": None if recovered_after is None else round(recovered_after, 2),
        "drained_after_s": None if drained_after is None else round(drained_after, 2),
    }
    if args.other_model:
        other_statuses = Counter(f"{r.status}:{_error_code(r)}" if r.status != 200 else "200" for r in other.replies)
        other_ok = [r.seconds for r in other.replies if r.status == 200]
        report["other_model"] = {"model": args.other_model, "replies": len(other.replies),
                                 "statuses": dict(sorted(other_statuses.items())), "failures": dict(other.failures),
                                 "ok_latency_ms": {"p50": pct(other_ok, 50), "p99": pct(other_ok, 99)}}
    if calm is not None:
        report["calm"] = calm
        report["goodput_vs_calm"] = round(report["goodput_sentences_per_s"] / calm["sentences_per_s"], 3) \
            if calm["sentences_per_s"] else None
        # "One batch": a full token budget at the calm token rate.
        report["one_batch_ms"] = round(args.max_batch_tokens / calm["tokens_per_s"] * 1000, 1) \
            if calm["tokens_per_s"] else None
    return report


def evaluate(report: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    reject_p99 = report["reject_latency_ms"]["p99"]
    checks = {
        "every_reply_200_429_503": report["other_statuses"] == 0 and (
            args.burst_seconds > 0 or report["replies"] == args.clients * args.requests_per_client),
        "errors_json_with_retry_after": report["bad_error_replies"] == 0,
        "nothing_past_deadline": not report["failures"],
        "rejections_fast": reject_p99 is None or reject_p99 <= args.reject_p99_ms,
        "recovered": report["recovered_after_s"] is not None and report["recovered_after_s"] <= args.recovery_limit_s,
    }
    for path, summary in report["probes"].items():
        checks[f"probe_fast:{path}"] = summary["non_200"] == 0 and (summary["p99_ms"] or 0) <= args.health_p99_ms
    if args.min_admitted_share > 0:
        share = report["admitted_finished_share"]
        checks["admitted_finished"] = share is not None and share >= args.min_admitted_share
    if args.min_goodput_ratio > 0 and "goodput_vs_calm" in report:
        checks["goodput_held"] = (report["goodput_vs_calm"] or 0) >= args.min_goodput_ratio
    if "other_model" in report:
        statuses = report["other_model"]["statuses"]
        checks["other_model_admitted_finished"] = not any(k.startswith("503") for k in statuses) and \
            statuses.get("200", 0) > 0 and not report["other_model"]["failures"]
    if args.small_check and report.get("one_batch_ms") is not None:
        small = report["small_requests"]
        limit = 2 * report["calm"]["small_request_ms_p50"] + report["one_batch_ms"]
        checks["small_requests_fair"] = small["ok"] > 0 and (small["p50_ms"] or 0) <= limit
    return checks


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact-dir", default=str(REPO / "artifacts" / "all-MiniLM-L6-v2"))
    p.add_argument("--url", help="an already running server (host:port taken from it); else one is started")
    p.add_argument("--case", choices=sorted(CASES), help="a recorded case: sets the options below it names")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--inputs-per-request", type=int, default=1, help="sentences per request (>1: /v1/embeddings)")
    p.add_argument("--burst-seconds", type=float, default=0.0,
                   help="keep every client sending for this long (0: each sends its requests once)")
    p.add_argument("--honor-retry-after", action="store_true", help="a refused client sleeps Retry-After")
    p.add_argument("--retry-after-seconds-only", action="store_true",
                   help="refused clients ignore Retry-After-Ms and sleep the whole seconds of Retry-After")
    p.add_argument("--calm-seconds", type=float, default=0.0, help="measure calm throughput first (0: skip)")
    p.add_argument("--calm-clients", type=int, default=4)
    p.add_argument("--max-batch-tokens", type=int, default=2048, help="the server's (for 'one batch' time)")
    p.add_argument("--max-queue-size", type=int, default=None, help="EMBED_MAX_QUEUE_SIZE (unset: the default)")
    p.add_argument("--queue-timeout-s", type=float, default=10.0, help="the server's EMBED_QUEUE_TIMEOUT_S")
    p.add_argument("--intra-op-threads", type=int, default=None, help="EMBED_INTRA_OP_THREADS (unset: default)")
    p.add_argument("--deadline-slack-s", type=float, default=5.0)
    p.add_argument("--connect-seconds", type=float, default=2.0)
    p.add_argument("--reject-p99-ms", type=float, default=100.0)
    p.add_argument("--health-p99-ms", type=float, default=500.0, help="bound on /health, /ready, /metrics p99")
    p.add_argument("--recovery-limit-s", type=float, default=5.0)
    p.add_argument("--min-admitted-share", type=float, default=0.0, help="check: 200s / replies not 429")
    p.add_argument("--min-goodput-ratio", type=float, default=0.0, help="check: burst goodput / calm throughput")
    p.add_argument("--small-check", action="store_true",
                   help="check: small requests' p50 <= 2 x calm p50 + one batch")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server (A/B runs)")
    p.add_argument("--model", help="the model the burst names (several models served)")
    p.add_argument("--other-model", help="two steady clients on this model during the burst")
    p.add_argument("--models", help="EMBED_MODELS for the server started (default: the one --artifact-dir)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    return p


# The recorded cases (issue 17), at the shipped defaults: the options each sets.
CASES: dict[str, list[str]] = {
    "burst16": ["--clients", "800", "--requests-per-client", "1", "--inputs-per-request", "16",
                "--burst-seconds", "15", "--honor-retry-after", "--calm-seconds", "6", "--reject-p99-ms", "1000",
                "--recovery-limit-s", "2", "--min-admitted-share", "0.95", "--min-goodput-ratio", "0.7",
                "--small-check"],
    # burst16 on model "a" while model "b" of the same process serves two steady 16-sentence clients.
    "burst16-two-models": ["--clients", "800", "--requests-per-client", "1", "--inputs-per-request", "16",
                           "--burst-seconds", "15", "--honor-retry-after", "--calm-seconds", "0",
                           "--reject-p99-ms", "1000", "--recovery-limit-s", "2", "--min-admitted-share", "0.95",
                           "--model", "a", "--other-model", "b"],
    "burst1": ["--clients", "1000", "--requests-per-client", "3", "--inputs-per-request", "1",
               "--burst-seconds", "15", "--honor-retry-after", "--calm-seconds", "6", "--reject-p99-ms", "1000",
               "--recovery-limit-s", "2", "--min-admitted-share", "0.95", "--min-goodput-ratio", "0.7",
               "--small-check"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, a `--case`'s defaults first so that options given after it still win."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    first = parser().parse_known_args(argv)[0]
    return parser().parse_args((CASES[first.case] if first.case else []) + argv)


def main() -> int:
    from bench.server_process import running_server

    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request costs client CPU
    env = {"EMBED_ARTIFACT_DIR": args.artifact_dir, "EMBED_QUEUE_TIMEOUT_S": str(args.queue_timeout_s)}
    if args.models:
        env["EMBED_MODELS"] = args.models
    if args.max_queue_size is not None:
        env["EMBED_MAX_QUEUE_SIZE"] = str(args.max_queue_size)
    if args.intra_op_threads is not None:
        env["EMBED_INTRA_OP_THREADS"] = str(args.intra_op_threads)
    env.update(item.split("=", 1) for item in args.env)
    log.info("case %s: %d clients x %d requests of %d sentences; server env %s", args.case, args.clients,
             args.requests_per_client, args.inputs_per_request, env)
    if args.url:
        host, port = args.url.removeprefix("http://").rstrip("/").split(":")
        report = asyncio.run(run_burst(host, int(port), args))
        env = {"note": "an already running server: its settings are not known here"}
    else:
        with running_server(env) as (url, _pid):
            host, port = url.removeprefix("http://").split(":")
            report = asyncio.run(run_burst(host, int(port), args))
    report["checks"] = evaluate(report, args)
    report["config"] = {k: v for k, v in vars(args).items() if k not in ("out", "url")}
    report["server_env"] = env
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "note": "shared 2-core box; client and server on the same cores"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.case or str(args.clients)
    path = out / f"overload-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    log.info("%s\nwritten to %s", json.dumps(report, indent=1), path)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
