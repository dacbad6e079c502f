"""Every family served end to end: random checkpoint -> `run_export` -> a real server over HTTP, equal to
sentence-transformers, with attention maps that show the family's visibility pattern.

Qwen3 also covers left padding, its EOS post-processor, a prompt picked by `input_type`, and GQA (one map per
query head); ModernBERT a local window shorter than the inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.families.builders import FAMILIES, build_checkpoint, mixed_texts
from tests.server_process import ServerProcess

COSINE_MIN = 0.99999


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def served(family: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, httpx.Client]]:
    from export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp(f"served-{family}")
    checkpoint = build_checkpoint(family, root / "checkpoint")
    artifact = run_export(ExportOptions(model_dir=checkpoint, out_dir=root / "artifact", model_name=family,
                                        variants=False))
    server = ServerProcess(artifact, root / "server.log", EMBED_ATTENTION_BUDGET="10000000",
                           EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            yield checkpoint, artifact, client
    finally:
        server.stop_and_check()


def _reference(checkpoint: Path, texts: list[str], **kwargs: object) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(checkpoint), device="cpu")
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, **kwargs)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _embed(client: httpx.Client, texts: list[str], **extra: object) -> np.ndarray:
    reply = client.post("/v1/embeddings", json={"input": texts, **extra})
    assert reply.status_code == 200, reply.text
    return np.array([row["embedding"] for row in reply.json()["data"]], dtype=np.float32)


def test_manifest_describes_the_family(family: str, served: tuple[Path, Path, httpx.Client]) -> None:
    _, artifact, client = served
    manifest = json.loads((artifact / "manifest.json").read_text())
    inputs = [i["name"] for i in manifest["inputs"]]
    assert inputs == ["input_ids", "attention_mask"]  # none of these families has segments
    assert manifest["padding_side"] == ("left" if family == "qwen3" else "right")
    assert {"pad", "unk"} <= set(manifest["special_tokens"]) or family == "qwen3"
    assert manifest["attention_pattern"]["causal"] == (family == "qwen3")
    assert bool(manifest["attention_pattern"]["local_layers"]) == (family == "modernbert")
    # ONNX vs our PyTorch at the validation batches' shapes (5, 4 and 7 rows, unlike the export's 3 x 11).
    for name in ("fp32", "fp32-fused", "attention"):
        parity = manifest["graphs"][name]["parity"]
        assert max(parity["max_abs_diff_hidden_vs_torch"], parity["max_abs_diff_sentence_vs_torch"]) <= 1e-4
    assert manifest["graphs"]["attention"]["parity"]["max_abs_diff_attentions_vs_torch"] <= 1e-5
    info = client.get("/info").json()
    assert info["family"] == family
    assert info["padding_side"] == manifest["padding_side"]


def test_served_vectors_equal_sentence_transformers(served: tuple[Path, Path, httpx.Client]) -> None:
    checkpoint, _, client = served
    texts = mixed_texts()
    ours = _embed(client, texts)
    reference = _reference(checkpoint, texts)
    assert _cosines(ours, reference).min() >= COSINE_MIN
    assert np.abs(ours - reference).max() <= 1e-4


def test_input_type_query_applies_the_query_prompt(family: str, served: tuple[Path, Path, httpx.Client]) -> None:
    if family != "qwen3":
        pytest.skip("only the qwen3 checkpoint has a query prompt")
    checkpoint, _, client = served
    texts = mixed_texts()[:6]
    with_prompt = _reference(checkpoint, texts, prompt_name="query")
    assert _cosines(_embed(client, texts, input_type="query"), with_prompt).min() >= COSINE_MIN
    assert _cosines(_embed(client, texts, prompt_name="query"), with_prompt).min() >= COSINE_MIN
    # The model has no document prompt: documents are embedded as they are.
    assert _cosines(_embed(client, texts, input_type="document"), _reference(checkpoint, texts)).min() >= COSINE_MIN
    both = client.post("/v1/embeddings", json={"input": texts, "input_type": "query", "prompt_name": "query"})
    assert both.status_code == 422
    assert both.json()["error"]["param"] == "input_type"


def test_attention_maps_show_the_visibility_pattern(family: str, served: tuple[Path, Path, httpx.Client]) -> None:
    _, artifact, client = served
    manifest = json.loads((artifact / "manifest.json").read_text())
    pattern = manifest["attention_pattern"]
    text = mixed_texts()[4]
    reply = client.post("/v1/encode", json={"input": text, "attention": {"layers": "all", "heads": "all"}})
    assert reply.status_code == 200, reply.text
    row = reply.json()["data"][0]
    maps = np.array(row["attention"]["data"], dtype=np.float32)  # (L, H, T, T)
    n = len(row["tokens"])
    assert maps.shape == (manifest["config"]["num_layers"], manifest["config"]["num_heads"], n, n)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    queries, keys = np.indices((n, n))
    if pattern["causal"]:
        assert np.all(maps[..., keys > queries] == 0)  # lower-triangular: no query sees a later key
        assert n > 8
    for layer in pattern["local_layers"]:
        outside = np.abs(queries - keys) > pattern["local_window"] // 2
        assert outside.any()
        assert np.all(maps[layer][..., outside] == 0)
    if family == "qwen3":
        assert pattern["num_kv_heads"] < manifest["config"]["num_heads"]  # GQA, still one map per query head
    if family == "qwen3":
        assert row["tokens"][-1]["special"]  # the EOS the post-processor appends, the token pooled


