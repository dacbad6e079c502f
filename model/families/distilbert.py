"""DistilBERT: BERT's post-norm layers with other weight names, no token types, LayerNorm eps fixed at 1e-12."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, sizes
from model.heads import TIED_TO_WORD_EMBEDDINGS, ClassifierConfig, HeadRecipe, SparseConfig


def _read(raw: dict[str, Any], path: Path) -> EncoderConfig:
    # sinusoidal_pos_embds=True only changes how the position table is initialised; it is saved as weights.
    try:
        return EncoderConfig(
            **sizes(raw, path, hidden="dim", layers="n_layers", heads="n_heads", intermediate="hidden_dim"),
            max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=0,
            layer_norm_eps=1e-12,  # hard-coded in transformers' DistilBERT
            hidden_act=activation(raw, "activation", path),
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_classifier(raw: dict[str, Any], path: Path, num_labels: int) -> ClassifierConfig:
    """DistilBertForSequenceClassification: pre_classifier + ReLU on [CLS], then classifier."""
    return ClassifierConfig(hidden_size=int(raw["dim"]), num_labels=num_labels, pooling="cls", activation="relu")


def _read_masked_lm(raw: dict[str, Any], path: Path) -> SparseConfig:
    """DistilBertForMaskedLM: vocab_transform + `activation` + vocab_layer_norm (eps 1e-12), vocab_projector."""
    try:
        return SparseConfig(hidden_size=int(raw["dim"]), vocab_size=int(raw["vocab_size"]),
                            activation=activation(raw, "activation", path),
                            norm_eps=1e-12)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    read_config=_read,
    embedding_keys={
        "embeddings.word_embeddings": "embeddings.word",
        "embeddings.position_embeddings": "embeddings.position",
        "embeddings.LayerNorm": "embeddings.norm",
    },
    layer_prefix=r"^transformer\.layer\.(\d+)\.",
    layer_keys={
        "attention.q_lin": "attention.query",
        "attention.k_lin": "attention.key",
        "attention.v_lin": "attention.value",
        "attention.out_lin": "attention.output",
        "sa_layer_norm": "attention_norm",
        "ffn.lin1": "feed_forward.up",
        "ffn.lin2": "feed_forward.down",
        "output_layer_norm": "output_norm",
    },
    prefixes=("distilbert.",),
    ignored=r"^(vocab_transform\.|vocab_layer_norm\.|vocab_projector\.|pre_classifier\.|classifier\.|"
            r"embeddings\.position_ids$)",
    optimizer_model_type=None,
    classifier=HeadRecipe({
        "dense.weight": ("pre_classifier.weight",), "dense.bias": ("pre_classifier.bias",),
        "classifier.weight": ("classifier.weight",), "classifier.bias": ("classifier.bias",),
    }),
    read_classifier=_read_classifier,
    masked_lm=HeadRecipe({
        "transform.weight": ("vocab_transform.weight",), "transform.bias": ("vocab_transform.bias",),
        "norm.weight": ("vocab_layer_norm.weight",), "norm.bias": ("vocab_layer_norm.bias",),
        "decoder.weight": ("vocab_projector.weight", TIED_TO_WORD_EMBEDDINGS),
        "decoder.bias": ("vocab_projector.bias",),
    }),
    read_masked_lm=_read_masked_lm,
)
