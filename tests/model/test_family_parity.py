"""Every family against its references: our encoder vs sentence-transformers (sentence vectors) and vs
transformers in eager mode (attention maps), on mixed-length texts in one padded batch.

The checkpoints are random (tests/families/builders.py) with a large init, so each family's key feature
matters: a test per family shows that switching it off breaks parity, i.e. the parity test can fail.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from model import Encoder, load_checkpoint
from model.checkpoint import LoadedCheckpoint
from tests.families.builders import FAMILIES, build_checkpoint, mixed_texts

COSINE_MIN = 0.99999
MAX_ABS = 1e-5
ATTENTION_MAX_ABS = 1e-5


@dataclasses.dataclass
class Padded:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def pad_batch(directory: Path, texts: list[str], max_len: int) -> Padded:
    """Tokenize with tokenizer.json and pad on the side tokenizer_config.json names, as the server does."""
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    left = config.get("padding_side", "right") == "left"
    pad = tok.token_to_id(str(config.get("pad_token", ""))) or 0
    encodings = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(texts), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        cols = slice(width - len(enc.ids), width) if left else slice(0, len(enc.ids))
        ids[row, cols] = enc.ids
        mask[row, cols] = 1
    assert len({len(e.ids) for e in encodings}) > 3, "the batch must mix lengths"
    return Padded(torch.from_numpy(ids), torch.from_numpy(mask))


def st_vectors(directory: Path, texts: list[str], **kwargs: object) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu")
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, **kwargs)


def our_vectors(checkpoint: LoadedCheckpoint, batch: Padded, encoder: Encoder | None = None) -> np.ndarray:
    with torch.no_grad():
        out = (encoder or checkpoint.encoder)(batch.input_ids, batch.attention_mask)
    vectors = out.sentence_embedding.numpy()
    if checkpoint.pooling.normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def test_sentence_vectors_equal_sentence_transformers(family_dir: Path) -> None:
    checkpoint = load_checkpoint(family_dir)
    texts = mixed_texts()
    ours = our_vectors(checkpoint, pad_batch(family_dir, texts, checkpoint.pooling.max_seq_length))
    reference = st_vectors(family_dir, texts)
    assert cosines(ours, reference).min() >= COSINE_MIN
    assert np.abs(ours - reference).max() <= MAX_ABS


def test_attentions_and_hidden_states_equal_transformers_eager(family_dir: Path) -> None:
    from transformers import AutoModel

    checkpoint = load_checkpoint(family_dir)
    batch = pad_batch(family_dir, mixed_texts(), checkpoint.pooling.max_seq_length)
    reference = AutoModel.from_pretrained(str(family_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        ours = checkpoint.encoder(batch.input_ids, batch.attention_mask)
        theirs = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    want = torch.stack(theirs.attentions)  # (L, B, H, T, T): one map per query head, GQA included
    assert ours.attentions.shape == want.shape
    real = batch.attention_mask.bool()
    # Rows of real query tokens; every key column, so probability on a padded or hidden key must agree too.
    got_rows = ours.attentions.permute(1, 3, 0, 2, 4)[real]
    want_rows = want.permute(1, 3, 0, 2, 4)[real]
    assert (got_rows - want_rows).abs().max().item() <= ATTENTION_MAX_ABS
    hidden_diff = (ours.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max().item()
    assert hidden_diff <= 1e-4


def _without_key_feature(checkpoint: LoadedCheckpoint) -> Encoder:
    """The same weights with the family's defining step switched off."""
    config, state = checkpoint.config, dict(checkpoint.encoder.state_dict())
    family = checkpoint.family.name
    if family == "distilbert":
        state["embeddings.position.weight"] = torch.zeros_like(state["embeddings.position.weight"])
    elif family == "xlm-roberta":
        config = dataclasses.replace(config, position_ids="arange")  # BERT's 0..T-1 instead of RoBERTa's ids
    elif family == "mpnet":
        state["relative_bias.bias.weight"] = torch.zeros_like(state["relative_bias.bias.weight"])
    elif family == "modernbert":
        config = dataclasses.replace(config, local_window=0)  # every layer global
    elif family == "qwen3":
        config = dataclasses.replace(config, causal=False)
    else:
        raise AssertionError(family)
    encoder = Encoder(config, pooling=checkpoint.pooling)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def test_switching_off_the_key_feature_breaks_parity(family_dir: Path) -> None:
    checkpoint = load_checkpoint(family_dir)
    texts = mixed_texts()
    batch = pad_batch(family_dir, texts, checkpoint.pooling.max_seq_length)
    broken = our_vectors(checkpoint, batch, _without_key_feature(checkpoint))
    assert cosines(broken, st_vectors(family_dir, texts)).min() < 0.999


@pytest.mark.parametrize(("family", "pooling", "dense"), [
    ("distilbert", "weightedmean", True),
    ("modernbert", "lasttoken", False),
    ("xlm-roberta", "mean_sqrt_len_tokens", True),
    ("mpnet", "max", False),
    ("qwen3", "weightedmean", False),
])
def test_pooling_modes_and_dense_equal_sentence_transformers(family: str, pooling: str, dense: bool,
                                                            tmp_path: Path) -> None:
    directory = build_checkpoint(family, tmp_path / family, pooling=pooling, dense=dense)
    checkpoint = load_checkpoint(directory)
    assert checkpoint.pooling.mode == pooling
    assert bool(checkpoint.pooling.dense) == dense
    texts = mixed_texts()
    ours = our_vectors(checkpoint, pad_batch(directory, texts, checkpoint.pooling.max_seq_length))
    reference = st_vectors(directory, texts)
    assert ours.shape == reference.shape
    assert cosines(ours, reference).min() >= COSINE_MIN
    assert np.abs(ours - reference).max() <= MAX_ABS
