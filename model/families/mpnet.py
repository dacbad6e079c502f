"""MPNet: BERT's layers with RoBERTa's position ids plus a bucketed relative-position bias shared by all layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, sizes


def _read(raw: dict[str, Any], path: Path) -> EncoderConfig:
    try:
        return EncoderConfig(
            **sizes(raw, path),
            max_position_embeddings=int(raw.get("max_position_embeddings", 514)),
            type_vocab_size=0,
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=activation(raw, "hidden_act", path),
            position_ids="padding_offset",
            pad_token_id=int(raw.get("pad_token_id") or 1),
            relative_attention_buckets=int(raw.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=128,  # fixed in transformers' MPNet
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


MPNET = Family(
    name="mpnet",
    model_types=("mpnet",),
    read_config=_read,
    embedding_keys={
        "embeddings.word_embeddings": "embeddings.word",
        "embeddings.position_embeddings": "embeddings.position",
        "embeddings.LayerNorm": "embeddings.norm",
    },
    layer_prefix=r"^encoder\.layer\.(\d+)\.",
    layer_keys={
        "attention.attn.q": "attention.query",
        "attention.attn.k": "attention.key",
        "attention.attn.v": "attention.value",
        "attention.attn.o": "attention.output",
        "attention.LayerNorm": "attention_norm",
        "intermediate.dense": "feed_forward.up",
        "output.dense": "feed_forward.down",
        "output.LayerNorm": "output_norm",
    },
    final_keys={"encoder.relative_attention_bias": "relative_bias.bias"},
    prefixes=("mpnet.",),
    ignored=r"^(pooler\.|lm_head\.|classifier\.|embeddings\.position_ids$)",
    optimizer_model_type=None,
)
