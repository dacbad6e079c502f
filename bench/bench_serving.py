"""Served throughput and latency vs sentence-transformers in-process, measured side by side in one run.

    .venv/bin/python -m bench.bench_serving [--graph fp32] [--requests 384] [--max-seconds 60]

Scenarios over HTTP (one real server process, POST /embed): concurrency 1 and 32 with one sentence per request,
and concurrency 4 with 32 sentences per request; then, with the server stopped, sentence-transformers `encode`
in-process on the same corpus at several batch sizes (its best is the baseline), and the bare onnxruntime session
on length-sorted batches (what the hardware gives without HTTP). Prints a markdown table and writes JSON to
bench/results/. Every loop is bounded in count and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.corpus import sentences
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.serving")
ARTIFACT = REPO / "artifacts" / "all-MiniLM-L6-v2"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def http_scenario(url: str, corpus: list[str], *, concurrency: int, per_request: int, requests: int,
                        max_seconds: float) -> dict[str, Any]:
    """Closed loop: `concurrency` clients each send requests back to back until the count or time is used up."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            start = (i * per_request) % len(corpus)
            batch = (corpus + corpus[:per_request])[start:start + per_request]
            body = {"inputs": batch if per_request > 1 else batch[0]}
            t0 = time.perf_counter()
            response = await http.post(f"{url}/embed", json=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        await http.post(f"{url}/embed", json={"inputs": corpus[:per_request]})  # connection warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    done = statuses.get(200, 0)
    return {"concurrency": concurrency, "per_request": per_request, "requests": sum(statuses.values()),
            "statuses": statuses, "seconds": elapsed, "sentences_per_s": done * per_request / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def sentence_transformers_best(corpus: list[str], max_seconds: float) -> dict[str, Any]:
    """The library the service replaces, at its best batch size on this corpus (it sorts by length itself)."""
    from sentence_transformers import SentenceTransformer

    from tests.tiny_checkpoint import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.encode(corpus[:64], batch_size=32)
    results = {}
    for batch_size in (16, 32, 64):
        t0 = time.perf_counter()
        n = 0
        while n < len(corpus) and time.perf_counter() - t0 < max_seconds:
            chunk = corpus[n:n + 256]
            model.encode(chunk, batch_size=batch_size)
            n += len(chunk)
        results[batch_size] = n / (time.perf_counter() - t0)
    best = max(results, key=results.__getitem__)
    return {"by_batch_size": results, "best_batch_size": best, "sentences_per_s": results[best]}


def onnxruntime_sorted(corpus: list[str], graph: str, batch_size: int = 32) -> dict[str, Any]:
    """The bare session on length-sorted batches: the ceiling the served pipeline should approach."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(ARTIFACT / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_seq_length"])
    session = ort.InferenceSession(str(ARTIFACT / manifest["graphs"][graph]["file"]),
                                   providers=["CPUExecutionProvider"])
    encodings = sorted(tokenizer.encode_batch(corpus), key=lambda e: len(e.ids))
    t0 = time.perf_counter()
    for start in range(0, len(encodings), batch_size):
        rows = encodings[start:start + batch_size]
        width = max(len(e.ids) for e in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(rows):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})
    return {"batch_size": batch_size, "sentences_per_s": len(corpus) / (time.perf_counter() - t0)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--sentences", type=int, default=768, help="corpus size (fixed seed)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per scenario")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    corpus = sentences(args.sentences, seed=7, profile="mixed")
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                              "graph": args.graph, "corpus": {"sentences": len(corpus), "profile": "mixed", "seed": 7}}
    env = {"EMBED_ARTIFACT_DIR": str(ARTIFACT), "EMBED_GRAPH_VARIANT": args.graph}
    with running_server(env) as (url, _pid):
        http: dict[str, Any] = {}
        for name, concurrency, per_request in (("c1x1", 1, 1), ("c32x1", 32, 1), ("c4x32", 4, 32)):
            n_requests = len(corpus) // per_request
            log.info("HTTP %s: %d clients x %d sentences, %d requests", name, concurrency, per_request, n_requests)
            http[name] = asyncio.run(http_scenario(url, corpus, concurrency=concurrency, per_request=per_request,
                                                   requests=n_requests, max_seconds=args.max_seconds))
            log.info("  %.1f sentences/s, p50 %.1f ms, p99 %.1f ms, statuses %s", http[name]["sentences_per_s"],
                     http[name]["p50_ms"], http[name]["p99_ms"], http[name]["statuses"])
        metrics = httpx.get(f"{url}/metrics").text
    report["http"] = http
    report["batch_size_sum_count"] = [line for line in metrics.splitlines()
                                      if line.startswith(("embed_batch_size_sum", "embed_batch_size_count"))]
    log.info("sentence-transformers in-process")
    report["sentence_transformers"] = sentence_transformers_best(corpus, args.max_seconds)
    log.info("onnxruntime bare session, sorted batches")
    report["onnxruntime_sorted"] = onnxruntime_sorted(corpus, args.graph)
    st = report["sentence_transformers"]["sentences_per_s"]
    report["ratio_c32_vs_st_best"] = http["c32x1"]["sentences_per_s"] / st
    report["ratio_c4x32_vs_st_best"] = http["c4x32"]["sentences_per_s"] / st
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"serving-{args.graph}-{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = ["| scenario | sentences/s | p50 ms | p99 ms | ratio vs ST best |", "|---|---|---|---|---|"]
    for name, row in http.items():
        lines.append(f"| HTTP {name} | {row['sentences_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['sentences_per_s'] / st:.2f}x |")
    lines.append(f"| sentence-transformers in-process (best batch {report['sentence_transformers']['best_batch_size']})"
                 f" | {st:.1f} | | | 1.00x |")
    ort_rate = report["onnxruntime_sorted"]["sentences_per_s"]
    lines.append(f"| onnxruntime bare, sorted batches of 32 | {ort_rate:.1f} | | | {ort_rate / st:.2f}x |")
    print("\n".join(lines))  # noqa: T201 - the table is this script's output


if __name__ == "__main__":
    main()
