"""BERT and its re-trainings with the same weights layout: RoBERTa and XLM-RoBERTa.

RoBERTa changes one step: position ids count real tokens from padding_idx + 1 (so its table has
max_seq + 2 rows), and its single token type needs no input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import EncoderConfig
from model.families.base import CheckpointError, Family, activation, refuse_unless, sizes
from model.heads import TIED_TO_WORD_EMBEDDINGS, ClassifierConfig, HeadRecipe, SparseConfig

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
            hidden_act=activation(raw, "hidden_act", path),
            position_ids="padding_offset" if roberta else "arange",
            pad_token_id=int(raw.get("pad_token_id") or (1 if roberta else 0)),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _read_bert(raw: dict[str, Any], path: Path) -> EncoderConfig:
    return _read(raw, path, roberta=False)


def _read_roberta(raw: dict[str, Any], path: Path) -> EncoderConfig:
    return _read(raw, path, roberta=True)


def _read_classifier(raw: dict[str, Any], path: Path, num_labels: int) -> ClassifierConfig:
    """BertForSequenceClassification: the NSP pooler (dense + tanh on [CLS]) then `classifier`;
    RobertaClassificationHead computes the same (dense + tanh on <s>, then out_proj) under other names."""
    return ClassifierConfig(hidden_size=int(raw["hidden_size"]), num_labels=num_labels, pooling="cls",
                            activation="tanh")


def _read_masked_lm(raw: dict[str, Any], path: Path) -> SparseConfig:
    """BertForMaskedLM's `cls.predictions`: transform (dense + hidden_act + LayerNorm), decoder + bias."""
    try:
        return SparseConfig(hidden_size=int(raw["hidden_size"]), vocab_size=int(raw["vocab_size"]),
                            activation=activation(raw, "hidden_act", path),
                            norm_eps=float(raw.get("layer_norm_eps", 1e-12)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


_BERT_CLASSIFIER = HeadRecipe({
    "dense.weight": ("bert.pooler.dense.weight",), "dense.bias": ("bert.pooler.dense.bias",),
    "classifier.weight": ("classifier.weight",), "classifier.bias": ("classifier.bias",),
})
_ROBERTA_CLASSIFIER = HeadRecipe({
    "dense.weight": ("classifier.dense.weight",), "dense.bias": ("classifier.dense.bias",),
    "classifier.weight": ("classifier.out_proj.weight",), "classifier.bias": ("classifier.out_proj.bias",),
})
# The decoder is tied to the word embeddings (transformers saves it once); its bias is saved as
# cls.predictions.bias (tied to decoder.bias, which older checkpoints also hold).
_BERT_MASKED_LM = HeadRecipe({
    "transform.weight": ("cls.predictions.transform.dense.weight",),
    "transform.bias": ("cls.predictions.transform.dense.bias",),
    "norm.weight": ("cls.predictions.transform.LayerNorm.weight",),
    "norm.bias": ("cls.predictions.transform.LayerNorm.bias",),
    "decoder.weight": ("cls.predictions.decoder.weight", TIED_TO_WORD_EMBEDDINGS),
    "decoder.bias": ("cls.predictions.bias", "cls.predictions.decoder.bias"),
})

BERT = Family(
    name="bert", model_types=("bert",), read_config=_read_bert, embedding_keys=_EMBEDDING_KEYS,
    layer_prefix=r"^encoder\.layer\.(\d+)\.", layer_keys=_LAYER_KEYS, prefixes=("bert.",), ignored=_IGNORED,
    optimizer_model_type="bert", classifier=_BERT_CLASSIFIER, read_classifier=_read_classifier,
    masked_lm=_BERT_MASKED_LM, read_masked_lm=_read_masked_lm,
)
ROBERTA = Family(
    name="xlm-roberta", model_types=("roberta", "xlm-roberta"), read_config=_read_roberta,
    embedding_keys=_EMBEDDING_KEYS, layer_prefix=r"^encoder\.layer\.(\d+)\.", layer_keys=_LAYER_KEYS,
    prefixes=("roberta.",), ignored=_IGNORED, optimizer_model_type="bert",
    classifier=_ROBERTA_CLASSIFIER, read_classifier=_read_classifier,
)
