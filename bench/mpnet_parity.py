"""all-mpnet-base-v2 with its real weights: the served model against sentence-transformers and transformers.

    .venv/bin/python bench/mpnet_parity.py [--rounds 3] [--max-seconds 120] [--variants] [--skip-throughput]

Why this exists: the MPNet family is tested on tiny seeded checkpoints (tests/families), which catch wiring
errors but not what only a real checkpoint shows: its real tokenizer.json (which truncates and pads at 128 while
the model allows 384), relative-position buckets at real lengths, and numerics at 12 layers x 768. So this script
runs the whole path once, end to end, the way a user would:

1. exports the artifact (`python -m export --skip-variants`; idempotent, so a second run reuses it) and the
   MiniLM one. Without int8/fp16 by default: the int8 variant fails the exporter's cosine floor on MPNet (mean
   cosine 0.04 vs fp32 when measured), which makes the whole export exit 3;
2. starts a real `python -m service` on 127.0.0.1 for each (bounded start-up, SIGTERM at the end);
3. sends ~250 varied inputs (English, CJK, emoji, code, accents, 1-character texts, and >= 10 texts past the
   384-token window, which both sides cut at 384) to POST /v1/embeddings in batches of <= 32 and compares each
   with `SentenceTransformer.encode` (cosine, max abs diff; target min cosine >= 0.9999), and the served token
   ids with sentence-transformers' own tokenization, so a failure says whether the tokenizer or the model differs;
4. compares attention maps from POST /v1/encode for ~20 lengths with transformers' eager MPNet
   (`output_attentions=True`) on the served token ids (target max abs diff <= 1e-4); inputs too long for the
   server's attention budget at all 12 layers are compared on the layers that fit, plus the head-mean of all;
5. measures served sentences/s (4 concurrent clients x 32 sentences) of both models beside sentence-transformers
   in-process at its best batch size, in interleaved rounds, medians reported;
6. writes docs/results/mpnet-parity-<UTC stamp>.json and prints a summary; exits 1 if a target fails.

Every wait is bounded: export, server start-up, each HTTP call, and each throughput scenario (--max-seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/mpnet_parity.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import platform
import random
import shlex
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import httpx
import numpy as np

from bench.bench_serving import sentence_transformers_rate
from bench.closed_loop import Request, closed_loop
from bench.corpus import sentences as bench_sentences
from bench.server_process import REPO, running_server

log = logging.getLogger("bench.mpnet_parity")

MPNET = "all-mpnet-base-v2"
MINILM = "all-MiniLM-L6-v2"
ARTIFACTS = REPO / "artifacts"
RESULTS_DIR = REPO / "docs" / "results"
MIN_COSINE = 0.9999
MAX_ATTENTION_DIFF = 1e-4
EMBED_BATCH = 32  # inputs per POST /v1/embeddings, as asked of a client
N_ATTENTION = 20
ST_BATCH_SIZES = (16, 32, 64)
HTTP_TIMEOUT_S = 300.0  # the first attention request builds the attention graph (lazy), which takes a while here
EXPORT_TIMEOUT_S = 3600.0
READY_TIMEOUT_S = 300.0
# The default EMBED_QUEUE_TIMEOUT_S (10 s) suits MiniLM; on a 2-core CPU one 32-input MPNet request with long texts
# needs several 2048-token batches of seconds each, so its later rows wait past 10 s and get 503 queue_timeout
# (seen on the first run). This script measures parity and throughput, not load shedding, so both servers wait.
SERVER_ENV = {"EMBED_QUEUE_TIMEOUT_S": "120"}


@dataclass(frozen=True)
class Item:
    """One corpus input and what kind of text it is, so a bad cosine can be traced to a script or a length."""

    kind: str
    text: str


# ---- corpus ---------------------------------------------------------------------------------------------------

_CJK = (
    "自然语言处理是人工智能的一个重要分支。", "東京スカイツリーは高さ634メートルの電波塔です。",
    "오늘 서울의 날씨는 맑고 따뜻합니다.", "我喜欢在周末去图书馆看书，然后喝一杯咖啡。",
    "日本語と中文と한국어が混ざった文章", "注意力机制让模型关注输入中最相关的部分",
    "漢字、ひらがな、カタカナ、そして romaji を含む文", "全角文字：ＡＢＣ１２３！？",
)
_EMOJI = (
    "🚀🚀🚀", "I love this! 😍🔥👍🏽", "Family: 👩‍👩‍👧‍👦 and flags 🇯🇵🇫🇷🇧🇷", "🤖 + 🧠 = 💡?",
    "Weather today ☀️🌧️❄️ and tomorrow ⛈️", "✅ done, ❌ failed, ⚠️ warning",
)
_CODE = (
    "def add(a: int, b: int) -> int:\n    return a + b",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;",
    '{"id": 42, "tags": ["a", "b"], "ok": true, "score": 0.97}',
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@example\.com$",
    "git commit -m 'fix: handle empty input' && git push origin main",
    '<div class="card"><p>Hello, <b>world</b>!</p></div>',
    "x = np.einsum('bhqd,bhkd->bhqk', q, k) / math.sqrt(d)",
)
_ACCENTED = (
    "Le café de la gare était fermé à cause de la grève.", "Müller aß große Äpfel in Göttingen.",
    "¿Dónde está la estación de autobuses? ¡Allí!", "Tiếng Việt có nhiều dấu thanh điệu khác nhau.",
    "Zażółć gęślą jaźń.", "São Paulo é a maior cidade do Brasil.", "naïve coöperation résumé façade",
    "Cafe\u0301 e\u0301le\u0300ve (combining accents)", "Ελληνικά: η γρήγορη καφέ αλεπού",
    "Русский текст: быстрая коричневая лиса", "العربية: مرحبا بالعالم", "עברית: שלום עולם",
    "हिन्दी में एक वाक्य", "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
)
_SHORT = ("a", "I", "?", "OK", "é", "🙂", "x", "42", "中", "Hi!", "no", ".", "—", "ß")
_MISC = (
    "   leading and trailing spaces   ", "tabs\tand\nnewlines\r\nmixed", "ALL CAPS SHOUTING SENTENCE",
    "http://example.com/path?query=1&b=2#frag", "e-mail: first.last+tag@example.org",
    "Prices: $19.99, €5, £3.50, ¥1000", "∑_{i=1}^{n} x_i² ≥ 0 ∀ x ∈ ℝ", "zero\u200bwidth\u200bspaces",
    "a" * 50, "The quick brown fox jumps over the lazy dog.",
)


def _long_texts(rng: random.Random) -> list[str]:
    """Four more texts well past 384 tokens, in scripts the parity corpus's long ones (English words) lack."""
    cjk = "".join(rng.choice(_CJK) for _ in range(40))  # one token per CJK character
    code = "\n".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))" for i in range(60))
    emoji = " ".join(f"{rng.choice(('ship', 'test', 'deploy'))} {rng.choice(_EMOJI)}" for _ in range(120))
    french = " ".join(rng.choice(_ACCENTED[:7]) for _ in range(60))
    return [cjk, code, emoji, french]


