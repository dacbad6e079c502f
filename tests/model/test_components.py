"""Each variant of each step on its own, against its definition or transformers' implementation of it."""

from __future__ import annotations

import math

import pytest
import torch

from model import DenseConfig, EncoderConfig, PoolingConfig
from model.encoder import Dense, first_token_index, last_token_index, pool, without_prompt
from model.layers import (
    FeedForward,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    make_norm,
    padding_offset_positions,
    relative_position_buckets,
    visibility_mask_bias,
)


def test_roberta_positions_start_after_padding_and_skip_it() -> None:
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 7, 2, 1]])  # pad = 1, on either side
    assert padding_offset_positions(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 1]]


def test_relative_buckets_equal_transformers_mpnet() -> None:
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    seq = 300
    positions = torch.arange(seq)
    relative = positions[None, :] - positions[:, None]
    theirs = MPNetEncoder.relative_position_bucket(relative, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_buckets(seq, 32, 128), theirs)
    # Both halves are used; "key after query" never reaches distance 0, so 31 of the 32 buckets occur.
    assert relative_position_buckets(seq, 32, 128).unique().numel() == 31


def test_visibility_masks() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    minimum = torch.finfo(torch.float32).min
    causal = visibility_mask_bias(mask, torch.float32, causal=True, window=0)
    assert causal.shape == (2, 1, 6, 6)
    assert causal[0, 0, 2].tolist() == [0, 0, 0, minimum, minimum, minimum]
    local = visibility_mask_bias(mask, torch.float32, causal=False, window=4)  # |i - j| <= 2
    assert local[0, 0, 0].tolist() == [0, 0, 0, minimum, minimum, minimum]
    assert local[0, 0, 3].tolist() == [minimum, 0, 0, 0, 0, minimum]  # key 0 too far, key 5 padding
    # A query row that sees no key at all (a left pad under causal masking) stays finite: uniform, never NaN.
    probs = torch.softmax(torch.zeros(2, 1, 6, 6) + causal, dim=-1)
    assert torch.isfinite(probs).all()
    assert torch.isfinite(causal).all()


def test_rotary_scores_depend_only_on_distance() -> None:
    torch.manual_seed(0)
    rotary = RotaryEmbedding(head_dim=8, theta=10000.0)
    cos, sin = rotary(12, torch.device("cpu"))
    q, k = torch.randn(8), torch.randn(8)
    rotated_q = apply_rotary(q.expand(1, 1, 12, 8), cos, sin)[0, 0]  # the same vector at every position
    rotated_k = apply_rotary(k.expand(1, 1, 12, 8), cos, sin)[0, 0]
    assert torch.allclose(rotated_q[3] @ rotated_k[1], rotated_q[9] @ rotated_k[7], atol=1e-5)
    assert not torch.allclose(rotated_q[3] @ rotated_k[1], rotated_q[3] @ rotated_k[2], atol=1e-3)
    assert torch.allclose(rotated_q[0], q)  # position 0 is not turned


def test_rotary_equals_transformers() -> None:
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    cos, sin = RotaryEmbedding(16, 1e6)(10, torch.device("cpu"))
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rotary(q, cos, sin), want_q, atol=1e-6)
    assert torch.allclose(apply_rotary(k, cos, sin), want_k, atol=1e-6)


def test_rmsnorm_equals_transformers() -> None:
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    torch.manual_seed(2)
    ours, theirs = RMSNorm(16, 1e-6), Qwen3RMSNorm(16, eps=1e-6)
    weight = torch.randn(16)
    ours.weight.data.copy_(weight)
    theirs.weight.data.copy_(weight)
    x = torch.randn(3, 5, 16) * 4
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_layernorm_without_bias() -> None:
    config = EncoderConfig(vocab_size=10, hidden_size=8, num_heads=2, intermediate_size=16, norm_bias=False)
    assert make_norm(config).bias is None
    assert isinstance(make_norm(EncoderConfig(vocab_size=10, hidden_size=8, num_heads=2, norm="rmsnorm")), RMSNorm)


