"""The encoder's building blocks, one idea each, in the order the architecture is usually explained.

Every family we load is these same steps in a different variant: where position enters (a learned table,
RoBERTa's padding-aware ids, a relative bias on the scores, rotary Q/K), which keys a query may see
(padding, a causal triangle, a local window), how many K/V heads there are, which norm and which feed-forward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.config import EncoderConfig


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask_bias: Tensor, score_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, returning the context and the probabilities.

    q, k, v: (B, H, T, d_k); mask_bias: (B, 1, 1, T) or (B, 1, T, T), 0 where a query may see a key and a large
    negative number where not; score_bias: (1, H, T, T) learned relative-position bias (MPNet) or None.
    A pure function: the probabilities are returned, never stored on a module (shared state under concurrency,
    and invisible to an ONNX export).
    """
    d_k = q.size(-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d_k)  # (B, H, T, T)
    if score_bias is not None:
        scores = scores + score_bias  # how far apart two tokens are, learned per head
    scores = scores + mask_bias  # keys a query may not see -> ~-inf before softmax
    probs = torch.softmax(scores, dim=-1)  # (B, H, T, T); each row sums to 1 over visible keys
    context = torch.matmul(probs, v)  # (B, H, T, d_k)
    return context, probs


def padding_mask_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias: 0 where real, dtype's minimum where padding."""
    mask = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - mask) * torch.finfo(dtype).min