def build_corpus() -> list[Item]:
    """~250 deterministic inputs: the benchmark corpus, the parity tests' awkward corpus, and hand-picked cases."""
    from bench.parity_corpus import parity_sentences

    rng = random.Random(384)
    items = [Item("bench-mixed", t) for t in bench_sentences(100, seed=11, profile="mixed")]
    items += [Item("parity", t) for t in parity_sentences(80, seed=4242)]  # every 8th is 300-420 words
    for kind, texts in (("cjk", _CJK), ("emoji", _EMOJI), ("code", _CODE), ("accented", _ACCENTED),
                        ("short", _SHORT), ("misc", _MISC)):
        items += [Item(kind, t) for t in texts]
    items += [Item("long", t) for t in _long_texts(rng)]
    return items


# ---- export and environment -----------------------------------------------------------------------------------

def export_artifact(args: list[str], out_dir: Path) -> dict[str, Any]:
    """Run `python -m export` (it returns at once when the artifact is up to date) and time it."""
    argv = [sys.executable, "-m", "export", *args, "--out", str(out_dir.relative_to(REPO))]
    manifest = out_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    log.info("export: %s", shlex.join(argv[1:]))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"export exited {proc.returncode}: {proc.stderr[-3000:]}")
    reused = before is not None and manifest.stat().st_mtime_ns == before
    log.info("export: %s in %.1f s", "reused" if reused else "exported", wall_s)
    return {"command": shlex.join([".venv/bin/python", *argv[1:]]), "wall_s": round(wall_s, 2), "reused": reused}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def versions() -> dict[str, str]:
    names = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers", "numpy",
             "fastapi", "uvicorn", "httpx")
    return {n: metadata.version(n) for n in names} | {"python": platform.python_version()}


