"""Several models in one real server process, and the task heads beyond embeddings, over real HTTP.

One `python -m service` serves (EMBED_MODELS) the real all-MiniLM-L6-v2 (the default), a second embedder of
another family (a random XLM-RoBERTa), three cross-encoders (BERT saved by sentence-transformers' CrossEncoder,
XLM-RoBERTa, ModernBERT), a 3-label classifier and a SPLADE model, all random checkpoints built with
transformers' own classes (tests/families/task_builders.py) and exported by `run_export`. Each route's answer is
checked against its reference on the same weights: transformers' logits (≤ 1e-4), sentence-transformers'
CrossEncoder and SparseEncoder (indices identical, values ≤ 1e-4), and the official openai and cohere SDKs pick
models by name.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.families.builders import build_checkpoint
from tests.families.task_builders import CLASSIFIER_LABELS, task_checkpoint
from tests.server_process import ServerProcess

TOLERANCE = 1e-4
RERANKERS = ("bert-reranker", "xlm-roberta-reranker", "modernbert-reranker")
QUERY = "how do rotary embeddings rotate queries?"
DOCUMENTS = [
    "Rotary position embeddings rotate queries and keys by an angle that grows with the position.",
    "Tokyo is the capital of Japan 🗼 and its largest city.",
    "def add(a, b): return a + b",
    "the the the",
    "Café crème à Zürich, naïve façade.",
]
TEXTS = ["search engines rank documents by similarity", "Über den Wolken", "a b c", "ERROR 404 ?q=1&x=2"]


@dataclass(frozen=True)
class Served:
    url: str
    checkpoints: dict[str, Path]
    artifacts: dict[str, Path]


@pytest.fixture(scope="module")
def served(real_artifact_dir: Path, real_checkpoint_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp("models-and-tasks")
    checkpoints = {name: task_checkpoint(name, root / "checkpoints")
                   for name in (*RERANKERS, "bert-classifier", "bert-splade")}
    checkpoints["xlmr-embedder"] = build_checkpoint("xlm-roberta", root / "checkpoints" / "xlmr-embedder")
    artifacts = {name: run_export(ExportOptions(model_dir=path, out_dir=root / "artifacts" / name, model_name=name,
                                                variants=False))
                 for name, path in checkpoints.items()}
    checkpoints["embedder"] = real_checkpoint_dir
    artifacts["embedder"] = real_artifact_dir
    entries = [f"embedder={real_artifact_dir}"] + [f"{name}={path}" for name, path in artifacts.items()
                                                   if name != "embedder"]
    server = ServerProcess(real_artifact_dir, root / "server.log", EMBED_MODELS=",".join(entries),
                           EMBED_INTRA_OP_THREADS="1", EMBED_MAX_DOCUMENTS_PER_REQUEST="100").wait_ready()
    try:
        yield Served(server.base_url, checkpoints, artifacts)
    finally:
        server.stop_and_check()


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60.0) as client:
        yield client


def _logits(checkpoint: Path, pairs: list[tuple[str, str]] | None = None, texts: list[str] | None = None) -> np.ndarray:
    """transformers' own *ForSequenceClassification on the same weights and the same (pair) tokenization."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    if pairs is not None:
        batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    else:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# --- models ---------------------------------------------------------------------------------------------------


def test_models_are_listed_with_their_tasks_and_described(http: httpx.Client, served: Served) -> None:
    listed = {m["id"]: m["task"] for m in http.get("/v1/models").json()["data"]}
    assert listed == {"embedder": "embed", "xlmr-embedder": "embed", "bert-reranker": "rerank",
                      "xlm-roberta-reranker": "rerank", "modernbert-reranker": "rerank",
                      "bert-classifier": "classify", "bert-splade": "sparse"}
    assert http.get("/info").json()["model_id"] == "embedder"
    reranker = http.get("/info", params={"model": "bert-reranker"}).json()
    assert reranker["task"] == "rerank"
    assert "reranker" in reranker["model_type"]
    assert reranker["resident_bytes_estimate"] > 0
    both = http.get("/info", params=[("model", "embedder"), ("model", "bert-classifier")]).json()
    assert [b["model_id"] for b in both] == ["embedder", "bert-classifier"]
    assert both[1]["labels"] == [CLASSIFIER_LABELS[i] for i in range(3)]
    assert len(http.get("/info", params={"model": "all"}).json()) == len(listed)
    health = http.get("/health").json()
    assert health["status"] == "ok"
    assert set(health["models"]) == set(listed)
    assert set(http.get("/ready").json()["models"].values()) == {"ready"}
    metrics = http.get("/metrics").text
    for name in listed:
        assert f'embed_model_resident_bytes{{model="{name}"}}' in metrics


