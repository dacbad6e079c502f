"""A random Qwen3-0.6B-shaped decoder embedder served by us: fp32 and int8 tokens/s vs the arithmetic limit.

    .venv/bin/python -m bench.qwen3_shaped                 # build (cached), export (idempotent), measure both
    .venv/bin/python -m bench.qwen3_shaped --seconds 20    # a quicker, noisier run

Why a random model: nothing may download weights, and speed does not depend on what the weights are, only on the
shape. The checkpoint is transformers' own `Qwen3Model` at Qwen3-0.6B's `Qwen3Config` (28 layers, d=1024, 16 query
and 8 key/value heads of 128, SwiGLU 3072, RMSNorm 1e-6, rope theta 1e6, tied embeddings), with transformers' own
random init under `torch.manual_seed(0)`, saved with save_pretrained plus a byte-level BPE tokenizer trained here and
the sentence-transformers files of a last-token-pooled, normalised embedder (bench/random_checkpoints.py, shared with
the family fixtures). It is cached in ~/.cache/encoder-serve/bench/qwen3-0.6b-shaped/ and exported by the project's
own exporter (`python -m export`, which returns at once when the artifact is up to date) into
artifacts/qwen3-0.6b-shaped/.

The vocabulary: the embedding table has Qwen3-0.6B's real 151,936 rows (config.json's vocab_size; its tokenizer
uses 151,669 of them), so the graphs are the real model's size: ~2.4 GB of fp32 weights, stored as ONNX external
data, which the exporter already writes above 1.8 GB. The tokenizer cannot have 151,669 tokens: a BPE trained on a
small local corpus stops when nothing is left to merge. It is trained on the benchmark corpus's generator
(bench/corpus.py, another seed), so its words become single tokens, as common words are in Qwen's own vocabulary;
the unused rows of the table cost no FLOPs (a lookup is not a matmul), and, it seems, no resident memory either:
the fp32 server's RSS at ready (~1.9 GiB) is below its 2.2 GiB of weights, so the table's untouched pages are not
resident, and RSS understates a real model's, which touches far more rows, by up to the table's ~0.6 GB.

Load: 4 clients × 8 sentences per request (bench/corpus.py, seed 7, mixed lengths), bounded by request count AND
seconds, after a warm-up, through bench/closed_loop.py, one server at a time. Tokens are counted client side with the
artifact's tokenizer. The arithmetic limit (bench/roofline.py) is the machine's best fp32 matmul rate divided by the
model's FLOPs per token on the sentences actually sent (GQA, gated MLP, causal attention at E[T²]/E[T]); int8 runs
integer kernels, so its % of that fp32 limit is a comparison, not a bound. The server's queue and watchdog timeouts
are raised (a 2048-token batch of this model takes tens of seconds on two cores); every other setting is the
default. Also recorded: resident memory of the server tree when ready and after the load, and the cosine between
the int8 and fp32 servers' embeddings of 16 held-out sentences (random weights: a sanity figure, not a quality one).
Writes docs/results/qwen3-shaped-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import roofline
from bench.closed_loop import Request, closed_loop
from bench.compare import cosines, machine, token_counts
from bench.corpus import sentences
from bench.proc_rss import tree_rss_bytes
from bench.random_checkpoints import QWEN3_TOKENIZER_CONFIG, qwen3_tokenizer, save_sentence_transformer
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.qwen3_shaped")

NAME = "qwen3-0.6b-shaped"
CHECKPOINT_DIR = Path.home() / ".cache" / "encoder-serve" / "bench" / NAME
ARTIFACT_DIR = REPO / "artifacts" / NAME
RESULTS = REPO / "docs" / "results"
ROUTE = "/v1/embeddings"

# Qwen3-0.6B's config.json, as transformers' Qwen3Config takes it.
QWEN3_0_6B: dict[str, Any] = {
    "vocab_size": 151_936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 40_960, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "attention_bias": False, "use_sliding_window": False, "tie_word_embeddings": True,
}
# The served window. The measured corpus's longest sentence is 187 tokens, so 256 truncates none of it. Not 512:
# the exporter's validation and calibration run our torch encoder, which keeps every layer's attention
# probabilities (L, B, H, T, T); a 32-row calibration batch at T=512 holds 15 GB of them, twice while stacked,
# and the export was killed for memory on a 24 GiB machine (twice, before and after export/validate.py let each
# onnxruntime session go before building the next).
MAX_SEQ_LENGTH = 256
WEIGHTS_SEED = 0
TOKENIZER_TEXTS = 4000
TOKENIZER_SEED = 1  # the measured corpus is seed 7 and the held-out texts seed 77: the tokenizer sees neither
TOKENIZER_MAX_VOCAB = 8192  # an upper bound; the trainer stops when no pair is left to merge
CORPUS_SEED = 7
HELD_OUT_SEED = 77
HELD_OUT = 16
# The default queue (10 s) and watchdog (30 s) deadlines are for small encoders; this model needs ~10-30 s a batch.
SERVER_ENV = {"EMBED_QUEUE_TIMEOUT_S": "300", "EMBED_WATCHDOG_TIMEOUT_S": "300"}


def build_checkpoint(directory: Path) -> Path:
    """The random Qwen3-0.6B-shaped sentence-transformers checkpoint in `directory`, built once (then reused).

    Built aside and renamed into place, so an interrupted build never leaves a half checkpoint to be reused.
    """
    if (directory / "modules.json").is_file():
        log.info("checkpoint %s exists; reusing it", directory)
        return directory
    import torch
    from transformers import Qwen3Config, Qwen3Model

    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        staging = Path(tmp) / "checkpoint"
        staging.mkdir()
        tokenizer = qwen3_tokenizer(sentences(TOKENIZER_TEXTS, seed=TOKENIZER_SEED, profile="mixed"),
                                    vocab_size=TOKENIZER_MAX_VOCAB)
        eos = tokenizer.token_to_id("<|endoftext|>")
        log.info("trained a byte-level BPE tokenizer of %d tokens", tokenizer.get_vocab_size())
        config = Qwen3Config(**QWEN3_0_6B, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_cache=False)
        torch.manual_seed(WEIGHTS_SEED)
        t0 = time.monotonic()
        model = Qwen3Model(config).eval()
        log.info("initialised Qwen3Model (%.0f M parameters) in %.0f s",
                 sum(p.numel() for p in model.parameters()) / 1e6, time.monotonic() - t0)
        model.save_pretrained(staging)
        del model
        tokenizer_config = {"backend": "tokenizers", **QWEN3_TOKENIZER_CONFIG, "model_max_length": MAX_SEQ_LENGTH}
        save_sentence_transformer(staging, tokenizer.to_str(pretty=True), tokenizer_config,
                                  embedding_dim=config.hidden_size, pooling="lasttoken",
                                  max_seq_length=MAX_SEQ_LENGTH, normalize=True)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    log.info("wrote checkpoint %s", directory)
    return directory


def export_command(checkpoint: Path, out_dir: Path) -> list[str]:
    """The project's exporter with every variant; int8 is kept whatever its cosine (--int8-min-cosine -1): on random
    weights the cosine says little, and the point is int8's speed."""
    return [sys.executable, "-m", "export", "--model", str(checkpoint), "--out", str(out_dir), "--name", NAME,
            "--int8-min-cosine", "-1"]


