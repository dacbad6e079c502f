"""The closed loop of bench/closed_loop.py driven by wrk (C, one epoll thread) instead of asyncio + httpx.

On a 2-core machine the Python client competes with the server it measures: every request it sends costs it
CPU the server then lacks. wrk spends a small fraction of that, so running both side by side shows how much of a
figure is the client's. `wrk_loop` takes the same prepared `Request`s and bounds as `closed_loop` and returns the
same dict as `summarise_loop`, plus what only this client knows (its CPU seconds, wrk's socket errors).

How it matches closed_loop, and where it cannot:
- `concurrency` connections, one request in flight on each; `requests[i % len]` for i = 0, 1, ... in the order
  sends happen (with `threads > 1`, wrk thread k sends k, k+T, k+2T, ...: round robin per thread).
- `max_requests` exactly: the Lua script grants that many sends, parks the connections, and stops once every
  reply is in. `max_seconds` goes to wrk's `-d`, rounded up to whole seconds (all wrk accepts); at that deadline
  wrk drops what is in flight where closed_loop waits for it, so a run ended by time counts up to `concurrency`
  fewer replies.
- Sentences and tokens: a reply does not say which request it answers, so when every request sent got a 200 they
  are summed from the `Request`s sent (exact); otherwise from what each 200 reply says (OpenAI `usage.prompt_tokens`,
  one `"index"` per item), which on our server equals the client-side count; `counts_from` says which.
- Latency: wrk records every reply, whatever its status, so the percentiles are over 200 replies only (the
  harness's policy) only when every reply was a 200; `latency_includes_non_200` says when they are not. wrk also
  adds coordinated-omission samples to its histogram before the script sees it; that correction answers an
  open-loop question, so it is undone here (`uncorrect_latency`) and wrk's own figures kept as `wrk_corrected_ms`.
- The latency of a reply includes the Lua that parses it (microseconds); the warm-up requests go first, with httpx.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.closed_loop import OK_STATUS, Request

logger = logging.getLogger(__name__)

LUA_SCRIPT = Path(__file__).with_name("wrk_loop.lua")
THREAD_DONE_MARKER = "wrk_client: thread done"
PARK_MS = 24 * 3600 * 1000  # a connection past its thread's quota waits "forever": the run ends first
INTERRUPT_EVERY_S = 0.05
STARTUP_GRACE_S = 30.0
WARMUP_TIMEOUT_S = 60.0


@functools.cache
def ensure_wrk() -> str:
    """The path of `wrk`, installed with apt-get when missing (the suite's CI installs Debian packages the same way).

    Raises RuntimeError, saying what to do, when it is missing and cannot be installed here.
    """
    if found := shutil.which("wrk"):
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("wrk is not installed and there is no apt-get here to install it; install wrk 4.x")
    if os.geteuid() != 0:
        raise RuntimeError("wrk is not installed and installing it needs root: run `apt-get install -y wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
        logger.info("wrk: apt-get %s", " ".join(args))
        return subprocess.run([apt, *args], env=env, capture_output=True, text=True, timeout=600, check=False)

    installed = apt_get("install", "-y", "-q", "wrk")
    if installed.returncode != 0:  # a fresh image has no package lists yet
        apt_get("update", "-q")
        installed = apt_get("install", "-y", "-q", "wrk")
    if installed.returncode != 0 or not (found := shutil.which("wrk")):
        tail = (installed.stderr or installed.stdout).strip()[-500:]
        raise RuntimeError(f"apt-get could not install wrk (exit {installed.returncode}): {tail}")
    logger.info("wrk: installed %s", found)
    return found


@functools.cache
def wrk_version(path: str) -> str:
    """"4.1.0" from `wrk -v` (which prints the version, then the usage, and exits 1)."""
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
    found = re.search(r"wrk (?:\S*/)?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"cannot read the version of {path}: {(out.stdout + out.stderr)[:200]!r}")
    return found.group(1)


def lua_string(text: str) -> str:
    """A Lua 5.1 string literal for any text: quotes, backslashes and every non-printable byte as \\ddd."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '"\\' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def thread_quotas(max_requests: int, threads: int) -> list[int]:
    """`max_requests` shared out over wrk's threads, the first ones taking the remainder."""
    return [max_requests // threads + (k < max_requests % threads) for k in range(threads)]


def wrk_correct(counts: dict[int, int], expected_us: int) -> dict[int, int]:
    """What wrk 4.x's `stats_correct` does to a histogram (microsecond -> count): the inverse's test oracle.

    For every sample n >= 2e it adds one at n - e, n - 2e, ... while above e, as if an open-loop client had kept
    sending every e microseconds while that reply was outstanding.
    """
    out = dict(counts)
    for n in sorted(counts):
        if n < 2 * expected_us:
            continue
        m = n - expected_us
        while m > expected_us:
            out[m] = out.get(m, 0) + counts[n]
            m -= expected_us
    return out


def uncorrect_latency(corrected: dict[int, int], *, duration_us: int, requests: int,
                      connections: int) -> dict[int, int]:
    """The histogram wrk recorded, from the one it hands to done() after its coordinated-omission correction.

    wrk corrects with e = duration / (requests // connections) (integer division, as in wrk.c). A synthetic sample
    at m > e comes from every real one at m + e, m + 2e, ..., so walking down from the top recovers each real
    count as the corrected count less the real counts already found above it in the same residue class mod e.
    """
    per_connection = requests // connections
    expected = duration_us // per_connection if per_connection else 0
    if expected == 0:  # wrk did not correct (and could not have: an interval of 0 never ends its loop)
        return dict(corrected)
    above: dict[int, int] = {}  # residue mod e -> real samples found so far (all above the current bucket)
    real: dict[int, int] = {}
    for m in sorted(corrected, reverse=True):
        count = corrected[m] - (above.get(m % expected, 0) if m > expected else 0)
        if count < 0:
            raise ValueError(f"latency histogram is not one wrk corrected with interval {expected} us")
        if count:
            real[m] = count
            above[m % expected] = above.get(m % expected, 0) + count
    return dict(sorted(real.items()))


def histogram_percentiles_ms(counts: dict[int, int]) -> dict[str, float]:
    """p50/p95/p99 in ms of a microsecond histogram, by closed_loop's definition (numpy's linear interpolation)."""
    if not counts:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    values = np.repeat(np.fromiter(counts, dtype=np.float64), list(counts.values())) / 1000.0
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


def _lua_config(*, bodies: Path, result: Path, path: str, threads: int, connections: int,
                quotas: list[int]) -> str:
    return (f"local CONFIG = {{bodies = {lua_string(str(bodies))}, result = {lua_string(str(result))}, "
            f"path = {lua_string(path)}, marker = {lua_string(THREAD_DONE_MARKER)}, threads = {threads}, "
            f"connections = {connections}, quotas = {{{', '.join(map(str, quotas))}}}, park_ms = {PARK_MS}}}\n")


def _run_wrk(argv: list[str], *, threads: int, limit_s: float) -> tuple[float, str]:
    """Run wrk to its end; (CPU seconds it used, its stdout). Interrupts it once every thread reports its quota
    met: wrk's main thread sleeps through the whole -d otherwise, even with every worker stopped.

    CPU is the RUSAGE_CHILDREN delta around the reaped process: another child of ours ending meanwhile would add
    to it (in the benchmarks the only other child is the server, which outlives the run).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stderr_lines: list[str] = []
    ended = threading.Event()  # every thread met its quota, or wrk closed stderr (it exited)
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True)
        stream = proc.stderr
        if stream is None:
            raise RuntimeError("wrk started without a stderr pipe")

        def read_stderr() -> None:
            done = 0
            for line in stream:
                if line.strip() == THREAD_DONE_MARKER:
                    done += 1
                    if done == threads:
                        ended.set()
                else:
                    stderr_lines.append(line)
            ended.set()

        reader = threading.Thread(target=read_stderr, name="wrk-stderr", daemon=True)
        reader.start()
        deadline = time.monotonic() + limit_s
        ended.wait(timeout=limit_s)
        # Repeat: a SIGINT that lands before wrk installs its handler (or before it sleeps) is lost.
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=INTERRUPT_EVERY_S)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"wrk did not finish within {limit_s:.0f} s: {''.join(stderr_lines)[-500:]}")
        reader.join(timeout=5)
        stdout.seek(0)
        out = stdout.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {''.join(stderr_lines)[-1000:]}{out[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, out


def _sent_totals(requests: Sequence[Request], sent: list[int], threads: int) -> tuple[int, int]:
    """Sentences and tokens of every request sent: thread k sent requests[(k + threads * j) % len], j < sent[k]."""
    chosen = [requests[(k + threads * j) % len(requests)] for k, n in enumerate(sent) for j in range(n)]
    return sum(r.sentences for r in chosen), sum(r.tokens for r in chosen)


def _counts(report: dict[str, Any], requests: Sequence[Request], threads: int,
            ok: int) -> tuple[int, int, str, dict[str, int] | None]:
    """(sentences, tokens, where they came from, what the replies said) for the 200 replies."""
    per_thread = report["threads"]
    sent = [t["sent"] for t in per_thread]
    answered = sum(t["answered"] for t in per_thread)
    server = None
    if not any(t["ok_without_usage"] for t in per_thread):
        server = {"sentences": sum(t["ok_sentences"] for t in per_thread),
                  "tokens": sum(t["ok_tokens"] for t in per_thread)}
    if answered == sum(sent) == ok:
        sentences, tokens = _sent_totals(requests, sent, threads)
        if server is not None and server != {"sentences": sentences, "tokens": tokens}:
            logger.warning("the replies count %s, the requests sent %d sentences and %d tokens", server, sentences,
                           tokens)
        return sentences, tokens, "requests", server
    if server is not None:
        return server["sentences"], server["tokens"], "replies", server
    if len({(r.sentences, r.tokens) for r in requests}) == 1:
        return ok * requests[0].sentences, ok * requests[0].tokens, "equal bodies", None
    raise RuntimeError("some requests went unanswered or failed, the 200 replies carry no OpenAI usage, and the "
                       "bodies differ in size: cannot tell what succeeded; use equal bodies or an OpenAI route")


def wrk_loop(url: str, route: str, requests: Sequence[Request], *, concurrency: int, max_requests: int,
             max_seconds: float, warmup: int = 1, threads: int = 1) -> dict[str, Any]:
    """`concurrency` wrk connections POST `requests[i % len]` until `max_requests` or `max_seconds`.

    Returns `summarise_loop`'s keys (seconds is wrk's measured duration) and `client`, `client_cpu_seconds`,
    `latency_includes_non_200`, `counts_from`, `server_counts`, `socket_errors`, `wrk_corrected_ms`.
    `threads` wrk threads share the connections (it must divide `concurrency`); one keeps the client on one core.
    """
    if not requests:
        raise ValueError("no requests to send")
    if threads < 1 or concurrency < threads or concurrency % threads:
        raise ValueError(f"concurrency {concurrency} must be a positive multiple of threads {threads}")
    if max_requests < threads:
        raise ValueError(f"max_requests {max_requests} is fewer than one per wrk thread ({threads})")
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    wrk = ensure_wrk()
    version = wrk_version(wrk)
    if not version.startswith("4."):
        raise RuntimeError(f"wrk {version}: the script needs wrk 4.x (thread:stop, its latency histogram layout)")
    target = urlsplit(f"{url}{route}")
    path = target.path + (f"?{target.query}" if target.query else "")
    duration_s = max(1, math.ceil(max_seconds))
    quotas = thread_quotas(max_requests, threads)

    with httpx.Client(timeout=WARMUP_TIMEOUT_S) as http:
        for i in range(warmup):
            http.post(f"{url}{route}", json=requests[i % len(requests)].body)

    with tempfile.TemporaryDirectory(prefix="wrk-client-") as tmp:
        bodies, result, script = Path(tmp, "bodies.jsonl"), Path(tmp, "result.json"), Path(tmp, "loop.lua")
        bodies.write_text("".join(json.dumps(r.body, ensure_ascii=False, separators=(",", ":")) + "\n"
                                  for r in requests), encoding="utf-8")
        config = _lua_config(bodies=bodies, result=result, path=path, threads=threads, connections=concurrency,
                             quotas=quotas)
        script.write_text(config + LUA_SCRIPT.read_text())
        # -T caps wrk's latency histogram (and counts slower replies as timeouts): no reply outlives the run.
        argv = [wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{duration_s}s", "-T",
                f"{duration_s + 2}s", "-s", str(script), f"{target.scheme}://{target.netloc}/"]
        logger.info("wrk: %d connections, %d requests or %d s, %s", concurrency, max_requests, duration_s, path)
        cpu, _ = _run_wrk(argv, threads=threads, limit_s=duration_s + STARTUP_GRACE_S)
        if not result.exists():
            raise RuntimeError("wrk ended without running the script's done()")
        report = json.loads(result.read_text())

    statuses: dict[int, int] = {}
    for t in report["threads"]:
        for status, n in t["statuses"].items():
            statuses[int(status)] = statuses.get(int(status), 0) + n
    statuses = dict(sorted(statuses.items()))
    ok = statuses.get(OK_STATUS, 0)
    replies = sum(statuses.values())
    sentences, tokens, counts_from, server_counts = _counts(report, requests, threads, ok)
    errors = report["errors"]
    recorded = report["requests"] - errors["timeout"]  # wrk counts a reply beyond its histogram as a timeout
    latency = uncorrect_latency({int(v): n for v, n in report["latency_us"]}, duration_us=report["duration_us"],
                                requests=report["requests"], connections=concurrency)
    if sum(latency.values()) != recorded:
        raise RuntimeError(f"wrk's latency histogram holds {sum(latency.values())} replies once uncorrected, "
                           f"not the {recorded} it recorded: its correction is not the one wrk 4.1 makes")
    seconds = report["duration_us"] / 1e6
    return {
        "concurrency": concurrency, "requests": replies, "ok": ok,
        "non_200": {s: n for s, n in sorted(statuses.items(), key=lambda item: str(item[0])) if s != OK_STATUS},
        "statuses": statuses, "seconds": seconds, "sentences": sentences, "tokens": tokens,
        "sentences_per_s": sentences / seconds, "tokens_per_s": tokens / seconds,
        **histogram_percentiles_ms(latency),
        "latency_includes_non_200": ok != replies,
        "client": f"wrk {version} (C, {threads} thread{'s' if threads > 1 else ''})",
        "client_cpu_seconds": cpu,
        "counts_from": counts_from, "server_counts": server_counts,
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "wrk_corrected_ms": {f"p{q}": report["wrk_percentiles_us"][str(q)] / 1000.0 for q in (50, 95, 99)},
    }
