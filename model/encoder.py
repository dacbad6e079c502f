"""The whole encoder: embeddings -> N stacked layers -> pooling -> Dense modules, with one fixed output."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from model.config import DenseConfig, EncoderConfig, PoolingConfig, PoolingMode
from model.layers import (
    Embeddings,
    EncoderLayer,
    RelativePositionBias,
    RotaryEmbedding,
    make_norm,
    padding_mask_bias,
    visibility_mask_bias,
)


class EncoderOutput(NamedTuple):
    """Always all three, whatever the caller wants: the ONNX runner chooses which outputs to fetch."""

    last_hidden_state: Tensor  # (B, T, D)
    sentence_embedding: Tensor  # (B, D_out): pooled and through any Dense modules, not normalised
    attentions: Tensor  # (L, B, H, T, T)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row, for right and left padding alike: (B,)."""
    seq = attention_mask.size(1)
    positions = torch.arange(seq, device=attention_mask.device)[None, :]  # (1, T)
    return (positions * attention_mask.long()).max(dim=1).values


def first_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the first real token of each row (0 under right padding, the pad count under left): (B,)."""
    return attention_mask.to(torch.float32).argmax(dim=1)  # ArgMax keeps the first maximum


def pool(hidden: Tensor, attention_mask: Tensor, mode: PoolingMode, first_real: Tensor | None = None) -> Tensor:
    """Sentence vector from token vectors, counting real tokens only, as sentence-transformers' Pooling.

    `first_real` (B,) is where each row's tokens start, given when the pooling mask is not the attention mask
    (a prompt left out); by default it is read from `attention_mask`.
    """
    rows = torch.arange(hidden.size(0), device=hidden.device)
    if first_real is None:
        first_real = first_token_index(attention_mask)
    if mode == "cls":
        return hidden[rows, first_real]  # the [CLS]/<s> token, wherever padding put it
    if mode == "lasttoken":
        return hidden[rows, last_token_index(attention_mask)]  # (B, D)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    if mode == "weightedmean":
        # Weights 1..n counted from the row's first real token, as sentence-transformers (so left padding does
        # not change them).
        positions = torch.arange(1, hidden.size(1) + 1, device=hidden.device, dtype=hidden.dtype)[None, :]
        weights = (positions - first_real[:, None].to(hidden.dtype))[:, :, None]  # (B, T, 1)
        mask = mask * weights  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    summed = (hidden * mask).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1); never divide by zero
    if mode == "mean_sqrt_len_tokens":
        return summed / torch.sqrt(count)
    return summed / count


def without_prompt(attention_mask: Tensor, prompt_length: Tensor) -> Tensor:
    """The pooling mask with each row's first `prompt_length` real tokens (the prompt) removed: (B, T)."""
    seq = attention_mask.size(1)
    positions = torch.arange(seq, device=attention_mask.device)[None, :]  # (1, T)
    first_real = first_token_index(attention_mask)[:, None]  # (B, 1)
    keep = (positions - first_real) >= prompt_length[:, None]
    return attention_mask * keep.to(attention_mask.dtype)


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(W x + b) on the pooled vector."""

    _ACTIVATIONS: ClassVar[dict[str, type[nn.Module]]] = {
        "identity": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}

    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.in_features, config.out_features, bias=config.bias)
        self.activation = self._ACTIVATIONS[config.activation]()

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


class Encoder(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids=None, prompt_length=None) -> EncoderOutput.

    `token_type_ids` only for configs with more than one segment; `prompt_length` (B,) only for pooling that
    leaves the prompt out (`include_prompt=False`).
    """

    def __init__(self, config: EncoderConfig, pooling: PoolingMode | PoolingConfig = "mean") -> None:
        super().__init__()
        self.config = config
        self.pooling_config = pooling if isinstance(pooling, PoolingConfig) else PoolingConfig(mode=pooling)
        self.pooling: PoolingMode = self.pooling_config.mode
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, index) for index in range(config.num_layers))
        # Pre-norm stacks need a final norm: nothing else normalises the last residual sum.
        self.final_norm = make_norm(config) if config.norm_first else None
        self.relative_bias = RelativePositionBias(config) if config.relative_attention_buckets else None
        self.rotary_global: RotaryEmbedding | None = None
        self.rotary_local: RotaryEmbedding | None = None
        if config.position_embedding == "rotary":
            self.rotary_global = RotaryEmbedding(config.head_dim, config.rope_theta)
            if config.local_window:
                self.rotary_local = RotaryEmbedding(config.head_dim, config.local_rope_theta or config.rope_theta)
        self.dense = nn.ModuleList(Dense(d) for d in self.pooling_config.dense)

    @property
    def embedding_dim(self) -> int:
        dense = self.pooling_config.dense
        return dense[-1].out_features if dense else self.config.hidden_size

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        prompt_length: Tensor | None = None,
    ) -> EncoderOutput:
        config = self.config
        x = self.embeddings(input_ids, token_type_ids if config.uses_token_types else None)  # (B, T, D)
        seq = input_ids.size(1)
        # Which keys each query may see: (B, 1, 1, T) for padding alone, (B, 1, T, T) with a triangle or window.
        if config.causal:
            global_mask = visibility_mask_bias(attention_mask, x.dtype, causal=True, window=0)
        else:
            global_mask = padding_mask_bias(attention_mask, x.dtype)
        local_mask = (visibility_mask_bias(attention_mask, x.dtype, causal=config.causal, window=config.local_window)
                      if config.local_window else None)
        score_bias = self.relative_bias(seq) if self.relative_bias is not None else None  # (1, H, T, T)
        rotary_global = self.rotary_global(seq, x.device) if self.rotary_global is not None else None
        rotary_local = self.rotary_local(seq, x.device) if self.rotary_local is not None else rotary_global
        all_probs = []
        for index, layer in enumerate(self.layers):
            if config.is_global_layer(index):
                x, probs = layer(x, global_mask, rotary_global, score_bias)
            else:
                x, probs = layer(x, local_mask, rotary_local, score_bias)
            all_probs.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        pool_mask = attention_mask
        if prompt_length is not None and not self.pooling_config.include_prompt:
            pool_mask = without_prompt(attention_mask, prompt_length)
        sentence = pool(x, pool_mask, self.pooling, first_token_index(attention_mask))
        for dense in self.dense:
            sentence = dense(sentence)
        return EncoderOutput(x, sentence, torch.stack(all_probs))  # attentions: (L, B, H, T, T)
