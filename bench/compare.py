"""Side by side on one machine: this service (fp32, fp32-fused, int8), Infinity (torch, optimum), sentence-transformers.

    .venv/bin/python -m bench.compare                     # everything, 3 rounds, ~12 min on 2 cores
    .venv/bin/python -m bench.compare --systems ours-fp32,infinity-torch --scale 0.25 --rounds 1   # quick, partial

Every system gets the same fixed corpus (bench/corpus.py, seed 7, mixed lengths) and the same prepared requests,
sent over the same route shape (OpenAI `POST /v1/embeddings`, float encoding) by the same closed-loop client
(bench/closed_loop.py); one server runs at a time, on 127.0.0.1. Infinity runs from its own venv, built on first
use (bench/infinity_env.py), serving the same local model directory offline. sentence-transformers runs
in-process after the servers (its `encode` has no clients, so it is measured one sentence at a time and at its
best batch size). Each scenario is capped by request count AND seconds.

Also measured: each server's resident memory (whole process tree) when ready and again idle after the load; the
machine's fp32 matmul rate and the model's FLOPs per token (bench/roofline.py), giving the arithmetic limit in
tokens/s. The whole sequence runs `--rounds` times, in alternating order; tables show per-figure medians, and the
targets are judged on the median of per-round (paired) ratios, the limit on the fastest matmul of any round.
Writes bench/results/compare-<stamp>.json and .png and prints markdown tables (bench/compare_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import compare_report, infinity_env, roofline
from bench.bench_serving import sentence_transformers_model, sentence_transformers_rate
from bench.closed_loop import Request, closed_loop, percentile
from bench.corpus import sentences
from bench.proc_rss import tree_rss_bytes
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.compare")

ARTIFACT = REPO / "artifacts" / "all-MiniLM-L6-v2"
ROUTE = "/v1/embeddings"
SYSTEMS = ("ours-fp32", "ours-fp32-fused", "ours-int8", "infinity-torch", "infinity-optimum",
           "sentence-transformers")
CORPUS_SEED = 7
PARITY_SENTENCES = 16


@dataclass(frozen=True)
class Scenario:
    """Clients × sentences per request, with its count and time caps (scaled by --scale)."""

    name: str
    label: str
    concurrency: int
    max_requests: int
    max_seconds: float
    requests: list[Request]


def token_counts(corpus: list[str]) -> list[int]:
    """Tokens per sentence with special tokens, truncated at the model's 256: the unit of every tokens/s figure.

    Counted once, client side, with the artifact's tokenizer (the same WordPiece vocabulary every system uses), so
    tokens/s means the same thing for all of them whatever each server reports.
    """
    from tokenizers import Tokenizer

    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(ARTIFACT / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_seq_length"])
    return [len(e.ids) for e in tokenizer.encode_batch(corpus)]


def build_scenarios(corpus: list[str], tokens: list[int], model: str, scale: float,
                    encoding: str = "float") -> list[Scenario]:
    def request(indexes: list[int]) -> Request:
        body = {"input": [corpus[i] for i in indexes], "model": model, "encoding_format": encoding}
        return Request(body, len(indexes), sum(tokens[i] for i in indexes))

    n = len(corpus)
    rng = random.Random(f"{CORPUS_SEED}:burst")
    burst = [request(rng.sample(range(n), rng.randint(1, 16))) for _ in range(64)]

    def capped(count: int) -> int:
        return max(1, round(count * scale))

    return [
        Scenario("c1x1", "1 client × 1 sentence", 1, capped(200), 20 * scale, [request([i]) for i in range(n)]),
        Scenario("c32x1", "32 clients × 1 sentence", 32, capped(n), 40 * scale, [request([i]) for i in range(n)]),
        Scenario("c4x32", "4 clients × 32 sentences", 4, capped(n // 32), 40 * scale,
                 [request(list(range(s, s + 32))) for s in range(0, n - 31, 32)]),
        Scenario("burst64", "burst: 64 requests × 1–16 mixed sentences at once", 64, 64, 60 * scale, burst),
    ]


def embeddings_of(url: str, model: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{url}{ROUTE}", json={"input": texts, "model": model, "encoding_format": "float"},
                          timeout=60.0)
    response.raise_for_status()
    rows = sorted(response.json()["data"], key=lambda d: d["index"])
    return np.asarray([r["embedding"] for r in rows], dtype=np.float32)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def measure_server(name: str, serve: Callable[[], AbstractContextManager[tuple[str, int]]], model: str,
                   scenarios: list[Scenario], parity_texts: list[str]) -> dict[str, Any]:
    """Start one server, record idle RSS, run every scenario, record idle RSS again, stop it."""
    log.info("== %s: starting", name)
    t0 = time.monotonic()
    with serve() as (url, pid):
        started_s = time.monotonic() - t0
        time.sleep(2.0)  # let start-up allocations settle before reading memory
        result: dict[str, Any] = {"start_seconds": started_s, "rss_ready_bytes": tree_rss_bytes(pid),
                                  "loadavg_1min_before": os.getloadavg()[0],
                                  "embeddings": embeddings_of(url, model, parity_texts), "scenarios": {}}
        for sc in scenarios:
            outcome = asyncio.run(closed_loop(url, ROUTE, sc.requests, concurrency=sc.concurrency,
                                              max_requests=sc.max_requests, max_seconds=sc.max_seconds))
            result["scenarios"][sc.name] = outcome
            log.info("  %-8s %7.1f sent/s %8.0f tok/s  p50 %7.1f  p95 %7.1f  p99 %7.1f ms  %s", sc.name,
                     outcome["sentences_per_s"], outcome["tokens_per_s"], outcome["p50_ms"], outcome["p95_ms"],
                     outcome["p99_ms"], outcome["statuses"])
        time.sleep(2.0)
        result["rss_idle_after_load_bytes"] = tree_rss_bytes(pid)
        result["loadavg_1min_after"] = os.getloadavg()[0]  # the machine is shared: note what else ran
    log.info("  RSS ready %.0f MB, idle after load %.0f MB", result["rss_ready_bytes"] / 2**20,
             result["rss_idle_after_load_bytes"] / 2**20)
    return result


def measure_sentence_transformers(corpus: list[str], tokens: list[int], parity_texts: list[str],
                                  scale: float) -> dict[str, Any]:
    """In-process library baseline: one sentence per call (latency), and bench_serving's best-batch throughput."""
    log.info("== sentence-transformers in-process")
    model = sentence_transformers_model()
    embeddings = model.encode(parity_texts, batch_size=32, show_progress_bar=False)
    latencies: list[float] = []
    done_tokens = 0
    deadline = time.monotonic() + 20 * scale
    t0 = time.perf_counter()
    for i in range(max(1, round(200 * scale))):
        if time.monotonic() > deadline:
            break
        t1 = time.perf_counter()
        model.encode([corpus[i]], show_progress_bar=False)
        latencies.append((time.perf_counter() - t1) * 1000)
        done_tokens += tokens[i]
    elapsed = time.perf_counter() - t0
    single = {"sentences_per_s": len(latencies) / elapsed, "tokens_per_s": done_tokens / elapsed,
              "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
              "p99_ms": percentile(latencies, 99), "requests": len(latencies)}
    model.encode(corpus[:64], batch_size=32, show_progress_bar=False)
    by_batch = {bs: sentence_transformers_rate(model, corpus, bs, max_seconds=20 * scale) for bs in (16, 32, 64)}
    best_bs = max(by_batch, key=by_batch.__getitem__)
    best: dict[str, Any] = {"by_batch_size": by_batch, "best_batch_size": best_bs,
                            "sentences_per_s": by_batch[best_bs]}
    # Approximation stated in the report: the corpus's mean tokens per sentence times the best sentences/s.
    best["tokens_per_s"] = best["sentences_per_s"] * statistics.fmean(tokens)
    log.info("  1x1 p50 %.1f ms; best batch %s: %.1f sent/s", single["p50_ms"], best["best_batch_size"],
             best["sentences_per_s"])
    return {"embeddings": embeddings, "single": single, "batched": best}