def test_openai_sdk_selects_the_embedder_by_name(served: Served) -> None:
    from openai import OpenAI

    from tests.families.builders import mixed_texts

    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused")
    texts = mixed_texts()[:4]
    first = client.embeddings.create(model="embedder", input=texts)
    second = client.embeddings.create(model="xlmr-embedder", input=texts)
    assert first.model == "embedder"
    assert second.model == "xlmr-embedder"
    from sentence_transformers import SentenceTransformer

    for reply, name in ((first, "embedder"), (second, "xlmr-embedder")):
        got = np.array([d.embedding for d in reply.data])
        reference = SentenceTransformer(str(served.checkpoints[name]), device="cpu").encode(texts)
        cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cos.min() > 0.99999, name


def test_unknown_model_is_404_and_wrong_task_400_in_each_shape(http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = http.post("/embed", json={"model": "nope", "inputs": "x"})
    assert r.status_code == 404
    assert r.json()["error_type"] == "Validation"
    r = http.post("/v2/rerank", json={"model": "nope", "query": "q", "documents": ["d"]})
    assert r.status_code == 404
    assert "message" in r.json()
    r = http.post("/rerank", json={"model": "embedder", "query": "q", "texts": ["d"]})
    assert r.status_code == 400
    assert "reranker" in r.json()["error"]
    r = http.post("/v1/embeddings", json={"model": "bert-reranker", "input": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_task"
    assert http.get("/info", params={"model": "nope"}).status_code == 404


# --- rerank -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RERANKERS)
def test_tei_rerank_matches_transformers_logits(http: httpx.Client, served: Served, name: str) -> None:
    expected = _logits(served.checkpoints[name], pairs=[(QUERY, d) for d in DOCUMENTS])[:, 0]
    raw = http.post("/rerank", json={"model": name, "query": QUERY, "texts": DOCUMENTS, "raw_scores": True})
    assert raw.status_code == 200, raw.text
    ranks = raw.json()
    assert sorted(r["index"] for r in ranks) == list(range(len(DOCUMENTS)))
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    got = np.array([next(r["score"] for r in ranks if r["index"] == i) for i in range(len(DOCUMENTS))])
    assert np.abs(got - expected).max() <= TOLERANCE
    squashed = http.post("/rerank", json={"model": name, "query": QUERY, "texts": DOCUMENTS, "return_text": True})
    for rank in squashed.json():
        assert abs(rank["score"] - _sigmoid(expected[rank["index"]])) <= TOLERANCE
        assert rank["text"] == DOCUMENTS[rank["index"]]


def test_cross_encoder_directory_agrees_with_sentence_transformers(http: httpx.Client, served: Served) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(served.checkpoints["bert-reranker"]), device="cpu")
    expected = np.asarray(model.predict([(QUERY, d) for d in DOCUMENTS]))  # its own activation: sigmoid
    ranks = http.post("/rerank", json={"model": "bert-reranker", "query": QUERY, "texts": DOCUMENTS}).json()
    got = np.array([next(r["score"] for r in ranks if r["index"] == i) for i in range(len(DOCUMENTS))])
    assert np.abs(got - expected).max() <= TOLERANCE


def test_cohere_sdk_reranks_and_jina_shape_answers(served: Served, http: httpx.Client) -> None:
    import cohere

    expected = _sigmoid(_logits(served.checkpoints["xlm-roberta-reranker"], pairs=[(QUERY, d) for d in DOCUMENTS]))
    client = cohere.ClientV2(api_key="unused", base_url=served.url)
    reply = client.rerank(model="xlm-roberta-reranker", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert len(reply.results) == 3
    assert [r.relevance_score for r in reply.results] == sorted((r.relevance_score for r in reply.results),
                                                                reverse=True)
    for r in reply.results:
        assert abs(r.relevance_score - expected[r.index, 0]) <= TOLERANCE
    best = int(np.argmax(expected[:, 0]))
    assert reply.results[0].index == best
    jina = http.post("/v1/rerank", json={"model": "xlm-roberta-reranker", "query": QUERY,
                                         "documents": [{"text": d} for d in DOCUMENTS]}).json()
    assert jina["model"] == "xlm-roberta-reranker"
    assert jina["usage"]["total_tokens"] > 0
    assert jina["results"][0]["index"] == best
    assert jina["results"][0]["document"] == {"text": DOCUMENTS[best]}


# --- classify -------------------------------------------------------------------------------------------------


def test_predict_single_pair_and_batch_match_transformers(http: httpx.Client, served: Served) -> None:
    checkpoint = served.checkpoints["bert-classifier"]
    labels = [CLASSIFIER_LABELS[i] for i in range(3)]
    singles = _logits(checkpoint, texts=TEXTS)
    one = http.post("/predict", json={"model": "bert-classifier", "inputs": TEXTS[0], "raw_scores": True}).json()
    assert [p["label"] for p in one] == [labels[j] for j in np.argsort(-singles[0], kind="stable")]
    assert np.abs(np.array([p["score"] for p in one]) - np.sort(singles[0])[::-1]).max() <= TOLERANCE
    batch = http.post("/predict", json={"model": "bert-classifier", "inputs": [[t] for t in TEXTS]}).json()
    for row, logits in zip(batch, singles, strict=True):
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        for p in row:
            assert abs(p["score"] - probs[labels.index(p["label"])]) <= TOLERANCE
    pair_logits = _logits(checkpoint, pairs=[(TEXTS[0], TEXTS[1])])[0]
    pair = http.post("/predict", json={"model": "bert-classifier", "inputs": [TEXTS[0], TEXTS[1]],
                                       "raw_scores": True}).json()
    for p in pair:
        assert abs(p["score"] - pair_logits[labels.index(p["label"])]) <= TOLERANCE


# --- sparse ---------------------------------------------------------------------------------------------------


def test_embed_sparse_equals_sparse_encoder(http: httpx.Client, served: Served) -> None:
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(served.checkpoints["bert-splade"]), device="cpu")
    expected = model.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    reply = http.post("/embed_sparse", json={"model": "bert-splade", "inputs": TEXTS})
    assert reply.status_code == 200, reply.text
    for row, reference in zip(reply.json(), expected, strict=True):
        indices = np.array([e["index"] for e in row])
        values = np.array([e["value"] for e in row])
        assert (values > 0).all()  # zeros are dropped
        assert set(indices.tolist()) == set(np.flatnonzero(reference).tolist())
        assert np.abs(values - reference[indices]).max() <= TOLERANCE


# --- Cohere compact vectors -------------------------------------------------------------------------------------


def test_cohere_sdk_embed_types_match_sentence_transformers_quantization(served: Served, http: httpx.Client) -> None:
    import json

    import cohere
    from sentence_transformers.util.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key="unused", base_url=served.url)
    reply = client.embed(model="embedder", texts=TEXTS, input_type="search_document",
                         embedding_types=["float", "int8", "uint8", "binary", "ubinary"])
    floats = np.array(reply.embeddings.float_, dtype=np.float32)
    # search_document picks the same prompt as /v1/embeddings' input_type=document
    as_document = http.post("/v1/embeddings", json={"input": TEXTS, "input_type": "document"}).json()["data"]
    direct = np.array([d["embedding"] for d in as_document])
    assert np.abs(floats - direct).max() <= 1e-6
    ranges_raw = json.loads((served.artifacts["embedder"] / "manifest.json").read_text())["quantization_ranges"]
    ranges = np.array([ranges_raw["min"], ranges_raw["max"]], dtype=np.float32)
    for kind, got in (("int8", reply.embeddings.int8), ("uint8", reply.embeddings.uint8),
                      ("binary", reply.embeddings.binary), ("ubinary", reply.embeddings.ubinary)):
        expected = quantize_embeddings(floats, precision=kind, ranges=ranges)  # clips outside the ranges
        assert np.array_equal(np.array(got), expected.astype(np.int64)), kind
    short = client.embed(model="embedder", texts=TEXTS[:1], input_type="search_query", embedding_types=["float"],
                         output_dimension=16)
    assert len(short.embeddings.float_[0]) == 16


# --- all at once ----------------------------------------------------------------------------------------------


def test_64_concurrent_mixed_requests_are_all_right(served: Served, http: httpx.Client) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/embeddings", {"model": "embedder", "input": TEXTS}),
        ("/v1/embeddings", {"model": "xlmr-embedder", "input": TEXTS[:2]}),
        ("/embed", {"model": "xlmr-embedder", "inputs": TEXTS[2]}),
        ("/rerank", {"model": "modernbert-reranker", "query": QUERY, "texts": DOCUMENTS, "raw_scores": True}),
        ("/v2/rerank", {"model": "bert-reranker", "query": QUERY, "documents": DOCUMENTS}),
        ("/predict", {"model": "bert-classifier", "inputs": [[t] for t in TEXTS], "raw_scores": True}),
        ("/embed_sparse", {"model": "bert-splade", "inputs": TEXTS[:3]}),
        ("/v2/embed", {"model": "embedder", "texts": TEXTS, "embedding_types": ["int8", "float"]}),
    ]
    alone = [http.post(path, json=body).json() for path, body in calls]
    plan = [random.Random(7).randrange(len(calls)) for _ in range(64)]
    plan = [i % len(calls) if n < len(calls) else i for n, i in enumerate(plan)]  # every kind at least once

    def run(i: int) -> tuple[int, int, Any]:
        path, body = calls[i]
        with httpx.Client(base_url=served.url, timeout=60.0) as client:
            reply = client.post(path, json=body)
        return i, reply.status_code, reply.json()

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(run, plan))
    for i, status, content in results:
        assert status == 200, content
        _assert_close(content, alone[i], calls[i][0])


