"""Small random checkpoints with task heads: cross-encoders (rerank), a 3-label classifier and SPLADE models.

Made like tests/families/builders.py: transformers' own *ForSequenceClassification / *ForMaskedLM classes,
the same locally trained tokenizers, initializer_range 0.2 and noise on every norm and bias (perturb_), so that
a head loaded wrongly (a dropped bias, the wrong pooled token, a missing LayerNorm) shows in a parity test.
Nothing is downloaded; same arguments, same files.

Builders (each writes into a new or empty directory and returns it):
    build_reranker(family, out_dir)   family: "bert" (saved by sentence_transformers.CrossEncoder),
                                      "xlm-roberta", "modernbert" (plain transformers directories); 1 label
    build_classifier(out_dir, family="bert")   3 labels: negative, neutral, positive ("bert" or "distilbert")
    build_splade(family, out_dir)     family: "bert" or "distilbert", saved by sentence_transformers'
                                      SparseEncoder (Transformer fill-mask + SpladePooling max/relu)
    task_checkpoint(name, root)       one of TASK_CHECKPOINTS, built once per root and process (test fixtures)
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.random_checkpoints import write_tokenizer
from tests.families.builders import (
    _RECIPES,
    HIDDEN_SIZE,
    INITIALIZER_RANGE,
    MAX_SEQ_LENGTH,
    NUM_HEADS,
    perturb_,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

RERANK_FAMILIES = ("bert", "xlm-roberta", "modernbert")
CLASSIFIER_FAMILIES = ("bert", "distilbert")
SPLADE_FAMILIES = ("bert", "distilbert")
CLASSIFIER_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
# BERT uses the DistilBERT recipe's WordPiece tokenizer ([CLS] A [SEP] B [SEP], type ids 0/1) as BertTokenizer.
_TOKENIZER_RECIPE = {"bert": "distilbert", "distilbert": "distilbert", "xlm-roberta": "xlm-roberta",
                     "modernbert": "modernbert"}


def _tokenizer(family: str) -> tuple[Tokenizer, dict[str, Any]]:
    recipe = _RECIPES[_TOKENIZER_RECIPE[family]]
    config = {"backend": "tokenizers", **recipe.tokenizer_config, "model_max_length": MAX_SEQ_LENGTH}
    if family == "bert":
        config["tokenizer_class"] = "BertTokenizer"
    return recipe.tokenizer(), config


def _model(family: str, tok: Tokenizer, head: str, labels: dict[int, str] | None) -> PreTrainedModel:
    """transformers' class for `family` with `head` ("classify" or "mlm"), at our small test shape."""
    import transformers as tf

    label_kw: dict[str, Any] = {}
    if labels is not None:
        label_kw = {"id2label": dict(labels), "label2id": {v: k for k, v in labels.items()},
                    "num_labels": len(labels)}
    common = {"vocab_size": tok.get_vocab_size(), "initializer_range": INITIALIZER_RANGE, **label_kw}
    if family == "bert":
        config = tf.BertConfig(hidden_size=HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=NUM_HEADS,
                               intermediate_size=4 * HIDDEN_SIZE, max_position_embeddings=128, type_vocab_size=2,
                               pad_token_id=tok.token_to_id("[PAD]"), **common)
        return (tf.BertForSequenceClassification if head == "classify" else tf.BertForMaskedLM)(config)
    if family == "distilbert":
        config = tf.DistilBertConfig(dim=HIDDEN_SIZE, n_layers=2, n_heads=NUM_HEADS, hidden_dim=4 * HIDDEN_SIZE,
                                     max_position_embeddings=128, activation="gelu", sinusoidal_pos_embds=False,
                                     pad_token_id=tok.token_to_id("[PAD]"), **common)
        return (tf.DistilBertForSequenceClassification if head == "classify" else tf.DistilBertForMaskedLM)(config)
    if family == "xlm-roberta" and head == "classify":
        config = tf.XLMRobertaConfig(hidden_size=HIDDEN_SIZE, num_hidden_layers=2, num_attention_heads=NUM_HEADS,
                                     intermediate_size=4 * HIDDEN_SIZE, max_position_embeddings=MAX_SEQ_LENGTH + 2,
                                     type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     layer_norm_eps=1e-5, **common)
        return tf.XLMRobertaForSequenceClassification(config)
    if family == "modernbert" and head == "classify":
        config = tf.ModernBertConfig(
            hidden_size=HIDDEN_SIZE, num_hidden_layers=4, num_attention_heads=NUM_HEADS, intermediate_size=96,
            hidden_activation="gelu", max_position_embeddings=512, global_attn_every_n_layers=3,
            local_attention=8, global_rope_theta=160_000.0, local_rope_theta=10_000.0, norm_bias=False,
            norm_eps=1e-5, pad_token_id=tok.token_to_id("[PAD]"), bos_token_id=tok.token_to_id("[CLS]"),
            eos_token_id=tok.token_to_id("[SEP]"), cls_token_id=tok.token_to_id("[CLS]"),
            sep_token_id=tok.token_to_id("[SEP]"), classifier_pooling="mean", classifier_activation="gelu",
            classifier_bias=True, **common)
        return tf.ModernBertForSequenceClassification(config)
    raise ValueError(f"no {head} builder for family {family!r}")


