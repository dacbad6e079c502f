"""Served throughput and latency vs sentence-transformers in-process, measured side by side in one run.

    .venv/bin/python -m bench.bench_serving [--graph fp32] [--rounds 3] [--max-seconds 30]

Contenders, interleaved in rounds so that a change in the (shared) machine's load hits all alike:
HTTP to one real server process (POST /embed) at concurrency 1 and 32 with one sentence per request and
concurrency 4 with 32 sentences per request; sentence-transformers `encode` in-process at its best batch size
(the baseline); and the bare onnxruntime session on length-sorted batches (what the model costs without HTTP or
batching), built once and warmed at every batch shape it is timed on, as bench/gpu.py does. Prints medians and
paired per-round ratios as a markdown table; writes JSON to bench/results/. Every loop is bounded in count and
seconds. Latency percentiles are over the 200 replies only (bench/closed_loop.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.closed_loop import Request, closed_loop
from bench.corpus import sentences
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.serving")
ARTIFACT = REPO / "artifacts" / "all-MiniLM-L6-v2"


async def http_scenario(url: str, corpus: list[str], *, concurrency: int, per_request: int, requests: int,
                        max_seconds: float) -> dict[str, Any]:
    """Closed loop on POST /embed: `concurrency` clients send `per_request` consecutive corpus sentences each."""
    wrapped = corpus + corpus[:per_request]
    prepared = []
    for i in range(requests):
        start = (i * per_request) % len(corpus)
        batch = wrapped[start:start + per_request]
        prepared.append(Request({"inputs": batch if per_request > 1 else batch[0]}, per_request, 0))
    result = await closed_loop(url, "/embed", prepared, concurrency=concurrency, max_requests=requests,
                               max_seconds=max_seconds)
    return {"per_request": per_request, **result}


def sentence_transformers_model():
    from sentence_transformers import SentenceTransformer

    from export.models import minilm_dir

    return SentenceTransformer(str(minilm_dir()), device="cpu")


def sentence_transformers_rate(model, corpus: list[str], batch_size: int, max_seconds: float,
                               chunk_size: int = 256) -> float:
    """The library the service replaces: `encode` over the corpus in chunks (it sorts each chunk by length)."""
    t0 = time.perf_counter()
    n = 0
    while n < len(corpus) and time.perf_counter() - t0 < max_seconds:
        chunk = corpus[n:n + chunk_size]
        model.encode(chunk, batch_size=batch_size, show_progress_bar=False)
        n += len(chunk)
    return n / (time.perf_counter() - t0)


def length_sorted_encodings(artifact: Path, corpus: list[str]) -> list[Any]:
    """The corpus tokenized with the artifact's tokenizer (truncated at the model window), shortest first."""
    from tokenizers import Tokenizer

    manifest = json.loads((artifact / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_seq_length"])
    return sorted(tokenizer.encode_batch(corpus), key=lambda e: len(e.ids))


def padded_batches(encodings: list[Any], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of `batch_size` consecutive encodings, each padded to its own longest row."""
    for start in range(0, len(encodings), batch_size):
        rows = encodings[start:start + batch_size]
        width = max(len(e.ids) for e in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(rows):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def onnxruntime_session(artifact: Path, graph: str) -> Any:
    """The bare CPU session of one graph, built once per run (its build is not what the ceiling measures)."""
    import onnxruntime as ort

    manifest = json.loads((artifact / "manifest.json").read_text())
    return ort.InferenceSession(str(artifact / manifest["graphs"][graph]["file"]), providers=["CPUExecutionProvider"])


def onnxruntime_sorted(session: Any, artifact: Path, corpus: list[str], batch_size: int = 32,
                       warmup_passes: int = 1) -> dict[str, Any]:
    """The bare session on length-sorted batches: the ceiling the served pipeline should approach.

    The batches are built first and `warmup_passes` untimed passes run over every one of them, so each padded
    shape has met the session before the clock starts (onnxruntime allocates and plans per new shape); then one
    timed pass.
    """
    batches = list(padded_batches(length_sorted_encodings(artifact, corpus), batch_size))
    for _ in range(warmup_passes):
        for feeds in batches:
            session.run(["sentence_embedding"], feeds)
    t0 = time.perf_counter()
    for feeds in batches:
        session.run(["sentence_embedding"], feeds)
    return {"batch_size": batch_size, "warmup_passes": warmup_passes,
            "sentences_per_s": len(corpus) / (time.perf_counter() - t0)}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="fp32", choices=["fp32", "fp32-fused", "int8"])
    parser.add_argument("--sentences", type=int, default=768, help="corpus size (fixed seed)")
    parser.add_argument("--profile", default="mixed", choices=["mixed", "short", "medium", "long"],
                        help="length profile of bench/corpus.py")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap per scenario per round")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    corpus = sentences(args.sentences, seed=7, profile=args.profile)
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                              "graph": args.graph,
                              "corpus": {"sentences": len(corpus), "profile": args.profile, "seed": 7},
                              "rounds": []}
    model = sentence_transformers_model()
    by_batch = {bs: sentence_transformers_rate(model, corpus[:256], bs, args.max_seconds) for bs in (16, 32, 64)}
    best_batch = max(by_batch, key=by_batch.__getitem__)
    log.info("sentence-transformers batch sizes %s: best %d", {k: round(v, 1) for k, v in by_batch.items()}, best_batch)
    env = {"EMBED_ARTIFACT_DIR": str(ARTIFACT), "EMBED_GRAPH_VARIANT": args.graph}
    scenarios = (("c1x1", 1, 1), ("c32x1", 32, 1), ("c4x32", 4, 32))
    ort_session = onnxruntime_session(ARTIFACT, args.graph)
    with running_server(env) as (url, _pid):
        # Rounds interleave every contender so that a change in machine load hits all of them alike
        # (this machine is shared); the per-round ratios are paired, their median is the figure to quote.
        for round_no in range(args.rounds):
            row: dict[str, Any] = {}
            for name, concurrency, per_request in scenarios:
                n_requests = len(corpus) // per_request // (4 if name == "c1x1" else 1)
                row[name] = asyncio.run(http_scenario(url, corpus, concurrency=concurrency, per_request=per_request,
                                                      requests=n_requests, max_seconds=args.max_seconds))
            row["sentence_transformers"] = sentence_transformers_rate(model, corpus, best_batch, args.max_seconds)
            row["onnxruntime_sorted"] = onnxruntime_sorted(ort_session, ARTIFACT, corpus)["sentences_per_s"]
            log.info("round %d: %s", round_no + 1, {k: round(v["sentences_per_s"] if isinstance(v, dict) else v, 1)
                                                  for k, v in row.items()})
            report["rounds"].append(row)
        metrics = httpx.get(f"{url}/metrics").text
    report["batch_size_sum_count"] = [line for line in metrics.splitlines()
                                      if line.startswith(("embed_batch_size_sum", "embed_batch_size_count"))]
    rounds = report["rounds"]

    def med(values: list[float]) -> float:
        return float(np.median(values))

    st = med([r["sentence_transformers"] for r in rounds])
    summary = {}
    for name, _, _ in scenarios:
        summary[name] = {
            "sentences_per_s": med([r[name]["sentences_per_s"] for r in rounds]),
            "p50_ms": med([r[name]["p50_ms"] for r in rounds]),
            "p99_ms": med([r[name]["p99_ms"] for r in rounds]),
            "paired_ratio_vs_st": med([r[name]["sentences_per_s"] / r["sentence_transformers"] for r in rounds]),
        }
    ort_rate = med([r["onnxruntime_sorted"] for r in rounds])
    report["summary"] = {"http": summary, "sentence_transformers": st, "st_best_batch": best_batch,
                         "onnxruntime_sorted": ort_rate,
                         "ort_paired_ratio_vs_st": med([r["onnxruntime_sorted"] / r["sentence_transformers"]
                                                        for r in rounds])}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"serving-{args.graph}-{stamp}.json").write_text(json.dumps(report, indent=2))
    lines = [f"medians of {len(rounds)} interleaved rounds; graph {args.graph}; corpus {args.profile}",
             "| scenario | sentences/s | p50 ms | p99 ms | paired ratio vs ST |", "|---|---|---|---|---|"]
    for name, row in summary.items():
        lines.append(f"| HTTP {name} | {row['sentences_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['paired_ratio_vs_st']:.2f}x |")
    lines.append(f"| sentence-transformers in-process (batch {best_batch}) | {st:.1f} | | | 1.00x |")
    lines.append(f"| onnxruntime bare, sorted batches of 32 | {ort_rate:.1f} | | | "
                 f"{report['summary']['ort_paired_ratio_vs_st']:.2f}x |")
    print("\n".join(lines))  # noqa: T201 - the table is this script's output


if __name__ == "__main__":
    main()