def _assert_close(got: Any, want: Any, where: str) -> None:
    """Equal structure; floats within 1e-5 (a batch of other rows may change the last bits); ids equal."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            if key != "id":
                _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for g, w in zip(got, want, strict=True):
            _assert_close(g, w, where)
    elif isinstance(want, float):
        assert abs(got - want) <= 1e-5, where
    else:
        assert got == want, where


# --- bad input on the new routes (../shared/RELIABILITY.md) -----------------------------------------------------

BAD_INPUTS = [
    ("/rerank", {"model": "bert-reranker", "query": "", "texts": ["d"]}, 400),
    ("/rerank", {"model": "bert-reranker", "query": "q", "texts": []}, 400),
    ("/rerank", {"model": "bert-reranker", "query": "q", "texts": ["d"] * 10_000}, 413),
    ("/rerank", {"model": "bert-reranker", "query": "long " * 500, "texts": ["d"], "truncate": False}, 422),
    ("/rerank", {"model": "bert-reranker", "query": 3, "texts": ["d"]}, 422),
    ("/rerank", {"model": "bert-reranker", "query": "q", "texts": "d"}, 422),
    ("/predict", {"model": "bert-classifier", "inputs": []}, 400),
    ("/predict", {"model": "bert-classifier", "inputs": ["a", "b", "c"]}, 422),
    ("/predict", {"model": "bert-classifier", "inputs": [["a"], ["a", "b"]]}, 422),
    ("/predict", {"model": "bert-classifier", "inputs": 5}, 422),
    ("/embed_sparse", {"model": "bert-splade", "inputs": []}, 400),
    ("/embed_sparse", {"model": "bert-splade", "inputs": "   "}, 400),
    ("/embed_sparse", {"model": "bert-splade", "inputs": "x " * 500, "truncate": False}, 422),
    ("/v2/rerank", {"model": "bert-reranker", "query": "", "documents": ["d"]}, 400),
    ("/v2/rerank", {"model": "bert-reranker", "query": "q", "documents": []}, 400),
    ("/v2/rerank", {"model": "bert-reranker", "query": "q", "documents": ["d"] * 10_000}, 413),
    ("/v2/rerank", {"model": "bert-reranker", "query": "q", "documents": [{"txt": "d"}]}, 400),
    ("/v2/rerank", {"model": "bert-reranker", "query": "q", "documents": ["d"], "top_n": 0}, 400),
    ("/v1/rerank", {"model": "bert-reranker", "query": ["q"], "documents": ["d"]}, 400),
    ("/v2/embed", {"model": "embedder", "texts": []}, 400),
    ("/v2/embed", {"model": "embedder", "texts": ["a"], "embedding_types": ["int4"]}, 400),
    ("/v2/embed", {"model": "embedder", "texts": ["a"], "output_dimension": 100_000}, 400),
    ("/v2/embed", {"model": "embedder", "texts": ["x " * 500], "truncate": "NONE"}, 400),
    ("/v2/embed", {"model": "embedder", "texts": "a"}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_INPUTS,
                         ids=[f"{i}-{p}" for i, (p, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_on_task_routes_is_a_4xx_in_the_route_shape(http: httpx.Client, path: str,
                                                              body: dict[str, Any], status: int) -> None:
    reply = http.post(path, json=body)
    content = reply.json()
    assert reply.status_code == status, (reply.status_code, content)
    if path.startswith(("/v2/", "/v1/rerank")):
        assert isinstance(content.get("message"), str)
        assert set(content) == {"id", "message"}
    else:
        assert isinstance(content.get("error"), str)
        assert "error_type" in content
    text = reply.text
    assert "long long" not in text
    assert "x x x" not in text  # the input is never echoed


@pytest.mark.slow
def test_schemathesis_on_the_task_routes_finds_no_server_error(served: Served) -> None:
    """Positive and negative cases on every new route against the several-model server; `model` is an enum of
    the served names in /openapi.json, so generated requests reach every head (and the wrong-task 400s)."""
    pytest.importorskip("schemathesis")
    from bench.fuzz import run_schemathesis

    result = run_schemathesis(served.url, max_examples=20, seed=3, workers=2, timeout_s=240,
                              path_regex=TASK_PATH_REGEX)
    assert result["returncode"] == 0, result["summary"]
    assert result["generated"] >= 200, result["summary"]
    assert result["failures"] == 0


TASK_PATH_REGEX = "^/(rerank|predict|embed_sparse|v1/rerank|v2/rerank|v2/embed)$"