def visibility_mask_bias(attention_mask: Tensor, dtype: torch.dtype, *, causal: bool, window: int) -> Tensor:
    """Padding combined with a causal triangle and/or a local window -> (B, 1, T, T) additive bias.

    causal: query i sees keys j <= i. window (ModernBERT): query i sees keys with |i - j| <= window // 2.
    Built from booleans and turned into a bias once, so a key hidden twice is still one finite minimum (adding
    two minima would overflow to -inf, and a row of -inf is NaN after softmax).
    """
    seq = attention_mask.size(1)
    positions = torch.arange(seq, device=attention_mask.device)
    distance = positions[None, :] - positions[:, None]  # (T, T): key index - query index
    visible = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
    if causal:
        visible = visible & (distance <= 0)[None, None]  # (B, 1, T, T)
    if window:
        visible = visible & (distance.abs() <= window // 2)[None, None]
    visible = visible.expand(-1, -1, seq, -1)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(visible, zero, torch.finfo(dtype).min)  # (B, 1, T, T)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019): LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def make_norm(config: EncoderConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.norm_bias)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a 90° turn of every (x1_i, x2_i) pair."""
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoFormer's rotary positions: q and k of the token at position p are turned by angle p * theta^(-2i/d).

    The dot product of two turned vectors depends only on their distance, so position enters attention
    without any table. Positions are 0..T-1 of the padded row, as Hugging Face computes them when no
    position_ids are given (under left padding too).
    """

    inv_freq: Tensor  # (d_k/2,) buffer

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (d_k/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq: int, device: torch.device) -> tuple[Tensor, Tensor]:
        positions = torch.arange(seq, device=device, dtype=torch.float32)
        angles = positions[:, None] * self.inv_freq[None, :]  # (T, d_k/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, d_k): the same angle for both halves of a pair
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, T, d_k); cos, sin: (T, d_k)."""
    return x * cos + rotate_half(x) * sin


def relative_position_buckets(seq: int, num_buckets: int, max_distance: int) -> Tensor:
    """(T, T) bucket of each (query, key) distance, as T5/MPNet: one bucket per distance up to a few tokens,
    then logarithmically wider buckets up to max_distance, and separate halves for keys before and after."""
    positions = torch.arange(seq)
    relative = positions[None, :] - positions[:, None]  # key - query
    half = num_buckets // 2
    n = -relative
    bucket = (n < 0).long() * half
    n = n.abs()
    max_exact = half // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return bucket + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """MPNet's learned per-head bias for each relative-distance bucket, added to every layer's scores.

    The (T, T) bucket table depends only on T, so it is computed once for the longest sequence and sliced.
    """

    buckets: Tensor  # (T_max, T_max) int64 buffer

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.bias = nn.Embedding(config.relative_attention_buckets, config.num_heads)
        buckets = relative_position_buckets(
            config.max_position_embeddings, config.relative_attention_buckets, config.relative_attention_max_distance
        )
        self.register_buffer("buckets", buckets, persistent=False)

    def forward(self, seq: int) -> Tensor:
        values = self.bias(self.buckets[:seq, :seq])  # (T, T, H)
        return values.permute(2, 0, 1)[None]  # (1, H, T, T)


class MultiHeadSelfAttention(nn.Module):
    """Q, K and V are linear projections of each token vector, split into heads.

    One (d_model -> h * d_k) Linear per Q/K/V holds the h per-head projections side by side, which is how
    checkpoints store them; `_split_heads` separates them. With grouped-query attention K and V have fewer heads
    and each is shared by a group of query heads. After attention the heads are concatenated again and mixed by
    the output projection W_O.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = config.num_heads
        self.n_kv_heads = config.kv_heads
        self.d_k = config.head_dim
        d_model = config.hidden_size
        bias = config.attention_bias
        self.query = nn.Linear(d_model, self.n_heads * self.d_k, bias=bias)
        self.key = nn.Linear(d_model, self.n_kv_heads * self.d_k, bias=bias)
        self.value = nn.Linear(d_model, self.n_kv_heads * self.d_k, bias=bias)
        self.output = nn.Linear(self.n_heads * self.d_k, d_model, bias=bias)
        self.q_norm = RMSNorm(self.d_k, config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.d_k, config.layer_norm_eps) if config.qk_norm else None

    def _split_heads(self, x: Tensor, heads: int) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, heads, self.d_k).transpose(1, 2)  # (B, heads, T, d_k)

    def _repeat_kv(self, x: Tensor) -> Tensor:
        """(B, H_kv, T, d_k) -> (B, H, T, d_k): query head h uses K/V head h // (H / H_kv)."""
        group = self.n_heads // self.n_kv_heads
        if group == 1:
            return x
        batch, _, seq, d_k = x.shape
        return x[:, :, None].expand(batch, self.n_kv_heads, group, seq, d_k).reshape(batch, self.n_heads, seq, d_k)

    def project(self, x: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, d_model) -> q, k, v (B, H, T, d_k) as the dot products use them: q/k-normed and rotated where
        the model does so, K/V repeated per query head under grouped-query attention."""
        q = self._split_heads(self.query(x), self.n_heads)
        k = self._split_heads(self.key(x), self.n_kv_heads)
        v = self._split_heads(self.value(x), self.n_kv_heads)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, self._repeat_kv(k), self._repeat_kv(v)

    def forward(
        self,
        x: Tensor,
        mask_bias: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        score_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        q, k, v = self.project(x, rotary)
        context, probs = attention(q, k, v, mask_bias, score_bias)
        batch, _, seq, _ = context.shape
        concat = context.transpose(1, 2).reshape(batch, seq, self.n_heads * self.d_k)  # (B, T, h * d_k)
        return self.output(concat), probs


def activate(x: Tensor, name: str) -> Tensor:
    if name == "gelu":
        return F.gelu(x)  # exact erf GELU, as BERT
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    return F.relu(x)


class FeedForward(nn.Module):
    """Position-wise feed-forward: d_model -> d_ff -> d_model with a non-linearity between.

    Gated variants (GeGLU, SwiGLU) multiply the activated `gate` projection by a second, linear `up` projection.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.gate = (nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
                     if config.feed_forward != "mlp" else None)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        up = self.up(x)  # (B, T, d_ff)
        h = activate(up, self.act) if self.gate is None else activate(self.gate(x), self.act) * up
        return self.down(h)  # (B, T, d_model)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each wrapped in a residual connection and a norm.

    Post-norm (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    Pre-norm (`norm_first`): x = x + Attn(LN(x)); x = x + FFN(LN(x)).
    Written by hand because nn.TransformerEncoderLayer discards the attention weights.
    """

    def __init__(self, config: EncoderConfig, index: int = 0) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.attention = MultiHeadSelfAttention(config)
        skip_norm = config.norm_first and index == 0 and not config.first_attention_norm
        self.attention_norm = nn.Identity() if skip_norm else make_norm(config)
        self.feed_forward = FeedForward(config)
        self.output_norm = make_norm(config)

    def forward(
        self,
        x: Tensor,
        mask_bias: Tensor,
        rotary: tuple[Tensor, Tensor] | None = None,
        score_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if self.norm_first:
            attended, probs = self.attention(self.attention_norm(x), mask_bias, rotary, score_bias)
            x = x + attended
            x = x + self.feed_forward(self.output_norm(x))
        else:
            attended, probs = self.attention(x, mask_bias, rotary, score_bias)
            x = self.attention_norm(x + attended)
            x = self.output_norm(x + self.feed_forward(x))
        return x, probs  # (B, T, d_model), (B, H, T, T)


def sinusoidal_table(n_positions: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): (n_positions, d_model)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


def padding_offset_positions(input_ids: Tensor, padding_idx: int) -> Tensor:
    """RoBERTa's position ids: real tokens count up from padding_idx + 1, padding keeps padding_idx.

    cumsum(mask) * mask + padding_idx, with mask = (input_ids != padding_idx), exactly as Hugging Face.
    """
    mask = input_ids.ne(padding_idx).long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx  # (B, T)


class Embeddings(nn.Module):
    """Token embedding + absolute position information + token-type (segment) embedding, then a norm.

    Any of the last three may be absent: rotary and relative models add no position here, RoBERTa has one
    segment row, decoders have no norm.
    """

    sinusoid: Tensor | None  # (T_max, D) buffer of sinusoidal models

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d_model = config.hidden_size
        self.position_ids = config.position_ids
        self.pad_token_id = config.pad_token_id
        self.word = nn.Embedding(config.vocab_size, d_model, padding_idx=config.pad_token_id)
        self.token_type = nn.Embedding(config.type_vocab_size, d_model) if config.type_vocab_size else None
        self.position: nn.Embedding | None = None
        if config.position_embedding == "learned":
            self.position = nn.Embedding(config.max_position_embeddings, d_model)
        sinusoid = (sinusoidal_table(config.max_position_embeddings, d_model)
                    if config.position_embedding == "sinusoidal" else None)
        self.register_buffer("sinusoid", sinusoid, persistent=False)
        self.norm = make_norm(config) if config.embedding_norm else None

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        x = self.word(input_ids)  # (B, T, d_model)
        if self.position is not None:
            if self.position_ids == "padding_offset":
                x = x + self.position(padding_offset_positions(input_ids, self.pad_token_id))
            else:
                x = x + self.position(torch.arange(input_ids.size(1), device=input_ids.device))[None]
        elif self.sinusoid is not None:
            x = x + self.sinusoid[: input_ids.size(1)][None]
        if self.token_type is not None:
            # One segment (RoBERTa) needs no input: the same row is added to every token.
            x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        return self.norm(x) if self.norm is not None else x
