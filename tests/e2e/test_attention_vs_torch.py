"""/v1/encode over real HTTP against our own PyTorch encoder loaded from the same checkpoint.

The served attention comes from the exported ONNX graph through tokenizer, batcher and runner; the reference is
model/ run directly on the token ids the server reports. Several inputs of different lengths share one request,
so padding must be excluded per input.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

SENTENCES = ["She said the cat was tired.", "Attention maps show which token looks at which.", "short"]


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint_dir: Path):
    from model import load_checkpoint

    return load_checkpoint(tiny_checkpoint_dir).encoder


def _torch_attention(encoder, ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = encoder(input_ids, torch.ones_like(input_ids), torch.zeros_like(input_ids))
    vector = torch.nn.functional.normalize(out.sentence_embedding, dim=-1)[0].numpy()
    return out.attentions[:, 0].numpy(), vector, out.last_hidden_state[0].numpy()  # (L, H, T, T)


def test_attention_and_vectors_equal_pytorch(client: httpx.Client, encoder) -> None:
    body = {"input": SENTENCES, "token_embeddings": True, "attention": {"format": "float"}}
    response = client.post("/v1/encode", json=body)
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert len({r["token_count"] for r in rows}) == 3  # different lengths shared the batch
    for row in rows:
        ids = [t["id"] for t in row["tokens"]]
        want_attention, want_vector, want_tokens = _torch_attention(encoder, ids)
        got = np.asarray(row["attention"]["data"], dtype=np.float32)
        assert got.shape == want_attention.shape == tuple(row["attention"]["shape"])
        assert np.abs(got - want_attention).max() <= 1e-4
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-4)
        assert np.abs(np.asarray(row["embedding"]) - want_vector).max() <= 1e-4
        assert np.abs(np.asarray(row["token_embeddings"]) - want_tokens).max() <= 1e-4


def test_layer_head_selection_and_base64_float32_round_trip(client: httpx.Client) -> None:
    full = client.post("/v1/encode", json={"input": SENTENCES[0], "attention": {}}).json()["data"][0]["attention"]
    maps = np.asarray(full["data"], dtype=np.float32)
    layers, heads = [1, 0], [3, 1]
    selection = {"layers": layers, "heads": heads, "format": "base64", "dtype": "float32"}
    part = client.post("/v1/encode", json={"input": SENTENCES[0], "attention": selection}).json()["data"][0]
    att = part["attention"]
    assert att["layers"] == layers
    assert att["heads"] == heads
    assert att["dtype"] == "float32"
    decoded = np.frombuffer(base64.b64decode(att["data"]), dtype="<f4").reshape(att["shape"])
    np.testing.assert_array_equal(decoded, maps[layers][:, heads])  # bit-exact: same graph, same input


def test_encode_embedding_equals_openai_embedding(client: httpx.Client) -> None:
    model = client.get("/v1/models").json()["data"][0]["id"]
    encoded = client.post("/v1/encode", json={"input": SENTENCES}).json()["data"]
    openai = client.post("/v1/embeddings", json={"input": SENTENCES, "model": model}).json()["data"]
    for a, b in zip(encoded, openai, strict=True):
        assert np.abs(np.asarray(a["embedding"]) - np.asarray(b["embedding"])).max() <= 1e-5
