"""ModernBERT: pre-norm GeGLU layers with rotary positions, alternating global and sliding-window attention.

Layer i is global when i % global_attn_every_n_layers == 0 (transformers 5 also writes this as `layer_types`),
and local layers see keys within local_attention // 2 of the query and use their own rotary theta.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, require, sizes
from model.families.rope import global_local_theta
from model.heads import ClassifierConfig, HeadRecipe


def _global_every(raw: dict[str, Any], path: Path, num_layers: int) -> int:
    every = int(raw.get("global_attn_every_n_layers") or 3)
    types = raw.get("layer_types")
    if types is None:
        return every
    if not isinstance(types, list) or len(types) != num_layers:
        raise CheckpointError(f"{path}: layer_types must list one type per layer ({num_layers})")
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise CheckpointError(f"{path}: unsupported layer_types {unknown}")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if "global_attn_every_n_layers" not in raw and len(full) > 1:
        every = full[1] - full[0]
    elif "global_attn_every_n_layers" not in raw:
        every = num_layers
    if full != list(range(0, num_layers, every)):
        raise CheckpointError(
            f"{path}: layer_types {types} is not one global layer every n (global_attn_every_n_layers={every})"
        )
    return every


def _read(raw: dict[str, Any], path: Path) -> EncoderConfig:
    num_layers = int(require(raw, "num_hidden_layers", path))
    every = _global_every(raw, path, num_layers)
    global_theta, local_theta = global_local_theta(raw, path, (160_000.0, 10_000.0))
    try:
        return EncoderConfig(
            **sizes(raw, path),
            max_position_embeddings=int(raw.get("max_position_embeddings", 8192)),
            type_vocab_size=0,
            layer_norm_eps=float(raw.get("norm_eps", 1e-5)),
            hidden_act=activation(raw, "hidden_activation", path),
            position_embedding="rotary",
            norm_first=True,
            pad_token_id=int(raw.get("pad_token_id") or 0),
            local_window=0 if every == 1 else int(raw.get("local_attention", 128)),
            global_every=every,
            rope_theta=global_theta,
            local_rope_theta=local_theta,
            norm_bias=bool(raw.get("norm_bias", False)),
            feed_forward="geglu",
            attention_bias=bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            first_attention_norm=False,
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_classifier(raw: dict[str, Any], path: Path, num_labels: int) -> ClassifierConfig:
    """ModernBertForSequenceClassification: classifier_pooling (cls | mean) -> head (dense, classifier_activation,
    LayerNorm) -> classifier, in that order (transformers' ModernBertPredictionHead)."""
    pooling = raw.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise CheckpointError(f"{path}: unsupported classifier_pooling={pooling!r} (supported: 'cls', 'mean')")
    try:
        return ClassifierConfig(
            hidden_size=int(raw["hidden_size"]), num_labels=num_labels, pooling=pooling,
            activation=activation(raw, "classifier_activation", path),
            dense_bias=bool(raw.get("classifier_bias", False)), norm=True,
            norm_eps=float(raw.get("norm_eps", 1e-5)), norm_bias=bool(raw.get("norm_bias", False)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _classifier_recipe() -> HeadRecipe:
    return HeadRecipe({
        "dense.weight": ("head.dense.weight",), "dense.bias": ("head.dense.bias",),
        "norm.weight": ("head.norm.weight",), "norm.bias": ("head.norm.bias",),
        "classifier.weight": ("classifier.weight",), "classifier.bias": ("classifier.bias",),
    })


MODERNBERT = Family(
    name="modernbert",
    model_types=("modernbert",),
    read_config=_read,
    embedding_keys={"embeddings.tok_embeddings": "embeddings.word", "embeddings.norm": "embeddings.norm"},
    layer_prefix=r"^layers\.(\d+)\.",
    layer_keys={
        "attn_norm": "attention_norm",
        "attn.Wo": "attention.output",
        "mlp_norm": "output_norm",
        "mlp.Wo": "feed_forward.down",
    },
    # Wi's first half goes through GELU (our `gate`), its second half multiplies it (our `up`).
    split_keys={"attn.Wqkv": ("attention.query", "attention.key", "attention.value"),
                "mlp.Wi": ("feed_forward.gate", "feed_forward.up")},
    final_keys={"final_norm": "final_norm"},
    prefixes=("model.",),
    ignored=r"^(head\.|decoder\.|classifier\.|drop\.)",
    classifier=_classifier_recipe(), read_classifier=_read_classifier,
)
