"""The encoder's building blocks, one idea each, in the order the architecture is usually explained."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.config import EncoderConfig


def attention(q: Tensor, k: Tensor, v: Tensor, mask_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, returning the context and the probabilities.

    q, k, v: (B, H, T, d_k); mask_bias: (B, 1, 1, T), 0 for real keys and a large negative number for padding.
    A pure function: the probabilities are returned, never stored on a module (shared state under concurrency,
    and invisible to an ONNX export).
    """
    d_k = q.size(-1)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d_k)  # (B, H, T, T)
    scores = scores + mask_bias  # padded keys -> ~-inf before softmax
    probs = torch.softmax(scores, dim=-1)  # (B, H, T, T); each row sums to 1 over real keys
    context = torch.matmul(probs, v)  # (B, H, T, d_k)
    return context, probs


def padding_mask_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias: 0 where real, dtype's minimum where padding."""
    mask = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - mask) * torch.finfo(dtype).min


class MultiHeadSelfAttention(nn.Module):
    """Q, K and V are linear projections of each token vector, split into heads.

    One (d_model -> d_model) Linear per Q/K/V holds the h per-head (d_model -> d_k) projections side by side,
    which is how checkpoints store them; `_split_heads` separates them. After attention the heads are
    concatenated again and mixed by the output projection W_O.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = config.num_heads
        self.d_k = config.head_dim
        d_model = config.hidden_size
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.output = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.n_heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def forward(self, x: Tensor, mask_bias: Tensor) -> tuple[Tensor, Tensor]:
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        context, probs = attention(q, k, v, mask_bias)  # (B, H, T, d_k), (B, H, T, T)
        batch, _, seq, _ = context.shape
        concat = context.transpose(1, 2).reshape(batch, seq, self.n_heads * self.d_k)  # (B, T, d_model)
        return self.output(concat), probs


class FeedForward(nn.Module):
    """Position-wise feed-forward: d_model -> d_ff -> d_model with a non-linearity between."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)  # (B, T, d_ff)
        if self.act == "gelu":
            h = F.gelu(h)  # exact erf GELU, as BERT
        elif self.act == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h)
        return self.down(h)  # (B, T, d_model)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each wrapped in a residual connection and a LayerNorm.

    Post-norm (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x)).
    Pre-norm (`norm_first`): x = x + Attn(LN(x)); x = x + FFN(LN(x)).
    Written by hand because nn.TransformerEncoderLayer discards the attention weights.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.attention = MultiHeadSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.output_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, mask_bias: Tensor) -> tuple[Tensor, Tensor]:
        if self.norm_first:
            attended, probs = self.attention(self.attention_norm(x), mask_bias)
            x = x + attended
            x = x + self.feed_forward(self.output_norm(x))
        else:
            attended, probs = self.attention(x, mask_bias)
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


class Embeddings(nn.Module):
    """Token embedding + position information + token-type (segment) embedding, then LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d_model = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, d_model, padding_idx=config.pad_token_id)
        self.token_type = nn.Embedding(config.type_vocab_size, d_model)
        self.position: nn.Embedding | None = None
        if config.position_embedding == "learned":
            self.position = nn.Embedding(config.max_position_embeddings, d_model)
        else:
            table = sinusoidal_table(config.max_position_embeddings, d_model)
            self.register_buffer("sinusoid", table, persistent=False)
        self.norm = nn.LayerNorm(d_model, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        seq = input_ids.size(1)
        positions = torch.arange(seq, device=input_ids.device)  # (T,)
        pos = self.position(positions) if self.position is not None else self.sinusoid[:seq]  # (T, d_model)
        x = self.word(input_ids) + pos[None, :, :] + self.token_type(token_type_ids)  # (B, T, d_model)
        return self.norm(x)
