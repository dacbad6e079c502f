"""Fairness and memory of several models in one process: does a saturated model slow a second one down?

    .venv/bin/python -m bench.fairness                                  # MiniLM saturated, MPNet probed
    .venv/bin/python -m bench.fairness --saturate mpnet --probe minilm  # the reverse
    .venv/bin/python -m bench.fairness --server-env EMBED_INTRA_OP_SPINNING=false \
        --models "minilm=artifacts/all-MiniLM-L6-v2;max_batch_tokens=512,mpnet=artifacts/all-mpnet-base-v2"

The target (issue: several models in one process): models share the CPU but not a queue, so while one model is
saturated by `--clients` (64) closed-loop clients, the other model's single-request p50 stays within
`--target-ratio` (3x) of its idle p50. One server process serves every model of `--models` (EMBED_MODELS), and
rounds alternate idle, loaded, idle, loaded... so that the shared machine's noise shows in the per-round figures:

- idle phase: `--probe-requests` single-text POST /v1/embeddings to the probe model, one after another on one
  keep-alive connection, nothing else running;
- loaded phase: a separate load process (so its event loop does not delay the probe's replies) opens `--clients`
  connections, each sending one short corpus text at a time to the saturated model (closed loop; a 429/503 is a
  refusal, counted, and the client waits `REFUSAL_PAUSE_S` before its next try); after `--settle-seconds` the
  same probe runs; the saturated model's throughput is counted over the probe's window.

Memory: each model's `resident_bytes_estimate` from /info, and the server's VmRSS (summed over its process tree,
bench/proc_rss.py) when ready and after the rounds; then each model alone in a fresh one-model server, ready RSS,
for the baseline (`--skip-single` skips those).

Bounded: server start-up, each phase by count and by `--phase-seconds`, the load process by its own deadline, each
HTTP exchange by `HTTP_TIMEOUT_S`. Writes docs/results/fairness-<UTC stamp>.json; exits 1 if the target fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/fairness.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import shlex
import time
from collections import Counter
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import httpx
import numpy as np

from bench.corpus import sentences
from bench.mpnet_parity import cpu_model, git_head
from bench.overload import Reply, post, request
from bench.proc_rss import tree_rss_bytes
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.fairness")

RESULTS_DIR = REPO / "docs" / "results"
DEFAULT_MODELS = "minilm=artifacts/all-MiniLM-L6-v2,mpnet=artifacts/all-mpnet-base-v2"
ROUTE = "/v1/embeddings"
HTTP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 300.0
REFUSAL_PAUSE_S = 0.01  # a refused client waits this long before retrying, so refusals do not spin the CPU
PROBE_GAP_S = 0.02  # between probe requests: a single user, not a closed loop of one
STAGES = {"queue_ms": "x-queue-time", "inference_ms": "x-inference-time", "server_total_ms": "x-total-time"}


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.median(present)), 2) if present else None


def model_names(spec: str) -> list[str]:
    """The names in an EMBED_MODELS value, in order (the bench needs every model named)."""
    names = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, _ = entry.split(";")[0].partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--models: every entry needs a name (name=artifact_dir), got {entry!r}")
        names.append(name.strip())
    return names


def single_spec(spec: str, name: str) -> str:
    """The one entry of an EMBED_MODELS value that serves `name`, options included."""
    return next(e.strip() for e in spec.split(",") if e.split(";")[0].partition("=")[0].strip() == name)


# ---- the load process -----------------------------------------------------------------------------------------

async def _load(host: str, port: int, bodies: list[bytes], clients: int, max_seconds: float,
                conn: Connection) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), stop.set)  # anything from the parent means stop
    deadline = time.monotonic() + max_seconds
    done: list[tuple[float, int, float]] = []  # (monotonic end, status, seconds)
    failures: Counter[str] = Counter()
    connected = 0

    async def client(k: int) -> None:
        nonlocal connected
        reader = writer = None
        i = k
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if reader is None or writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HTTP_TIMEOUT_S)
                    connected += 1
                    if connected == clients:
                        conn.send("connected")
                try:
                    reply = await asyncio.wait_for(request(reader, writer, bodies[i % len(bodies)]), HTTP_TIMEOUT_S)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    failures[type(exc).__name__] += 1
                    writer.close()
                    writer = None
                    continue
                i += clients
                done.append((time.monotonic(), reply.status, reply.seconds))
                if reply.status != 200:
                    await asyncio.sleep(REFUSAL_PAUSE_S)
                if reply.headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
        except (TimeoutError, OSError) as exc:
            failures[f"connect:{type(exc).__name__}"] += 1
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    loop.remove_reader(conn.fileno())
    return {"done": done, "failures": dict(failures), "stopped_by_deadline": not stop.is_set()}


def load_process(host: str, port: int, bodies: list[bytes], clients: int, max_seconds: float,
                 conn: Connection) -> None:
    """Entry point of the load process: hammer until told to stop (or the deadline), then send the replies."""
    result = asyncio.run(_load(host, port, bodies, clients, max_seconds, conn))
    if conn.poll():
        conn.recv()
    conn.send(result)


# ---- the probe ------------------------------------------------------------------------------------------------

async def probe(host: str, port: int, bodies: list[bytes], max_requests: int, max_seconds: float) -> dict[str, Any]:
    """Single-text requests one after another on one connection: client latency and the server's stage times."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HTTP_TIMEOUT_S)
    replies: list[Reply] = []
    t0 = time.monotonic()
    try:
        while len(replies) < max_requests and time.monotonic() - t0 < max_seconds:
            replies.append(await asyncio.wait_for(request(reader, writer, bodies[len(replies) % len(bodies)]),
                                                  HTTP_TIMEOUT_S))
            await asyncio.sleep(PROBE_GAP_S)
    finally:
        writer.close()
    ok = [r for r in replies if r.status == 200]
    latency = [r.seconds * 1000 for r in ok]
    result: dict[str, Any] = {
        "requests": len(replies), "statuses": dict(Counter(str(r.status) for r in replies)),
        "window_s": [t0, time.monotonic()],
        "p50_ms": pct(latency, 50), "p90_ms": pct(latency, 90), "max_ms": pct(latency, 100),
    }
    for name, header in STAGES.items():
        values = [float(r.headers[header]) for r in ok if header in r.headers]
        result[f"server_{name}_p50"] = pct(values, 50)
    return result