def test_grouped_query_attention_shares_kv_heads() -> None:
    from transformers.models.qwen3.modeling_qwen3 import repeat_kv

    config = EncoderConfig(vocab_size=10, hidden_size=32, num_heads=4, num_kv_heads=2, attention_head_dim=8)
    attention = MultiHeadSelfAttention(config)
    assert attention.key.out_features == 16
    assert attention.query.out_features == 32
    kv = torch.randn(2, 2, 5, 8)
    assert torch.equal(attention._repeat_kv(kv), repeat_kv(kv, 2))
    out, probs = attention(torch.randn(2, 5, 32), torch.zeros(2, 1, 1, 5))
    assert out.shape == (2, 5, 32)
    assert probs.shape == (2, 4, 5, 5)  # one map per query head


def test_gated_feed_forward() -> None:
    torch.manual_seed(3)
    config = EncoderConfig(vocab_size=10, hidden_size=8, num_heads=2, intermediate_size=12, feed_forward="geglu",
                           mlp_bias=False)
    ffn = FeedForward(config)
    assert ffn.gate is not None
    assert ffn.up.bias is None
    x = torch.randn(2, 3, 8)
    want = ffn.down(torch.nn.functional.gelu(ffn.gate(x)) * ffn.up(x))
    assert torch.allclose(ffn(x), want)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_heads": 4, "num_kv_heads": 3, "hidden_size": 32}, "not a multiple of num_kv_heads"),
    ({"position_embedding": "rotary", "hidden_size": 36, "num_heads": 4}, "even head dimension"),  # d_k = 9
    ({"position_ids": "padding_offset", "position_embedding": "rotary"}, "indexes a learned position table"),
    ({"norm": "batchnorm"}, "unsupported norm"),
    ({"feed_forward": "moe"}, "unsupported feed_forward"),
])
def test_bad_variant_combinations_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EncoderConfig(vocab_size=50, **kwargs)


def _hidden() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(2, 5, 3)


def test_pooling_finds_first_and_last_real_tokens_on_either_side() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert first_token_index(left).tolist() == [2, 0]
    assert last_token_index(right).tolist() == [2, 4]
    hidden = _hidden()
    assert torch.equal(pool(hidden, left, "cls"), hidden[[0, 1], [2, 0]])
    assert torch.equal(pool(hidden, right, "lasttoken"), hidden[[0, 1], [2, 4]])


def test_weightedmean_counts_from_the_first_real_token() -> None:
    hidden = _hidden()
    right = torch.tensor([[1, 1, 1, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1]])
    shifted = torch.roll(hidden[:1], shifts=2, dims=1)  # the same three tokens, padded on the left
    want = (hidden[0, :3] * torch.tensor([1.0, 2.0, 3.0])[:, None]).sum(0) / 6
    assert torch.allclose(pool(hidden[:1], right, "weightedmean")[0], want, atol=1e-6)
    assert torch.allclose(pool(shifted, left, "weightedmean")[0], want, atol=1e-6)


def test_mean_sqrt_len_and_max() -> None:
    hidden = _hidden()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean_sqrt_len_tokens")[0], hidden[0, :3].sum(0) / math.sqrt(3))
    assert torch.equal(pool(hidden, mask, "max")[0], hidden[0, :3].max(0).values)


def test_leaving_the_prompt_out_of_the_pooling_mask() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    assert without_prompt(mask, torch.tensor([2, 2])).tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_dense_module() -> None:
    dense = Dense(DenseConfig(in_features=3, out_features=2, activation="tanh"))
    x = torch.randn(4, 3)
    assert torch.allclose(dense(x), torch.tanh(dense.linear(x)))
    chain = PoolingConfig(mode="cls", dense=(DenseConfig(3, 2),)).chain()
    assert [step["type"] for step in chain] == ["Pooling", "Dense", "Normalize"]
