"""What the lazily built explain graph costs a server: RSS before and after the first /v1/explain, and latency.

    .venv/bin/python -m bench.explain_cost                       # the real MiniLM, shipped defaults
    .venv/bin/python -m bench.explain_cost --artifact-dir DIR --out docs/results/explain-cost/NAME.json

Starts `python -m service` on the artifact with default settings, reads the process tree's RSS at ready, after
warm embedding traffic, after the first explain request (which builds and warms the explain graph), and after
more explain requests of the longest admitted input; times the first (cold) and later explain requests, and
`/v1/encode` attention requests of the same input for comparison; then records RSS after each of 30 more explain
requests and 30 attention requests of three such inputs (flat when replies are freed as they are sent). Writes one
JSON result file.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.proc_rss import tree_rss_bytes
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.explain_cost")

DEFAULT_ARTIFACT = REPO / "artifacts" / "all-MiniLM-L6-v2"
SENTENCE = "Xiaoming likes her because Xiaohua helped him, not Xiaoli."
WARM_REQUESTS = 20
EXPLAIN_REQUESTS = 10
SERIES_REQUESTS = 30  # RSS after each of this many more requests: flat means replies are freed when sent
MiB = 1024 * 1024


def _longest_input(client: httpx.Client, limit: int) -> str:
    """A text of about `limit` tokens (specials included), found with the server's own tokenizer."""
    words = SENTENCE.split()
    text = SENTENCE
    while True:
        longer = f"{text} {words[len(text.split()) % len(words)]}"
        count = len(client.post("/tokenize", json={"inputs": longer}).json()[0])
        if count > limit:
            return text
        text = longer


def _timed(client: httpx.Client, path: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - t0
    response.raise_for_status()
    return elapsed * 1000


def measure(artifact_dir: Path) -> dict[str, Any]:
    env = {"EMBED_ARTIFACT_DIR": str(artifact_dir)}
    with running_server(env) as (url, pid), httpx.Client(base_url=url, timeout=120.0) as client:
        info = client.get("/info").json()
        limit = int(info["limits"]["explain_max_tokens"])
        rss_ready = tree_rss_bytes(pid)
        for _ in range(WARM_REQUESTS):
            client.post("/v1/embeddings", json={"input": [SENTENCE] * 8}).raise_for_status()
        rss_embedding = tree_rss_bytes(pid)
        text = _longest_input(client, limit)
        tokens = len(client.post("/tokenize", json={"inputs": text}).json()[0])
        log.info("explain graph %s; first explain request (%d tokens) builds it", info["explain_graph"], tokens)
        first_ms = _timed(client, "/v1/explain", {"input": text})
        rss_first = tree_rss_bytes(pid)
        later = [_timed(client, "/v1/explain", {"input": text, "layer": k % info["num_layers"]})
                 for k in range(EXPLAIN_REQUESTS)]
        rss_after = tree_rss_bytes(pid)
        attention_ms = [_timed(client, "/v1/encode", {"input": text, "attention": {}}) for _ in range(3)]
        series: dict[str, list[float]] = {"explain": [], "encode_attention_3_inputs": []}
        for k in range(SERIES_REQUESTS):
            client.post("/v1/explain", json={"input": text, "layer": k % info["num_layers"]}).raise_for_status()
            series["explain"].append(tree_rss_bytes(pid) / MiB)
        for _ in range(SERIES_REQUESTS):
            client.post("/v1/encode", json={"input": [text] * 3, "attention": {}}).raise_for_status()
            series["encode_attention_3_inputs"].append(tree_rss_bytes(pid) / MiB)
        explain_graph_state = client.get("/info").json()["explain_graph"]
    return {
        "artifact": str(artifact_dir), "model": info["model_id"], "explain_max_tokens": limit,
        "input_tokens": tokens, "explain_graph_after": explain_graph_state,
        "rss_mib": {"ready": rss_ready / MiB, "after_embedding": rss_embedding / MiB,
                    "after_first_explain": rss_first / MiB, "after_explain_requests": rss_after / MiB},
        "explain_graph_rss_mib": (rss_after - rss_embedding) / MiB,
        "rss_series_mib": series,
        "latency_ms": {"first_explain": first_ms, "explain_median": statistics.median(later),
                       "explain_all": later, "encode_with_attention_median": statistics.median(attention_ms)},
        "explain_graph_bytes": sum(p.stat().st_size for p in artifact_dir.glob("model_explain.onnx*")),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-dir", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--out", type=Path,
                        default=REPO / "docs" / "results" / "explain-cost" / "all-MiniLM-L6-v2.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = measure(args.artifact_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log.info("explain graph: +%.1f MiB RSS; first request %.0f ms, then median %.1f ms (wrote %s)",
             result["explain_graph_rss_mib"], result["latency_ms"]["first_explain"],
             result["latency_ms"]["explain_median"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