def measure_round(order: list[str], servers: dict[str, Callable[[], AbstractContextManager[tuple[str, int]]]],
                  model: str, scenarios: list[Scenario], corpus: list[str], tokens: list[int],
                  parity_texts: list[str], scale: float, flops_per_token: float) -> dict[str, Any]:
    """Every chosen system once, one after the other, then the machine's matmul rate: one side-by-side run."""
    systems: dict[str, Any] = {}
    embeddings: dict[str, np.ndarray] = {}
    for name in order:
        if name == "sentence-transformers":
            result = measure_sentence_transformers(corpus, tokens, parity_texts, scale)
        else:
            try:
                result = measure_server(name, servers[name], model, scenarios, parity_texts)
            except RuntimeError as exc:  # a peer that cannot start is recorded, not fatal
                log.error("%s failed: %s", name, exc)
                systems[name] = {"error": str(exc)}
                continue
        embeddings[name] = result.pop("embeddings")
        systems[name] = result
    reference = embeddings.get("ours-fp32", next(iter(embeddings.values()), None))
    for name, vectors in embeddings.items():
        systems[name]["min_cosine_vs_first_system"] = min_cosine(vectors, reference)
    log.info("== arithmetic limit")
    matmul = roofline.matmul_flops_per_s()
    return {"order": order, "systems": systems,
            "roofline": {"flops_per_token": flops_per_token, "matmul": matmul,
                         "limit_tokens_per_s": matmul["flops_per_s"] / flops_per_token}}


def _median_tree(values: list[Any]) -> Any:
    """Element-wise median of JSON-like values, one per round (numbers; dicts recursed; anything else: the first).

    A dict's keys are the union over every round, in first-seen order, so that a key seen only in later rounds (a
    status code such as 429 that round 1 never met) is not dropped; a key missing from some rounds gets the median
    over the rounds that have it, not a median padded with zeros.
    """
    first = values[0]
    if isinstance(first, dict):
        dicts = [v for v in values if isinstance(v, dict)]
        keys = dict.fromkeys(k for d in dicts for k in d)
        return {k: _median_tree([d[k] for d in dicts if k in d]) for k in keys}
    if isinstance(first, int | float) and not isinstance(first, bool):
        median = statistics.median(v for v in values if isinstance(v, int | float))
        return int(median) if isinstance(first, int) and float(median).is_integer() else float(median)
    return first


