"""The whole encoder: embeddings -> N stacked layers -> pooling, with one fixed output."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.config import EncoderConfig, PoolingMode
from model.layers import Embeddings, EncoderLayer, padding_mask_bias


class EncoderOutput(NamedTuple):
    """Always all three, whatever the caller wants: the ONNX runner chooses which outputs to fetch."""

    last_hidden_state: Tensor  # (B, T, D)
    sentence_embedding: Tensor  # (B, D), pooled, not normalised
    attentions: Tensor  # (L, B, H, T, T)


def pool(hidden: Tensor, attention_mask: Tensor, mode: PoolingMode) -> Tensor:
    """Sentence vector from token vectors, counting real tokens only (as sentence-transformers' Pooling)."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    summed = (hidden * mask).sum(dim=1)  # (B, D)
    count = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1); never divide by zero
    return summed / count


class Encoder(nn.Module):
    """BERT-style encoder. forward(input_ids, attention_mask, token_type_ids) -> EncoderOutput."""

    def __init__(self, config: EncoderConfig, pooling: PoolingMode = "mean") -> None:
        super().__init__()
        self.config = config
        self.pooling: PoolingMode = pooling
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        # Pre-norm stacks need a final LayerNorm: nothing else normalises the last residual sum.
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_first else None

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> EncoderOutput:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        mask_bias = padding_mask_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        all_probs = []
        for layer in self.layers:
            x, probs = layer(x, mask_bias)
            all_probs.append(probs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        sentence = pool(x, attention_mask, self.pooling)
        return EncoderOutput(x, sentence, torch.stack(all_probs))  # attentions: (L, B, H, T, T)
