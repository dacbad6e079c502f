"""The shipped artifacts of the real all-MiniLM-L6-v2: ONNX vs our PyTorch at served shapes, int8 quality."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bench.parity_corpus import parity_sentences
from tests.export.onnx_helpers import padded_batch, run, session, torch_outputs

pytestmark = pytest.mark.real_model
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def encoder(real_checkpoint_dir: Path):
    from model import load_checkpoint

    return load_checkpoint(real_checkpoint_dir).encoder


def _batches(artifact: Path, n: int, size: int):
    sentences = parity_sentences(n, seed=77)
    sentences.sort(key=len)
    for start in range(0, n, size):
        yield padded_batch(artifact / "tokenizer.json", sentences[start:start + size], 256)


def test_fp32_and_attention_graphs_match_torch(real_artifact_dir: Path, encoder) -> None:
    graphs = {name: session(real_artifact_dir / name) for name in ("model.onnx", "model_fused.onnx")}
    exact = session(real_artifact_dir / "model_attention.onnx")
    worst = dict.fromkeys(graphs, 0.0)
    worst_attention = 0.0
    for feeds in _batches(real_artifact_dir, 60, 12):
        want = torch_outputs(encoder, feeds)
        real = feeds["attention_mask"].astype(bool)
        for name, graph in graphs.items():
            got = run(graph, feeds)
            worst[name] = max(worst[name],
                              float(np.abs(got["sentence_embedding"] - want.sentence_embedding.numpy()).max()),
                              float(np.abs(got["last_hidden_state"] - want.last_hidden_state.numpy())[real].max()))
        att = run(exact, feeds)["attentions"].transpose(1, 3, 0, 2, 4)[real]
        ref = want.attentions.numpy().transpose(1, 3, 0, 2, 4)[real]
        worst_attention = max(worst_attention, float(np.abs(att - ref).max()))
    log.info("ONNX vs torch max abs: fp32 %.2e, fp32 fused %.2e, attention graph %.2e", worst["model.onnx"],
             worst["model_fused.onnx"], worst_attention)
    assert max(worst.values()) <= 1e-4
    assert worst_attention <= 1e-5


def test_int8_mean_cosine_at_least_0_99(real_artifact_dir: Path, encoder) -> None:
    int8 = session(real_artifact_dir / "model_int8.onnx")
    cosines = []
    for feeds in _batches(real_artifact_dir, 200, 25):
        ref = torch_outputs(encoder, feeds).sentence_embedding.numpy()
        got = run(int8, feeds)["sentence_embedding"]
        cosines.extend((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))
    log.info("int8 vs fp32 over %d sentences: mean cosine %.4f, min %.4f", len(cosines), np.mean(cosines),
             np.min(cosines))
    assert np.mean(cosines) >= 0.99