def median_of(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per system, the median over rounds of every figure (rounds where it failed left out)."""
    names = list(dict.fromkeys(n for r in rounds for n in r[key]))
    out = {}
    for name in names:
        ok = [r[key][name] for r in rounds if name in r[key] and "error" not in r[key][name]]
        out[name] = _median_tree(ok) if ok else next(r[key][name] for r in rounds if name in r[key])
    return out


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("onnxruntime", "tokenizers", "numpy", "fastapi", "uvicorn", "sentence-transformers", "torch",
             "transformers", "httpx", "matplotlib")
    return {n: md.version(n) for n in names} | {"python": platform.python_version()}


def machine() -> dict[str, Any]:
    model_name = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model_name, "platform": platform.platform(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request costs client CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--sentences", type=int, default=768, help="corpus size (fixed seed)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every request and time cap (quick runs)")
    parser.add_argument("--ours-env", action="append", default=[], metavar="EMBED_X=V",
                        help="extra setting for our servers, repeatable (to try EMBED_MAX_WAIT_MS etc.)")
    parser.add_argument("--encoding", default="float", choices=["float", "base64"],
                        help="encoding_format of every request (the openai SDK sends base64 by default)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="whole side-by-side runs, order alternating; medians and per-round ratios reported")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    ours_env = dict(item.split("=", 1) for item in args.ours_env)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {SYSTEMS}")

    from export.models import minilm_dir

    started = time.monotonic()
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    model = manifest["model_name"]
    corpus = sentences(args.sentences, seed=CORPUS_SEED, profile="mixed")
    tokens = token_counts(corpus)
    scenarios = build_scenarios(corpus, tokens, model, args.scale, args.encoding)
    parity_texts = corpus[:PARITY_SENTENCES]
    report: dict[str, Any] = {
        "command": "python -m bench.compare " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": machine(), "versions": versions(),
        "corpus": {"sentences": len(corpus), "seed": CORPUS_SEED, "profile": "mixed",
                   "mean_tokens": statistics.fmean(tokens), "max_tokens": max(tokens)},
        "scenarios": {s.name: {"label": s.label, "concurrency": s.concurrency, "max_requests": s.max_requests,
                               "max_seconds": s.max_seconds} for s in scenarios},
        "systems": {},
    }

    servers: dict[str, Callable[[], AbstractContextManager[tuple[str, int]]]] = {
        f"ours-{graph}": (lambda graph=graph: running_server(
            {"EMBED_ARTIFACT_DIR": str(ARTIFACT), "EMBED_GRAPH_VARIANT": graph, **ours_env}))
        for graph in ("fp32", "fp32-fused", "int8")
    }
    if any(s.startswith("infinity-") for s in chosen):
        infinity_env.ensure_venv()
        report["versions"]["infinity_venv"] = infinity_env.versions()
        if "infinity-optimum" in chosen:
            onnx_dir = infinity_env.ensure_onnx_export(minilm_dir())
            servers["infinity-optimum"] = lambda: infinity_env.running_infinity("optimum", onnx_dir, model)
        servers["infinity-torch"] = lambda: infinity_env.running_infinity("torch", minilm_dir(), model)

    cfg = manifest["config"]
    flops_per_token = roofline.encoder_flops_per_token(
        hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_layers"],
        mean_tokens=report["corpus"]["mean_tokens"])
    rounds = []
    for round_no in range(args.rounds):
        # Alternate the order (ABBA...) so that a drift in the shared machine's load hits every system alike.
        order = chosen if round_no % 2 == 0 else chosen[::-1]
        log.info("==== round %d of %d: %s", round_no + 1, args.rounds, ", ".join(order))
        rounds.append(measure_round(order, servers, model, scenarios, corpus, tokens, parity_texts, args.scale,
                                    flops_per_token))
    report["rounds"] = rounds
    report["systems"] = median_of(rounds, "systems")
    # The limit is the fastest matmul seen in any round: a slow (loaded) measurement must not flatter us.
    matmul = max((r["roofline"]["matmul"] for r in rounds), key=lambda m: m["flops_per_s"])
    report["roofline"] = {"flops_per_token": flops_per_token, "matmul": matmul,
                          "limit_tokens_per_s": matmul["flops_per_s"] / flops_per_token}
    report["total_seconds"] = time.monotonic() - started

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"compare-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2))
    png_path = args.out / f"compare-{stamp}.png"
    compare_report.plot(report, png_path)
    log.info("wrote %s and %s in %.0f s", json_path, png_path, report["total_seconds"])
    print(compare_report.markdown(report))  # noqa: T201 - the tables are this script's output


if __name__ == "__main__":
    main()