def loaded_probe(host: str, port: int, probe_bodies: list[bytes], load_bodies: list[bytes],
                 args: argparse.Namespace) -> dict[str, Any]:
    """Start the load process, wait until every client is connected and --settle-seconds more, probe, stop."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    budget = args.settle_seconds + args.phase_seconds + 60
    proc = ctx.Process(target=load_process, args=(host, port, load_bodies, args.clients, budget, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60) or parent.recv() != "connected":
            raise RuntimeError("load process did not connect its clients within 60 s")
        time.sleep(args.settle_seconds)
        result = asyncio.run(probe(host, port, probe_bodies, args.probe_requests, args.phase_seconds))
        parent.send("stop")
        if not parent.poll(HTTP_TIMEOUT_S + 30):
            raise RuntimeError("load process did not report back after stop")
        load = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    start, end = result["window_s"]
    in_window = [(t, s, sec) for t, s, sec in load["done"] if start <= t <= end]
    ok = [sec * 1000 for _, s, sec in in_window if s == 200]
    all_ok = [t for t, s, _ in load["done"] if s == 200]
    span = max(all_ok) - min(all_ok) if len(all_ok) > 1 else 0.0
    statuses = Counter(str(s) for _, s, _ in load["done"])
    result["load"] = {
        "clients": args.clients,
        "replies": len(load["done"]), "statuses": dict(statuses),
        "refusals": sum(v for k, v in statuses.items() if k in ("429", "503")),
        "failures": load["failures"], "stopped_by_deadline": load["stopped_by_deadline"],
        "texts_per_s_in_probe_window": round(len(ok) / max(end - start, 1e-9), 1),
        # Over the whole loaded phase: a slow model finishes a batch of `clients` texts at a time, so a probe
        # window shorter than one batch sees 0 or 64 of them; this figure is the one to quote for throughput.
        "texts_per_s_whole_phase": round((len(all_ok) - 1) / span, 1) if span else None,
        "p50_ms_in_probe_window": pct(ok, 50), "p90_ms_in_probe_window": pct(ok, 90),
    }
    return result


# ---- memory ---------------------------------------------------------------------------------------------------

def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def infos(url: str, names: list[str]) -> dict[str, dict[str, Any]]:
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        out = {}
        for name in names:
            response = http.get(f"{url}/info", params={"model": name})
            response.raise_for_status()
            info = response.json()
            out[name] = {k: info.get(k) for k in ("model_name", "resident_bytes_estimate", "graph_variant",
                                                   "limits", "embedding_dim", "num_layers")}
        return out


def single_model_rss(spec: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    with running_server({**env, "EMBED_MODELS": single_spec(spec, name)}, ready_timeout_s=READY_TIMEOUT_S) as (
            url, pid):
        rss = tree_rss_bytes(pid)
        estimate = infos(url, [name])[name]["resident_bytes_estimate"]
    log.info("%s alone: RSS %.0f MiB when ready (estimate %.0f MiB)", name, rss / 2**20, estimate / 2**20)
    return {"rss_ready_bytes": rss, "resident_bytes_estimate": estimate}


# ---- the run --------------------------------------------------------------------------------------------------

def run_rounds(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    probe_texts = sentences(max(args.probe_requests, 1), seed=11, profile="short")
    probe_bodies = [post(ROUTE, {"model": args.probe, "input": t}) for t in probe_texts]
    load_texts = sentences(2048, seed=7, profile=args.load_profile)
    load_bodies = [post(ROUTE, {"model": args.saturate, "input": t}) for t in load_texts]
    asyncio.run(probe(host, int(port), probe_bodies, 20, 30))  # warm-up, unrecorded
    phases: list[dict[str, Any]] = []
    for k in range(args.rounds):
        for phase in ("idle", "loaded"):
            if phase == "idle":
                result = asyncio.run(probe(host, int(port), probe_bodies, args.probe_requests, args.phase_seconds))
            else:
                result = loaded_probe(host, int(port), probe_bodies, load_bodies, args)
            result.pop("window_s")
            phases.append({"round": k, "phase": phase, **result})
            load = result.get("load", {})
            log.info("round %d %-6s %s p50 %s ms p90 %s ms (server queue %s, inference %s)%s", k, phase, args.probe,
                     result["p50_ms"], result["p90_ms"], result["server_queue_ms_p50"],
                     result["server_inference_ms_p50"],
                     f"; {args.saturate} {load['texts_per_s_whole_phase']} texts/s, p50 "
                     f"{load['p50_ms_in_probe_window']} ms, refusals {load['refusals']}" if load else "")
    return phases


def summarise(phases: list[dict[str, Any]], target: float) -> dict[str, Any]:
    idle = [p for p in phases if p["phase"] == "idle"]
    loaded = [p for p in phases if p["phase"] == "loaded"]
    idle_p50 = med([p["p50_ms"] for p in idle])
    loaded_p50 = med([p["p50_ms"] for p in loaded])
    ratio = round(loaded_p50 / idle_p50, 2) if idle_p50 and loaded_p50 else None
    per_round = [round(lo["p50_ms"] / i["p50_ms"], 2) if lo["p50_ms"] and i["p50_ms"] else None
                 for i, lo in zip(idle, loaded, strict=True)]
    probe_errors = sum(n for p in phases for s, n in p["statuses"].items() if s != "200")
    return {
        "probe_idle_p50_ms": idle_p50, "probe_idle_p90_ms": med([p["p90_ms"] for p in idle]),
        "probe_loaded_p50_ms": loaded_p50, "probe_loaded_p90_ms": med([p["p90_ms"] for p in loaded]),
        "ratio_loaded_over_idle_p50": ratio, "ratio_per_round": per_round,
        "probe_loaded_server_queue_ms_p50": med([p["server_queue_ms_p50"] for p in loaded]),
        "probe_loaded_server_inference_ms_p50": med([p["server_inference_ms_p50"] for p in loaded]),
        "probe_idle_server_inference_ms_p50": med([p["server_inference_ms_p50"] for p in idle]),
        "saturated_texts_per_s": med([p["load"]["texts_per_s_whole_phase"] for p in loaded]),
        "saturated_texts_per_s_in_probe_window": med([p["load"]["texts_per_s_in_probe_window"] for p in loaded]),
        "saturated_p50_ms": med([p["load"]["p50_ms_in_probe_window"] for p in loaded]),
        "saturated_refusals": sum(p["load"]["refusals"] for p in loaded),
        "saturated_statuses": dict(sum((Counter(p["load"]["statuses"]) for p in loaded), Counter())),
        "probe_non_200": probe_errors,
        "target": f"loaded p50 <= {target}x idle p50",
        "target_met": ratio is not None and ratio <= target and probe_errors == 0,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS, help="EMBED_MODELS for the server (every entry named)")
    p.add_argument("--saturate", default="minilm", help="the model the closed-loop clients hammer")
    p.add_argument("--probe", default="mpnet", help="the model whose single-request latency is measured")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="idle/loaded pairs, alternating")
    p.add_argument("--probe-requests", type=int, default=40, help="probe requests per phase (cap)")
    p.add_argument("--phase-seconds", type=float, default=20.0, help="probe time per phase (cap)")
    p.add_argument("--settle-seconds", type=float, default=3.0, help="load before the loaded probe starts")
    p.add_argument("--load-profile", default="short", choices=("short", "medium", "long", "mixed"),
                   help="bench/corpus.py length profile of the saturating texts")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra server environment, e.g. EMBED_INTRA_OP_THREADS=1 (repeatable)")
    p.add_argument("--target-ratio", type=float, default=3.0)
    p.add_argument("--skip-single", action="store_true", help="no one-model servers for the RSS baseline")
    p.add_argument("--tag", default="", help="appended to the result file's name")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default: docs/results)")
    args = p.parse_args(argv)
    names = model_names(args.models)
    for role in ("saturate", "probe"):
        if getattr(args, role) not in names:
            p.error(f"--{role} {getattr(args, role)!r} is not one of --models' names {names}")
    if args.saturate == args.probe:
        p.error("--saturate and --probe must be different models")
    if any("=" not in kv for kv in args.server_env):
        p.error("--server-env takes KEY=VALUE")
    if min(args.clients, args.rounds, args.probe_requests) < 1:
        p.error("--clients, --rounds and --probe-requests must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    names = model_names(args.models)
    env = dict(kv.split("=", 1) for kv in args.server_env)
    report: dict[str, Any] = {
        "command": shlex.join([".venv/bin/python", "-m", "bench.fairness", *(sys.argv[1:] if argv is None else argv)]),
        "started_utc": started.isoformat(timespec="seconds"), "git": git_head(),
        "device": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
                   "note": "shared machine; the load process and the probe run on the server's cores"},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_env": {**env, "EMBED_MODELS": args.models},
    }
    log.info("starting one server with %s (saturate %s, probe %s)", ", ".join(names), args.saturate, args.probe)
    with running_server({**env, "EMBED_MODELS": args.models}, ready_timeout_s=READY_TIMEOUT_S) as (url, pid):
        rss_ready = tree_rss_bytes(pid)
        report["models"] = infos(url, names)
        log.info("ready: RSS %.0f MiB; estimates %s", rss_ready / 2**20,
                 {n: round(m["resident_bytes_estimate"] / 2**20) for n, m in report["models"].items()})
        report["phases"] = run_rounds(url, args)
        report["memory"] = {"all_models": {"rss_ready_bytes": rss_ready, "rss_after_rounds_bytes": tree_rss_bytes(pid),
                                           "vm_hwm_bytes": vm_hwm_bytes(pid)}}
    report["summary"] = summarise(report["phases"], args.target_ratio)
    if not args.skip_single:
        report["memory"]["alone"] = {name: single_model_rss(args.models, name, env) for name in names}
        alone_sum = sum(m["rss_ready_bytes"] for m in report["memory"]["alone"].values())
        report["memory"]["all_models"]["rss_ready_minus_sum_alone_bytes"] = rss_ready - alone_sum
    report["wall_s"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = args.out / f"fairness-{args.saturate}-sat-{args.probe}-probe{tag}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    s = report["summary"]
    log.info("%s probed while %s saturated: idle p50 %s ms, loaded p50 %s ms, ratio %s (per round %s; target <= %s: "
             "%s); %s %s texts/s, refusals %s; RSS ready %.0f MiB; wall %.0f s; written to %s", args.probe,
             args.saturate, s["probe_idle_p50_ms"], s["probe_loaded_p50_ms"], s["ratio_loaded_over_idle_p50"],
             s["ratio_per_round"], args.target_ratio, "met" if s["target_met"] else "MISSED", args.saturate,
             s["saturated_texts_per_s"], s["saturated_refusals"], rss_ready / 2**20, report["wall_s"], path)
    return 0 if s["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