def export(checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    command = export_command(checkpoint, out_dir)
    log.info("exporting: %s", " ".join(command))
    t0 = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.monotonic() - t0
    manifest = json.loads((out_dir / "manifest.json").read_text())
    graphs = {name: {"file": g["file"], "size_bytes": g["size_bytes"], "parity": g["parity"],
                     "latency_ms": g.get("latency_ms")} for name, g in manifest["graphs"].items()}
    log.info("export done in %.0f s: %s", seconds, ", ".join(f"{n} {g['size_bytes'] / 1e9:.2f} GB"
                                                            for n, g in graphs.items()))
    return {"command": "python " + " ".join(command[1:]), "seconds": seconds,
            "graphs": graphs, "dropped_variants": manifest["dropped_variants"],
            "inputs_sha256": manifest["export"]["inputs_sha256"]}


def embeddings_of(url: str, model: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{url}{ROUTE}", json={"input": texts, "model": model, "encoding_format": "float"},
                          timeout=300.0)
    response.raise_for_status()
    rows = sorted(response.json()["data"], key=lambda d: d["index"])
    return np.asarray([r["embedding"] for r in rows], dtype=np.float32)


def measure_variant(variant: str, model: str, requests: list[Request], held_out: list[str], *, clients: int,
                    max_requests: int, max_seconds: float, warmup: int) -> dict[str, Any]:
    """One server on `variant`: RSS when ready, the held-out embeddings, the closed loop, RSS after it."""
    env = {"EMBED_ARTIFACT_DIR": str(ARTIFACT_DIR), "EMBED_GRAPH_VARIANT": variant, **SERVER_ENV}
    log.info("== %s: starting the server", variant)
    t0 = time.monotonic()
    with running_server(env, ready_timeout_s=900.0) as (url, pid):
        result: dict[str, Any] = {"start_seconds": time.monotonic() - t0}
        time.sleep(2.0)  # let start-up allocations settle before reading memory
        result["rss_ready_bytes"] = tree_rss_bytes(pid)
        result["loadavg_1min_before"] = os.getloadavg()[0]
        log.info("  ready in %.0f s, RSS %.0f MB; embedding %d held-out texts", result["start_seconds"],
                 result["rss_ready_bytes"] / 2**20, len(held_out))
        embeddings = embeddings_of(url, model, held_out)
        log.info("  closed loop: %d clients, up to %d requests or %.0f s", clients, max_requests, max_seconds)
        loop = asyncio.run(closed_loop(url, ROUTE, requests, concurrency=clients, max_requests=max_requests,
                                       max_seconds=max_seconds, warmup=warmup))
        result["loop"] = loop
        result["rss_after_load_bytes"] = tree_rss_bytes(pid)
        result["loadavg_1min_after"] = os.getloadavg()[0]  # the machine is shared: note what else ran
    log.info("  %s: %.1f tokens/s, %.2f sentences/s, p50 %.0f ms, p99 %.0f ms, statuses %s, RSS after %.0f MB",
             variant, loop["tokens_per_s"], loop["sentences_per_s"], loop["p50_ms"], loop["p99_ms"],
             loop["statuses"], result["rss_after_load_bytes"] / 2**20)
    if loop["non_200"]:
        log.warning("  %s: replies other than 200: %s", variant, loop["non_200"])
    result["embeddings"] = embeddings
    return result


def sent_tokens(requests: list[Request], sent: int, tokens: list[list[int]]) -> list[int]:
    """Token lengths of every sentence of the first `sent` requests: closed_loop sends requests[i % len] in order."""
    return [t for i in range(sent) for t in tokens[i % len(requests)]]


def versions() -> dict[str, str]:
    names = ("onnxruntime", "onnx", "torch", "transformers", "sentence-transformers", "tokenizers", "numpy",
             "fastapi", "uvicorn", "httpx")
    return {n: importlib.metadata.version(n) for n in names} | {"python": platform.python_version()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request costs client CPU
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time cap of each variant's closed loop")
    parser.add_argument("--max-requests", type=int, default=200, help="request cap of each variant's closed loop")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="sentences per request")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests before each loop")
    parser.add_argument("--variants", default="fp32,int8")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    checkpoint = build_checkpoint(CHECKPOINT_DIR)
    exported = export(checkpoint, ARTIFACT_DIR)
    manifest = json.loads((ARTIFACT_DIR / "manifest.json").read_text())
    model = manifest["model_name"]

    corpus = sentences(args.max_requests * args.batch, seed=CORPUS_SEED, profile="mixed")
    tokens = token_counts(ARTIFACT_DIR, corpus)
    chunks = [list(range(s, s + args.batch)) for s in range(0, len(corpus), args.batch)]
    requests = [Request({"input": [corpus[i] for i in c], "model": model, "encoding_format": "float"}, len(c),
                        sum(tokens[i] for i in c)) for c in chunks]
    request_tokens = [[tokens[i] for i in c] for c in chunks]
    held_out = sentences(HELD_OUT, seed=HELD_OUT_SEED, profile="mixed")
    log.info("corpus: %d sentences in %d requests, %.1f tokens mean, %d max", len(corpus), len(requests),
             float(np.mean(tokens)), max(tokens))

    variants: dict[str, Any] = {}
    embeddings: dict[str, np.ndarray] = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        result = measure_variant(variant, model, requests, held_out, clients=args.clients,
                                 max_requests=args.max_requests, max_seconds=args.seconds, warmup=args.warmup)
        embeddings[variant] = result.pop("embeddings")
        variants[variant] = result

    log.info("== arithmetic limit: fp32 matmul rate")
    matmul = roofline.matmul_flops_per_s()
    log.info("  %.1f GFLOP/s (%s)", matmul["flops_per_s"] / 1e9, matmul["library"])
    for variant, result in variants.items():
        loop = result["loop"]
        flops = roofline.model_flops_per_token(manifest["config"], sent_tokens(requests, loop["requests"],
                                                                                request_tokens))
        limit = matmul["flops_per_s"] / flops["flops_per_token"]
        result["roofline"] = {**flops, "limit_tokens_per_s": limit,
                              "percent_of_limit": 100.0 * loop["tokens_per_s"] / limit}
        if variant == "int8":
            result["roofline"]["note"] = ("int8 MatMuls run integer kernels, not fp32 ones: the fp32 limit does "
                                          "not bound them, and this % compares against it only")
        log.info("  %s: %.1f tokens/s = %.1f%% of the fp32 limit %.1f tokens/s (%.2f GFLOP/token)", variant,
                 loop["tokens_per_s"], result["roofline"]["percent_of_limit"], limit, flops["flops_per_token"] / 1e9)

    report: dict[str, Any] = {
        "benchmark": "qwen3-shaped", "created": stamp,
        "command": "python -m bench.qwen3_shaped " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "model": {
            "name": NAME, "transformers_class": "Qwen3Model", "config": QWEN3_0_6B,
            "weights": f"random: transformers' own init (initializer_range 0.02), torch.manual_seed({WEIGHTS_SEED})",
            "vocab_choice": ("config vocab_size 151,936, Qwen3-0.6B's real embedding table (its tokenizer uses "
                             "151,669 ids), so graph sizes are the real model's; the weights go to ONNX external "
                             "data (> 2 GB), which the exporter supports. The locally trained tokenizer has far "
                             "fewer tokens; unused rows cost no FLOPs and apparently no RSS (untouched pages), so "
                             "RSS understates a real model's by up to the table's ~0.6 GB."),
            "max_seq_length_choice": ("256: the corpus's longest sentence is 187 tokens; at 512 the exporter's torch "
                                      "calibration pass (every layer's attention probabilities kept) ran out of "
                                      "24 GiB"),
            "tokenizer": {"kind": "byte-level BPE, Qwen2Tokenizer pipeline (bench/random_checkpoints.py)",
                          "vocab_size": manifest["vocab_size"],
                          "trained_on": f"bench/corpus.py sentences({TOKENIZER_TEXTS}, seed={TOKENIZER_SEED}, "
                                        "profile='mixed')"},
            "pooling": manifest["pooling"], "normalize": manifest["normalize"],
            "max_seq_length": manifest["max_seq_length"], "checkpoint_dir": str(CHECKPOINT_DIR),
            "artifact_dir": str(ARTIFACT_DIR.relative_to(REPO)), "manifest_config": manifest["config"],
        },
        "export": exported,
        "server_env": SERVER_ENV,
        "load": {"clients": args.clients, "sentences_per_request": args.batch, "max_requests": args.max_requests,
                 "max_seconds": args.seconds, "warmup_requests": args.warmup, "route": ROUTE,
                 "corpus": {"sentences": len(corpus), "seed": CORPUS_SEED, "profile": "mixed",
                            "mean_tokens": float(np.mean(tokens)), "max_tokens": max(tokens)}},
        "variants": variants,
        "matmul": matmul,
        "machine": machine(), "versions": versions(),
    }
    if "fp32" in embeddings and "int8" in embeddings:
        cos = cosines(embeddings["int8"], embeddings["fp32"])
        report["int8_vs_fp32"] = {"texts": f"bench/corpus.py sentences({HELD_OUT}, seed={HELD_OUT_SEED})",
                                  "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                                  "note": "random weights: a sanity figure, not a quality one"}
        log.info("int8 vs fp32 cosine on %d held-out texts: mean %.4f, min %.4f", HELD_OUT, cos.mean(), cos.min())
    report["total_seconds"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"qwen3-shaped-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s in %.0f s", path, report["total_seconds"])


if __name__ == "__main__":
    main()
