"""A second, randomly initialised BERT of another shape, loaded through the same checkpoint path.

Compared with transformers (hidden states, attentions) and sentence-transformers (pooled vectors) for each
pooling mode, so a loader that only works for MiniLM's shape would fail here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.parity_corpus import parity_sentences
from tests.tiny_checkpoint import make_tiny_checkpoint

SHAPE = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 8, "intermediate_size": 128}


@pytest.fixture(scope="module", params=["mean", "cls", "max"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{request.param}"), seed=7,
                                pooling=request.param, max_seq_length=64, **SHAPE)


def test_matches_transformers_and_sentence_transformers(checkpoint: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from model import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    assert loaded.config.hidden_size == 64
    assert loaded.config.num_layers == 3
    assert loaded.config.num_heads == 8
    hf = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    st = SentenceTransformer(str(checkpoint), device="cpu")
    sentences = parity_sentences(40, seed=5)
    batch = st.tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        want = hf(**batch, output_attentions=True)
        got = loaded.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (got.last_hidden_state - want.last_hidden_state).abs()[real].max() <= 1e-5
    for layer, reference in enumerate(want.attentions):
        assert (got.attentions[layer] - reference).abs().permute(0, 2, 1, 3)[real].max() <= 1e-5
    expected = st.encode(sentences, convert_to_numpy=True, batch_size=8)
    ours = torch.nn.functional.normalize(got.sentence_embedding, dim=-1).numpy()
    assert np.abs(ours - expected).max() <= 1e-5


def test_attention_rows_sum_to_one_and_padding_gets_none(checkpoint: Path) -> None:
    from model import load_checkpoint

    encoder = load_checkpoint(checkpoint).encoder
    ids = torch.tensor([[101, 2000, 2001, 2002, 102], [101, 2003, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        probs = encoder(ids, mask, torch.zeros_like(ids)).attentions  # (L, B, H, T, T)
    assert probs.shape == (3, 2, 8, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 8, 5), atol=1e-6, rtol=0)
    assert probs[:, 1, :, :, 3:].abs().max() == 0  # padded keys get exactly zero weight


def test_batching_does_not_change_a_sentence(checkpoint: Path) -> None:
    """The same sentence alone and next to a long neighbour gives the same vector (padding is masked)."""
    from model import load_checkpoint

    encoder = load_checkpoint(checkpoint).encoder
    short = torch.tensor([[101, 2000, 2001, 102]])
    long = torch.tensor([[101, *range(2000, 2040), 102]])
    padded = torch.zeros(2, long.shape[1], dtype=torch.long)
    padded[0, :4], padded[1] = short[0], long[0]
    with torch.no_grad():
        alone = encoder(short, torch.ones_like(short), torch.zeros_like(short)).sentence_embedding
        together = encoder(padded, (padded != 0).long(), torch.zeros_like(padded)).sentence_embedding
    assert (alone[0] - together[0]).abs().max() <= 1e-5