def _fresh(directory: Path) -> Path:
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty: files of another build would mix into this one")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _save_transformers(family: str, head: str, directory: Path, labels: dict[int, str] | None,
                       seed: int) -> tuple[str, dict[str, Any]]:
    """save_pretrained a seeded, perturbed model and our tokenizer files; returns (tokenizer.json, config)."""
    import torch

    tok, tokenizer_config = _tokenizer(family)
    torch.manual_seed(seed)
    model = _model(family, tok, head, labels).eval()
    perturb_(model, torch.Generator().manual_seed(seed + 1))
    model.save_pretrained(directory)
    tokenizer_json = tok.to_str(pretty=True)
    write_tokenizer(directory, tokenizer_json, tokenizer_config)
    return tokenizer_json, tokenizer_config


def build_reranker(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    """A one-label cross-encoder of `family` (RERANK_FAMILIES) in `out_dir`. BERT goes through
    sentence_transformers.CrossEncoder(...).save (modules.json, config_sentence_transformers.json with
    activation_fn Sigmoid); the others are plain *ForSequenceClassification directories."""
    if family not in RERANK_FAMILIES:
        raise ValueError(f"unknown rerank family {family!r} (known: {', '.join(RERANK_FAMILIES)})")
    out_dir = _fresh(out_dir)
    if family != "bert":
        _save_transformers(family, "classify", out_dir, {0: "LABEL_0"}, seed)
        return out_dir
    from sentence_transformers import CrossEncoder

    with tempfile.TemporaryDirectory() as staging:
        tokenizer_json, tokenizer_config = _save_transformers(family, "classify", Path(staging), {0: "LABEL_0"},
                                                              seed)
        CrossEncoder(staging, device="cpu", max_length=MAX_SEQ_LENGTH).save(str(out_dir))
    # CrossEncoder re-saves the tokenizer as transformers rebuilt it; keep the trained files (they agree).
    write_tokenizer(out_dir, tokenizer_json, tokenizer_config)
    return out_dir


def build_classifier(out_dir: Path, *, family: str = "bert", seed: int = 0) -> Path:
    """A 3-label *ForSequenceClassification of `family` (CLASSIFIER_FAMILIES) with id2label CLASSIFIER_LABELS."""
    if family not in CLASSIFIER_FAMILIES:
        raise ValueError(f"unknown classifier family {family!r} (known: {', '.join(CLASSIFIER_FAMILIES)})")
    out_dir = _fresh(out_dir)
    _save_transformers(family, "classify", out_dir, CLASSIFIER_LABELS, seed)
    return out_dir


def build_splade(family: str, out_dir: Path, *, seed: int = 0, pooling_strategy: str = "max") -> Path:
    """A SPLADE model: *ForMaskedLM of `family` (SPLADE_FAMILIES) saved by sentence_transformers' SparseEncoder
    with Transformer(transformer_task="fill-mask") + SpladePooling(pooling_strategy, "relu")."""
    if family not in SPLADE_FAMILIES:
        raise ValueError(f"unknown splade family {family!r} (known: {', '.join(SPLADE_FAMILIES)})")
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    out_dir = _fresh(out_dir)
    with tempfile.TemporaryDirectory() as staging:
        tokenizer_json, tokenizer_config = _save_transformers(family, "mlm", Path(staging), None, seed)
        transformer = Transformer(staging, transformer_task="fill-mask", max_seq_length=MAX_SEQ_LENGTH)
        model = SparseEncoder(modules=[transformer, SpladePooling(pooling_strategy, "relu")], device="cpu")
        model.save(str(out_dir))
    write_tokenizer(out_dir, tokenizer_json, tokenizer_config)
    return out_dir


TASK_CHECKPOINTS: dict[str, Callable[[Path], Path]] = {
    "bert-reranker": lambda d: build_reranker("bert", d),
    "xlm-roberta-reranker": lambda d: build_reranker("xlm-roberta", d),
    "modernbert-reranker": lambda d: build_reranker("modernbert", d),
    "bert-classifier": lambda d: build_classifier(d, family="bert"),
    "distilbert-classifier": lambda d: build_classifier(d, family="distilbert"),
    "bert-splade": lambda d: build_splade("bert", d),
    "distilbert-splade": lambda d: build_splade("distilbert", d),
}
# What each checkpoint should export as under --task auto.
EXPECTED_TASK = {"bert-reranker": "rerank", "xlm-roberta-reranker": "rerank", "modernbert-reranker": "rerank",
                 "bert-classifier": "classify", "distilbert-classifier": "classify", "bert-splade": "sparse",
                 "distilbert-splade": "sparse"}
_BUILT: dict[tuple[str, Path], Path] = {}


def task_checkpoint(name: str, root: Path) -> Path:
    """TASK_CHECKPOINTS[name] built under root/name once per process (tests share it through the session's
    base temp directory)."""
    key = (name, Path(root))
    if key not in _BUILT:
        target = Path(root) / name
        done = target / ".complete"
        if not done.is_file():
            TASK_CHECKPOINTS[name](target)
            done.write_text(json.dumps({"name": name}))
        _BUILT[key] = target
    return _BUILT[key]
