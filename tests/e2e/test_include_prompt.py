"""include_prompt=false (INSTRUCTOR-style pooling): the prompt steers attention but is left out of the mean.

The graph takes a prompt_length input and the server feeds the prompt's token count (sentence-transformers'
count); on either padding side the served vector equals sentence-transformers'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.families.builders import build_checkpoint, mixed_texts
from tests.server_process import ServerProcess

PROMPTS = {"query": "Represent the question for retrieval: ", "document": "passage: "}


@pytest.fixture(scope="module", params=["mpnet", "qwen3"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Path, Path, httpx.Client]]:
    from export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp(f"no-prompt-{request.param}")
    checkpoint = build_checkpoint(request.param, root / "checkpoint", pooling="mean", prompts=PROMPTS)
    pooling_path = checkpoint / "1_Pooling" / "config.json"
    pooling = json.loads(pooling_path.read_text())
    pooling["include_prompt"] = False
    pooling_path.write_text(json.dumps(pooling))
    artifact = run_export(ExportOptions(model_dir=checkpoint, out_dir=root / "artifact", model_name="np",
                                        variants=False))
    server = ServerProcess(artifact, root / "server.log", EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            yield checkpoint, artifact, client
    finally:
        server.stop_and_check()


def _embed(client: httpx.Client, texts: list[str], **extra: object) -> np.ndarray:
    reply = client.post("/v1/embeddings", json={"input": texts, **extra})
    assert reply.status_code == 200, reply.text
    return np.array([row["embedding"] for row in reply.json()["data"]], dtype=np.float32)


def test_prompt_is_left_out_of_pooling_as_sentence_transformers(served: tuple[Path, Path, httpx.Client]) -> None:
    from sentence_transformers import SentenceTransformer

    checkpoint, artifact, client = served
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]][-1] == "prompt_length"
    assert manifest["pooling_chain"][0]["include_prompt"] is False
    model = SentenceTransformer(str(checkpoint), device="cpu")
    texts = mixed_texts()
    for prompt_name in ("query", "document"):
        reference = model.encode(texts, prompt_name=prompt_name, batch_size=len(texts), convert_to_numpy=True)
        ours = _embed(client, texts, input_type=prompt_name)
        cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.99999, prompt_name
    # Without a prompt every token is pooled, as sentence-transformers.
    plain = model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    assert np.abs(_embed(client, texts) - plain).max() <= 1e-4
