"""BERT and its re-trainings with the same weights layout: RoBERTa and XLM-RoBERTa.

RoBERTa changes one step: position ids count real tokens from padding_idx + 1 (so its table has
max_seq + 2 rows), and its single token type needs no input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, refuse_unless, sizes

_LAYER_KEYS = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.up",
    "output.dense": "feed_forward.down",
    "output.LayerNorm": "output_norm",
}
_EMBEDDING_KEYS = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
}
# NSP pooler, MLM heads, and position/token-type id buffers.
_IGNORED = r"^(pooler\.|cls\.|lm_head\.|classifier\.|embeddings\.position_ids$|embeddings\.token_type_ids$)"


def _read(raw: dict[str, Any], path: Path, *, roberta: bool) -> EncoderConfig:
    refuse_unless(raw, "position_embedding_type", ("absolute",), path)
    try:
        return EncoderConfig(
            **sizes(raw, path),
            max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=activation(raw, "hidden_act", path),  # type: ignore[arg-type]
            position_ids="padding_offset" if roberta else "arange",
            pad_token_id=int(raw.get("pad_token_id") or (1 if roberta else 0)),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_bert(raw: dict[str, Any], path: Path) -> EncoderConfig:
    return _read(raw, path, roberta=False)


def _read_roberta(raw: dict[str, Any], path: Path) -> EncoderConfig:
    return _read(raw, path, roberta=True)


BERT = Family(
    name="bert", model_types=("bert",), read_config=_read_bert, embedding_keys=_EMBEDDING_KEYS,
    layer_prefix=r"^encoder\.layer\.(\d+)\.", layer_keys=_LAYER_KEYS, prefixes=("bert.",), ignored=_IGNORED,
    optimizer_model_type="bert",
)
ROBERTA = Family(
    name="xlm-roberta", model_types=("roberta", "xlm-roberta"), read_config=_read_roberta,
    embedding_keys=_EMBEDDING_KEYS, layer_prefix=r"^encoder\.layer\.(\d+)\.", layer_keys=_LAYER_KEYS,
    prefixes=("roberta.",), ignored=_IGNORED, optimizer_model_type="bert",
)
