"""Our encoder vs the reference implementations on the real all-MiniLM-L6-v2 checkpoint (fp32, CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.parity_corpus import parity_sentences

pytestmark = pytest.mark.real_model
log = logging.getLogger(__name__)

COSINE_MIN = 0.99999
MAX_ABS = 1e-5
ATTENTION_MAX_ABS = 1e-5


@pytest.fixture(scope="module")
def loaded(real_checkpoint_dir: Path):
    from model import load_checkpoint

    return load_checkpoint(real_checkpoint_dir)


def _tokenize(tokenizer, sentences: list[str], max_len: int) -> dict[str, torch.Tensor]:
    return tokenizer(sentences, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def test_sentence_embeddings_match_sentence_transformers(loaded, real_checkpoint_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    sentences = parity_sentences(520)
    reference = SentenceTransformer(str(real_checkpoint_dir), device="cpu")
    assert reference.max_seq_length == loaded.pooling.max_seq_length == 256
    expected = reference.encode(sentences, batch_size=32, convert_to_numpy=True)  # normalised (2_Normalize)
    ours = []
    order = np.argsort([len(s) for s in sentences])  # length-sorted batches, as a server would run them
    with torch.no_grad():
        for start in range(0, len(sentences), 32):
            idx = order[start:start + 32]
            batch = _tokenize(reference.tokenizer, [sentences[i] for i in idx], 256)
            out = loaded.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            vectors = torch.nn.functional.normalize(out.sentence_embedding, dim=-1).numpy()
            ours.extend(zip(idx, vectors, strict=True))
    got = np.stack([v for _, v in sorted(ours, key=lambda pair: pair[0])])
    cosine = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    log.info("parity vs sentence-transformers over %d sentences: min cosine %.8f, max abs diff %.2e",
             len(sentences), cosine.min(), np.abs(got - expected).max())
    assert len(sentences) >= 500
    assert cosine.min() >= COSINE_MIN, f"min cosine {cosine.min()}"
    assert np.abs(got - expected).max() <= MAX_ABS, f"max abs diff {np.abs(got - expected).max()}"


def test_attention_probabilities_match_transformers(loaded, real_checkpoint_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    hf = AutoModel.from_pretrained(str(real_checkpoint_dir), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(real_checkpoint_dir))
    sentences = parity_sentences(96, seed=99)
    worst = worst_hidden = 0.0
    with torch.no_grad():
        for start in range(0, len(sentences), 8):
            batch = _tokenize(tokenizer, sentences[start:start + 8], 256)
            want = hf(**batch, output_attentions=True)
            got = loaded.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            real = batch["attention_mask"].bool()  # (B, T): compare rows of real query tokens
            for layer, reference in enumerate(want.attentions):  # (B, H, T, T)
                diff = (got.attentions[layer] - reference).abs().permute(0, 2, 1, 3)[real]  # (N, H, T)
                worst = max(worst, diff.max().item())
            worst_hidden = max(worst_hidden, (got.last_hidden_state - want.last_hidden_state).abs()[real].max().item())
    log.info("attention vs transformers: max abs diff %.2e; hidden %.2e", worst, worst_hidden)
    assert got.attentions.shape[0] == 6
    assert got.attentions.shape[2] == 12
    assert worst <= ATTENTION_MAX_ABS, f"attention max abs diff {worst}"
    assert worst_hidden <= 1e-4, f"hidden-state max abs diff {worst_hidden}"
