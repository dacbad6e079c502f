"""The building blocks on their own: config validation, attention maths, both position encodings, pre-norm."""

from __future__ import annotations

import math

import pytest
import torch

from model import Encoder, EncoderConfig
from model.layers import attention, padding_mask_bias, sinusoidal_table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"num_layers": 0}, "num_layers must be positive"),
        ({"position_embedding": "sinusoidal", "hidden_size": 33, "num_heads": 3}, "need an even hidden_size"),
        ({"pad_token_id": 100}, "outside the vocabulary"),
        ({"hidden_act": "swish"}, "unsupported hidden_act"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EncoderConfig(vocab_size=50, **kwargs)


def test_attention_is_softmax_of_scaled_dot_products() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    context, probs = attention(q, k, v, padding_mask_bias(mask, torch.float32))
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    scores[1, :, :, 3:] = float("-inf")
    expected = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(context, expected @ v)


def test_sinusoidal_table_follows_the_formula() -> None:
    table = sinusoidal_table(10, 8)
    assert table[3, 0] == pytest.approx(math.sin(3.0))
    assert table[3, 1] == pytest.approx(math.cos(3.0))
    assert table[5, 2] == pytest.approx(math.sin(5 / 10000 ** (2 / 8)))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_from_scratch_configs_run_and_mask_padding(norm_first: bool, positions: str) -> None:
    torch.manual_seed(1)
    config = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                           max_position_embeddings=64, position_embedding=positions, norm_first=norm_first)
    encoder = Encoder(config, pooling="mean").eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        out = encoder(ids, (ids != 0).long(), torch.zeros_like(ids))
        alone = encoder(ids[:1, :3], torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    assert out.last_hidden_state.shape == (2, 5, 32)
    assert out.sentence_embedding.shape == (2, 32)
    assert out.attentions.shape == (2, 2, 4, 5, 5)
    assert torch.isfinite(out.sentence_embedding).all()
    torch.testing.assert_close(out.sentence_embedding[0], alone.sentence_embedding[0], atol=1e-5, rtol=0)