def git_head() -> dict[str, Any]:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# ---- served side ----------------------------------------------------------------------------------------------

def post(http: httpx.Client, url: str, route: str, body: dict[str, Any]) -> httpx.Response:
    response = http.post(f"{url}{route}", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST {route} -> {response.status_code}: {response.text[:500]}")
    return response


def served_embeddings(http: httpx.Client, url: str, texts: list[str],
                      truncate: bool | None) -> tuple[np.ndarray, set[int]]:
    """POST /v1/embeddings in batches of EMBED_BATCH; returns the vectors and the indexes the server reports cut."""
    vectors: list[np.ndarray] = []
    cut: set[int] = set()
    for start in range(0, len(texts), EMBED_BATCH):
        body: dict[str, Any] = {"input": texts[start:start + EMBED_BATCH], "model": MPNET}
        if truncate is not None:
            body["truncate"] = truncate
        response = post(http, url, "/v1/embeddings", body)
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        vectors += [np.asarray(d["embedding"], dtype=np.float32) for d in data]
        header = response.headers.get("x-truncated-inputs", "")
        cut |= {start + int(i) for i in header.split(",") if i}
        log.info("embeddings: %d/%d", min(start + EMBED_BATCH, len(texts)), len(texts))
    return np.stack(vectors), cut


def served_tokens(http: httpx.Client, url: str, texts: list[str], truncate: bool | None) -> list[dict[str, Any]]:
    """POST /v1/encode (no attention): the token ids the server fed the model, and its `truncated` flags."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        body: dict[str, Any] = {"input": texts[start:start + EMBED_BATCH]}
        if truncate is not None:
            body["truncate"] = truncate
        data = sorted(post(http, url, "/v1/encode", body).json()["data"], key=lambda d: d["index"])
        rows += [{"ids": [t["id"] for t in d["tokens"]], "truncated": d["truncated"],
                  "embedding": np.asarray(d["embedding"], dtype=np.float32)} for d in data]
    return rows


def served_attention(http: httpx.Client, url: str, text: str, body: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """One input's attention maps from POST /v1/encode, decoded from base64 float32 to (L, H, T, T)."""
    response = post(http, url, "/v1/encode", {"input": [text], "attention": {**body, "format": "base64"}})
    row = response.json()["data"][0]
    att = row["attention"]
    values = np.frombuffer(base64.b64decode(att["data"]), dtype="<f4").reshape(att["shape"])
    return values, row


# ---- references -----------------------------------------------------------------------------------------------

def st_embeddings(model: Any, texts: list[str]) -> np.ndarray:
    """sentence-transformers as a user runs it; its module list (Normalize included) decides normalization."""
    return model.encode(texts, batch_size=EMBED_BATCH, convert_to_numpy=True, show_progress_bar=False)


def st_token_ids(model: Any, texts: list[str]) -> list[list[int]]:
    """The ids sentence-transformers feeds its model (its tokenizer, truncated at max_seq_length), unpadded."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), 64):
        features = model.preprocess(texts[start:start + 64])
        for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist(), strict=True):
            ids.append(row[:sum(mask)])
    return ids


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embedding_parity(http: httpx.Client, url: str, st_model: Any, corpus: list[Item],
                     info: dict[str, Any]) -> dict[str, Any]:
    """Served /v1/embeddings vs SentenceTransformer.encode, plus token ids (tokenizer side) and /v1/encode."""
    texts = [item.text for item in corpus]
    window = info["max_input_length"]
    # Send `truncate` only if the server would otherwise refuse long inputs: the default is what users get.
    truncate = None if info["auto_truncate"] else True
    served, cut = served_embeddings(http, url, texts, truncate)
    log.info("sentence-transformers: encoding %d inputs", len(texts))
    reference = st_embeddings(st_model, texts)
    cos = cosines(served, reference)
    diff = np.abs(served - reference).max(1)
    encoded = served_tokens(http, url, texts, truncate)
    st_ids = st_token_ids(st_model, texts)
    id_mismatch = [i for i, (row, ref) in enumerate(zip(encoded, st_ids, strict=True)) if row["ids"] != ref]
    over = [i for i, row in enumerate(encoded) if row["truncated"]]
    route_diff = float(max(np.abs(row["embedding"] - served[i]).max() for i, row in enumerate(encoded)))
    worst = [{"index": int(i), "kind": corpus[i].kind, "tokens": len(encoded[i]["ids"]), "cosine": float(cos[i]),
              "max_abs_diff": float(diff[i]), "text": corpus[i].text[:80]} for i in np.argsort(cos)[:5]]
    by_kind: dict[str, float] = {}
    for i, item in enumerate(corpus):
        by_kind[item.kind] = min(by_kind.get(item.kind, 1.0), float(cos[i]))
    return {
        "route": "/v1/embeddings", "batch_size": EMBED_BATCH, "truncate_sent": truncate,
        "server_auto_truncate": info["auto_truncate"], "window_tokens": window,
        "st_max_seq_length": st_model.max_seq_length, "st_modules": [type(m).__name__ for m in st_model],
        "served_norm_range": [float(np.linalg.norm(served, axis=1).min()), float(np.linalg.norm(served, axis=1).max())],
        "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "max_abs_diff": float(diff.max()),
        "min_cosine_by_kind": by_kind, "worst": worst,
        "token_id_mismatches": len(id_mismatch), "token_id_mismatch_indexes": id_mismatch[:20],
        "truncated_inputs": len(over), "truncated_reported_by_header": len(cut),
        "header_matches_flags": cut == set(over),
        "truncated_token_counts": sorted({len(encoded[i]["ids"]) for i in over}),
        "v1_encode_vs_v1_embeddings_max_abs_diff": route_diff,
    }


def pick_attention_inputs(corpus: list[Item], token_counts: list[int], n: int) -> list[int]:
    """`n` corpus indexes spread geometrically over the token-length range, shortest and longest (past the window)
    included: quantiles of this corpus would be mostly short inputs, and the long ones are where bugs hide."""
    order = sorted(range(len(corpus)), key=lambda i: (token_counts[i], i))
    picks: list[int] = []
    for target in np.geomspace(token_counts[order[0]], token_counts[order[-1]], n):
        free = [i for i in order if i not in picks]
        picks.append(min(free, key=lambda i: (abs(np.log(token_counts[i] / target)), i)))
    return sorted(picks, key=lambda i: token_counts[i])


def layers_within_budget(n_layers: int, n_heads: int, tokens: int, budget: int) -> list[int]:
    """All layers when L*H*T^2 fits the server's attention budget, else evenly spaced ones (first and last kept)."""
    fit = min(n_layers, budget // (n_heads * tokens * tokens))
    if fit >= n_layers:
        return list(range(n_layers))
    if fit < 1:
        return []
    return sorted({round(x) for x in np.linspace(0, n_layers - 1, fit)})


def attention_parity(http: httpx.Client, url: str, model_dir: Path, corpus: list[Item], token_counts: list[int],
                     info: dict[str, Any]) -> dict[str, Any]:
    """Served attention maps vs transformers' eager MPNet on the very token ids the server used."""
    import torch
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    n_layers, n_heads = info["num_layers"], info["num_heads"]
    budget = info["limits"]["attention_budget"]
    window = info["max_input_length"]
    rows: list[dict[str, Any]] = []
    for k, i in enumerate(pick_attention_inputs(corpus, token_counts, N_ATTENTION)):
        tokens = min(token_counts[i], window)
        layers = layers_within_budget(n_layers, n_heads, tokens, budget)
        t0 = time.perf_counter()
        served, row = served_attention(http, url, corpus[i].text, {"layers": layers, "heads": "all"})
        served_s = time.perf_counter() - t0
        ids = [t["id"] for t in row["tokens"]]
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                     output_attentions=True)
        reference = torch.stack(out.attentions)[:, 0].numpy()  # (L, H, T, T)
        entry: dict[str, Any] = {
            "index": i, "kind": corpus[i].kind, "tokens": len(ids), "text_tokens": token_counts[i],
            "truncated": row["truncated"], "layers": layers if len(layers) < n_layers else "all",
            "shape": list(served.shape),
            "max_abs_diff": float(np.abs(served - reference[layers]).max()),
            "served_s": round(served_s, 2),
        }
        if len(layers) < n_layers:
            # The head-mean of all layers is L*T^2, which fits where the full maps do not: every layer still checked.
            mean, _ = served_attention(http, url, corpus[i].text,
                                       {"layers": "all", "heads": "all", "aggregate": "mean"})
            entry["mean_all_layers_max_abs_diff"] = float(np.abs(mean - reference.mean(1, keepdims=True)).max())
        rows.append(entry)
        log.info("attention %d/%d: %d tokens, layers %s, max abs diff %.2e", k + 1, N_ATTENTION, len(ids),
                 entry["layers"], entry["max_abs_diff"])
    del hf
    gc.collect()
    diffs = [r["max_abs_diff"] for r in rows] + [r["mean_all_layers_max_abs_diff"] for r in rows
                                                 if "mean_all_layers_max_abs_diff" in r]
    partial = [r["tokens"] for r in rows if r["layers"] != "all"]
    return {
        "route": "/v1/encode", "reference": "transformers AutoModel, attn_implementation=eager, output_attentions",
        "attention_budget": budget, "inputs": len(rows), "token_lengths": [r["tokens"] for r in rows],
        "max_abs_diff": float(max(diffs)),
        "note": (f"inputs of {partial} tokens exceed the budget at all {n_layers} layers x {n_heads} heads; "
                 "compared on the layers that fit, plus the head-mean of all layers") if partial else "",
        "per_input": rows,
    }


# ---- throughput -----------------------------------------------------------------------------------------------

def st_rate(model: Any, texts: list[str], batch_size: int, max_seconds: float) -> dict[str, Any]:
    """bench_serving's sentence-transformers measurement (chunks of 128 here), as a report row."""
    rate = sentence_transformers_rate(model, texts, batch_size, max_seconds, chunk_size=128)
    return {"batch_size": batch_size, "sentences_per_s": rate}


def served_rate(url: str, model_name: str, texts: list[str], max_seconds: float) -> dict[str, Any]:
    """One pass over the corpus: 4 concurrent clients, 32 sentences per POST /v1/embeddings, bounded in time."""
    requests = [Request({"input": texts[s:s + EMBED_BATCH], "model": model_name, "encoding_format": "base64"},
                        len(texts[s:s + EMBED_BATCH]), 0) for s in range(0, len(texts), EMBED_BATCH)]
    result = asyncio.run(closed_loop(url, "/v1/embeddings", requests, concurrency=4, max_requests=len(requests),
                                     max_seconds=max_seconds))
    if set(result["statuses"]) != {200} or result["sentences"] < len(texts):
        # Only answered sentences count, so a shed request would flatter nothing but hide work: say so.
        log.warning("%s: statuses %s, %d/%d sentences answered", model_name, result["statuses"],
                    result["sentences"], len(texts))
    return result


def throughput(servers: dict[str, str], st_models: dict[str, Any], texts: list[str], rounds: int,
               max_seconds: float) -> dict[str, Any]:
    """Interleaved rounds over every contender (order reversed on odd rounds: this machine is shared)."""
    best: dict[str, int] = {}
    search: dict[str, dict[int, float]] = {}
    sample = texts[::2]  # the batch-size search sees the same mix of lengths in half the time
    for name, model in st_models.items():
        search[name] = {bs: st_rate(model, sample, bs, max_seconds)["sentences_per_s"] for bs in ST_BATCH_SIZES}
        best[name] = max(search[name], key=search[name].__getitem__)
        log.info("sentence-transformers %s batch sizes %s: best %d", name,
                 {k: round(v, 1) for k, v in search[name].items()}, best[name])
    contenders = [(f"served {n}", n) for n in servers] + [(f"sentence-transformers {n}", n) for n in st_models]
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        row: dict[str, Any] = {}
        for label, name in contenders if r % 2 == 0 else contenders[::-1]:
            if label.startswith("served"):
                row[label] = served_rate(servers[name], name, texts, max_seconds)
            else:
                row[label] = st_rate(st_models[name], texts, best[name], max_seconds)
        per_round.append(row)
        log.info("throughput round %d/%d: %s", r + 1, rounds,
                 {k: round(v["sentences_per_s"], 1) for k, v in row.items()})
    summary = {label: float(np.median([row[label]["sentences_per_s"] for row in per_round]))
               for label, _ in contenders}
    ratios = {name: float(np.median([row[f"served {name}"]["sentences_per_s"]
                                     / row[f"sentence-transformers {name}"]["sentences_per_s"] for row in per_round]))
              for name in servers if name in st_models}
    return {
        "client": "4 concurrent clients x 32 sentences per POST /v1/embeddings (encoding_format base64), "
                  "one pass of the corpus per round",
        "sentence_transformers": "in-process encode, chunks of 128, best batch size of a search on every other "
                                 "corpus input",
        "st_batch_search_sentences_per_s": search, "st_best_batch": best, "rounds": rounds,
        "median_sentences_per_s": summary, "paired_ratio_served_vs_st": ratios,
        "all_served_requests_200": all(set(row[f"served {n}"]["statuses"]) == {200}
                                       for row in per_round for n in servers),
        "per_round": per_round,
    }


# ---- main -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds; medians reported")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap per throughput scenario per round")
    parser.add_argument("--variants", action="store_true",
                        help="export the int8/fp16 graphs too (off: int8 misses its 0.99 cosine floor on MPNet)")
    parser.add_argument("--skip-throughput", action="store_true", help="parity only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default: docs/results)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    variants = [] if args.variants else ["--skip-variants"]

    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from export.models import minilm_dir, resolve_model

    mpnet_dir = ARTIFACTS / MPNET
    minilm_artifact = ARTIFACTS / MINILM
    report: dict[str, Any] = {
        "command": shlex.join([".venv/bin/python", "bench/mpnet_parity.py", *(argv or sys.argv[1:])]),
        "started_utc": started.isoformat(timespec="seconds"), "git": git_head(), "versions": versions(),
        "device": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "export": {MPNET: export_artifact(["--model", MPNET, *variants], mpnet_dir),
                   MINILM: export_artifact(["--model", MINILM], minilm_artifact)},
    }
    manifest = json.loads((mpnet_dir / "manifest.json").read_text())
    report["export"][MPNET]["graphs"] = {g: {"parity": v.get("parity"), "size_bytes": v.get("size_bytes")}
                                         for g, v in manifest.get("graphs", {}).items()}

    corpus = build_corpus()
    tokenizer = Tokenizer.from_file(str(mpnet_dir / "tokenizer.json"))  # the exporter turned truncation off
    token_counts = [len(e.ids) for e in tokenizer.encode_batch([item.text for item in corpus])]
    window = int(manifest["max_seq_length"])
    n_long = sum(c > window for c in token_counts)
    report["corpus"] = {"inputs": len(corpus), "kinds": {k: sum(i.kind == k for i in corpus)
                                                         for k in dict.fromkeys(i.kind for i in corpus)},
                        "tokens_min": min(token_counts), "tokens_median": float(np.median(token_counts)),
                        "tokens_max": max(token_counts), f"over_{window}_tokens": n_long}
    log.info("corpus: %d inputs, %d past the %d-token window (longest %d tokens)", len(corpus), n_long, window,
             max(token_counts))
    if n_long < 10:
        raise RuntimeError(f"corpus has only {n_long} inputs past {window} tokens; the check needs >= 10")

    mpnet_model_dir = resolve_model(MPNET)  # cached: no network
    st_mpnet = SentenceTransformer(str(mpnet_model_dir), device="cpu")
    with contextlib.ExitStack() as stack:
        log.info("starting servers (bounded at %.0f s each)", READY_TIMEOUT_S)
        mpnet_url, _ = stack.enter_context(running_server({"EMBED_ARTIFACT_DIR": str(mpnet_dir), **SERVER_ENV},
                                                          ready_timeout_s=READY_TIMEOUT_S))
        http = stack.enter_context(httpx.Client(timeout=HTTP_TIMEOUT_S))
        info = http.get(f"{mpnet_url}/info").json()
        shown = ("model_name", "max_input_length", "auto_truncate", "pooling", "normalize_default", "graph_variant",
                 "provider", "limits")
        report["server"] = {"env": SERVER_ENV} | {k: info.get(k) for k in shown}
        report["embeddings"] = embedding_parity(http, mpnet_url, st_mpnet, corpus, info)
        report["attention"] = attention_parity(http, mpnet_url, mpnet_model_dir, corpus, token_counts, info)
        if not args.skip_throughput:
            minilm_url, _ = stack.enter_context(running_server({"EMBED_ARTIFACT_DIR": str(minilm_artifact),
                                                                **SERVER_ENV}, ready_timeout_s=READY_TIMEOUT_S))
            st_minilm = SentenceTransformer(str(minilm_dir()), device="cpu")
            report["throughput"] = throughput({MPNET: mpnet_url, MINILM: minilm_url},
                                              {MPNET: st_mpnet, MINILM: st_minilm},
                                              [item.text for item in corpus], args.rounds, args.max_seconds)

    emb, att = report["embeddings"], report["attention"]
    report["targets"] = {
        "min_cosine": {"target": f">= {MIN_COSINE}", "value": emb["min_cosine"],
                       "pass": emb["min_cosine"] >= MIN_COSINE},
        "attention_max_abs_diff": {"target": f"<= {MAX_ATTENTION_DIFF}", "value": att["max_abs_diff"],
                                   "pass": att["max_abs_diff"] <= MAX_ATTENTION_DIFF},
    }
    passed = all(t["pass"] for t in report["targets"].values())
    report["passed"] = passed
    report["wall_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"mpnet-parity-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=float) + "\n", encoding="utf-8")
    print(summary(report, path))  # noqa: T201 - the summary is this script's output
    return 0 if passed else 1


def summary(report: dict[str, Any], path: Path) -> str:
    emb, att, export = report["embeddings"], report["attention"], report["export"][MPNET]
    window = emb["window_tokens"]
    lines = [
        f"{MPNET} served vs references ({report['corpus']['inputs']} inputs, "
        f"{report['corpus'][f'over_{window}_tokens']} past {window} tokens); "
        f"export {'reused' if export['reused'] else 'ran'} in {export['wall_s']} s",
        f"embeddings vs sentence-transformers: min cosine {emb['min_cosine']:.7f}, mean {emb['mean_cosine']:.7f}, "
        f"max abs diff {emb['max_abs_diff']:.2e}; token ids differ on {emb['token_id_mismatches']} inputs; "
        f"{emb['truncated_inputs']} truncated (header agrees: {emb['header_matches_flags']})",
        f"attention vs transformers eager ({att['inputs']} inputs, {min(att['token_lengths'])}-"
        f"{max(att['token_lengths'])} tokens): max abs diff {att['max_abs_diff']:.2e}",
    ]
    if att["note"]:
        lines.append(f"  note: {att['note']}")
    if "throughput" in report:
        tp = report["throughput"]
        lines.append(f"throughput, medians of {tp['rounds']} rounds (sentences/s):")
        lines += [f"  {label}: {rate:.1f}" for label, rate in tp["median_sentences_per_s"].items()]
        lines.append(f"  sentence-transformers best batch: {tp['st_best_batch']}; paired served/ST: "
                     + ", ".join(f"{k} {v:.2f}x" for k, v in tp["paired_ratio_served_vs_st"].items()))
        if not tp["all_served_requests_200"]:
            lines.append("  WARNING: some served requests were not answered 200 (see per_round statuses)")
    for name, target in report["targets"].items():
        verdict = "PASS" if target["pass"] else "FAIL"
        lines.append(f"{verdict} {name}: {target['value']:.8g} (target {target['target']})")
    lines.append(f"results: {os.path.relpath(path, REPO)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
