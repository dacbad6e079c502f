"""Which task a checkpoint was trained for, and loading it with its head: a cross-encoder or classifier
(`*ForSequenceClassification`, also as sentence-transformers' CrossEncoder saves it) or a SPLADE model
(`*ForMaskedLM` under sentence-transformers' SparseEncoder modules).

The encoder is placed exactly as for an embedding model (model.checkpoint); the head's tensors are then taken
by the family's HeadRecipe, every one of them present with its shape, or the load stops naming file and key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model.checkpoint import (
    _check_tokenizer,
    _read_json,
    _read_weights,
    map_state_dict,
    read_encoder_config,
    read_max_seq_length,
)
from model.config import EncoderConfig, PoolingConfig
from model.encoder import Encoder
from model.families import Family
from model.families.base import CheckpointError
from model.heads import (
    TASKS,
    TIED_TO_WORD_EMBEDDINGS,
    ClassificationHead,
    ClassifierConfig,
    HeadRecipe,
    MaskedLMHead,
    SequenceClassifier,
    SparseConfig,
    SpladeActivation,
    SpladeEncoder,
    SpladeStrategy,
    TaskModel,
)

log = logging.getLogger(__name__)

_ST_CONFIG = "config_sentence_transformers.json"
_SPLADE_STRATEGIES: dict[str, SpladeStrategy] = {"max": "max", "sum": "sum"}
_SPLADE_ACTIVATIONS: dict[str, SpladeActivation] = {"relu": "relu", "log1p_relu": "log1p_relu"}
# CrossEncoder's stored activation_fn (a class path) -> the name the manifest records.
_SCORE_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax", "torch.nn.modules.activation.Tanh": "tanh",
}
_SPLADE_MODULE = ".SpladePooling"
_TRANSFORMER_MODULES = (".Transformer", ".MLMTransformer")


@dataclass(frozen=True)
class LoadedTaskCheckpoint:
    task: str  # rerank | classify | sparse
    model: TaskModel
    encoder: Encoder
    config: EncoderConfig
    family: Family
    model_name: str
    source_dir: Path
    weights_file: Path
    tokenizer_file: Path
    max_seq_length: int
    labels: tuple[str, ...] = ()
    score_activation: str | None = None
    classifier: ClassifierConfig | None = None
    sparse: SparseConfig | None = None

    @property
    def pooling(self) -> str:
        """The head's pooling, as the manifest's `pooling` records it."""
        if self.classifier is not None:
            return self.classifier.pooling
        return self.sparse.pooling_strategy if self.sparse is not None else "cls"


def _config_json(directory: Path) -> dict[str, Any]:
    raw = _read_json(directory / "config.json")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{directory / 'config.json'}: expected a JSON object")
    return raw


def _modules(directory: Path) -> list[dict[str, Any]]:
    path = directory / "modules.json"
    if not path.is_file():
        return []
    modules = _read_json(path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{path}: expected a list of modules")
    return modules


def _st_config(directory: Path) -> dict[str, Any]:
    path = directory / _ST_CONFIG
    raw = _read_json(path) if path.is_file() else {}
    return raw if isinstance(raw, dict) else {}


def labels_from_config(raw: dict[str, Any], path: Path) -> tuple[str, ...]:
    """config.json's id2label in id order; without it, num_labels LABEL_i names (transformers' default: 2)."""
    id2label = raw.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            by_id = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: id2label keys must be integers ({exc})") from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise CheckpointError(f"{path}: id2label ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
        return tuple(by_id[i] for i in range(len(by_id)))
    try:
        count = int(raw.get("num_labels", 2))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: num_labels: {exc}") from exc
    return tuple(f"LABEL_{i}" for i in range(count))


def detect_task(directory: Path) -> str:
    """embed | rerank | classify | sparse, from the sentence-transformers files and config.json's architectures.

    A SpladePooling module (or a SparseEncoder config) means sparse; a *ForSequenceClassification architecture
    means a cross-encoder with one label (rerank) or a classifier with several; anything else embeds.
    """
    directory = Path(directory)
    modules = _modules(directory)
    if any(str(m.get("type", "")).endswith(_SPLADE_MODULE) for m in modules) \
            or _st_config(directory).get("model_type") == "SparseEncoder":
        return "sparse"
    raw = _config_json(directory)
    architectures = raw.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "rerank" if len(labels_from_config(raw, directory / "config.json")) == 1 else "classify"
    return "embed"


def score_activation(directory: Path, raw: dict[str, Any], num_labels: int) -> str:
    """What the checkpoint says its scores use: CrossEncoder's stored activation_fn (config_sentence_
    transformers.json in 6.x, config.json's `sentence_transformers` in 4.x-5.x, the pre-4 key), else sigmoid for
    one label and softmax for several. Informational: the graphs output raw logits."""
    st_section = raw.get("sentence_transformers")
    st_raw: dict[str, Any] = st_section if isinstance(st_section, dict) else {}
    sources = ((directory / _ST_CONFIG, _st_config(directory).get("activation_fn")),
               (directory / "config.json", st_raw.get("activation_fn")),
               (directory / "config.json", raw.get("sbert_ce_default_activation_function")))
    for path, name in sources:
        if name is None:
            continue
        if name not in _SCORE_ACTIVATIONS:
            raise CheckpointError(f"{path}: unsupported activation_fn={name!r} "
                                  f"(supported: {', '.join(_SCORE_ACTIVATIONS)})")
        return _SCORE_ACTIVATIONS[name]
    return "sigmoid" if num_labels == 1 else "softmax"


def _splade_settings(directory: Path) -> tuple[SpladeStrategy, SpladeActivation]:
    """(pooling_strategy, activation_function) of the SpladePooling module; SPLADE's max/relu without one."""
    modules = _modules(directory)
    modules_path = directory / "modules.json"
    found: tuple[SpladeStrategy, SpladeActivation] | None = None
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(_TRANSFORMER_MODULES):
            continue
        if not kind.endswith(_SPLADE_MODULE):
            raise CheckpointError(f"{modules_path}: unsupported module type {kind!r} in a sparse model "
                                  "(supported: Transformer, MLMTransformer, SpladePooling)")
        path = directory / str(module.get("path", "")) / "config.json"
        raw = _read_json(path)
        strategy, activation = str(raw.get("pooling_strategy", "max")), str(raw.get("activation_function", "relu"))
        if strategy not in _SPLADE_STRATEGIES:
            raise CheckpointError(f"{path}: unsupported pooling_strategy={strategy!r} (supported: 'max', 'sum')")
        if activation not in _SPLADE_ACTIVATIONS:
            raise CheckpointError(f"{path}: unsupported activation_function={activation!r} "
                                  "(supported: 'relu', 'log1p_relu')")
        found = (_SPLADE_STRATEGIES[strategy], _SPLADE_ACTIVATIONS[activation])
    if found is None:
        log.info("%s has no SpladePooling module: using SPLADE's max pooling of log(1 + relu(logits))", directory)
        return "max", "relu"
    return found


def take_head_weights(state: dict[str, Tensor], head: nn.Module, recipe: HeadRecipe, encoder_state: dict[str, Tensor],
                      weights_file: Path, tied_allowed: bool) -> dict[str, Tensor]:
    """Our head's parameters from the checkpoint's tensors, each present with its shape, or CheckpointError."""
    expected = head.state_dict()
    if set(expected) - set(recipe.keys):  # a bug in a recipe, not in the checkpoint
        raise CheckpointError(f"{weights_file}: head recipe lacks {sorted(set(expected) - set(recipe.keys))}")
    for ours, candidates in recipe.keys.items():
        # A bias config.json switches off (ModernBERT's classifier_bias, norm_bias) must not be in the file.
        present = [c for c in candidates if c in state]
        if ours not in expected and present:
            raise CheckpointError(f"{weights_file}: unexpected key {present[0]!r} (config.json implies the head "
                                  "has no such parameter)")
    taken: dict[str, Tensor] = {}
    for ours, candidates in ((k, v) for k, v in recipe.keys.items() if k in expected):
        for theirs in candidates:
            if theirs == TIED_TO_WORD_EMBEDDINGS and tied_allowed:
                tensor = encoder_state["embeddings.word.weight"]
            elif theirs in state:
                tensor = state[theirs]
            else:
                continue
            if tuple(tensor.shape) != tuple(expected[ours].shape):
                raise CheckpointError(f"{weights_file}: key {theirs!r} has shape {tuple(tensor.shape)}, "
                                      f"config.json implies {tuple(expected[ours].shape)}")
            taken[ours] = tensor.to(torch.float32).contiguous()
            break
        else:
            names = [c for c in candidates if c != TIED_TO_WORD_EMBEDDINGS]
            raise CheckpointError(f"{weights_file}: missing head key {names[0]!r}"
                                  + (f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""))
    return taken


def load_task_checkpoint(directory: str | Path, task: str = "auto") -> LoadedTaskCheckpoint:
    """Load a rerank, classify or sparse checkpoint with its head, exactly, or raise CheckpointError.

    `task` "auto" detects it (detect_task); an explicit task is checked against what the checkpoint holds.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if task == "auto":
        task = detect_task(directory)
    if task not in TASKS or task == "embed":
        raise CheckpointError(f"{directory}: load_task_checkpoint serves rerank, classify and sparse, not {task!r}")
    config_path = directory / "config.json"
    raw = _config_json(directory)
    family, config = read_encoder_config(directory)
    max_seq_length = read_max_seq_length(directory, config)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file}: file not found (a fast tokenizer file is required)")
    _check_tokenizer(tokenizer_file, config)
    weights_file, state = _read_weights(directory)
    encoder = Encoder(config, pooling=PoolingConfig(mode="cls", normalize=False, max_seq_length=max_seq_length))
    mapped = map_state_dict(state, encoder, weights_file, family)
    encoder.load_state_dict(mapped, strict=True)
    labels: tuple[str, ...] = ()
    activation_name: str | None = None
    classifier: ClassifierConfig | None = None
    sparse: SparseConfig | None = None
    model: TaskModel
    if task in ("rerank", "classify"):
        if family.classifier is None or family.read_classifier is None:
            raise CheckpointError(f"{config_path}: no sequence-classification head implemented for the "
                                  f"{family.name} family (supported: bert, xlm-roberta, distilbert, modernbert)")
        labels = labels_from_config(raw, config_path)
        if task == "rerank" and len(labels) != 1:
            raise CheckpointError(f"{config_path}: a rerank (cross-encoder) model has one label, this one has "
                                  f"{len(labels)} ({', '.join(labels)}); export it as classify")
        classifier = family.read_classifier(raw, config_path, len(labels))
        classification_head = ClassificationHead(classifier)
        classification_head.load_state_dict(
            take_head_weights(state, classification_head, family.classifier, mapped, weights_file, False))
        activation_name = score_activation(directory, raw, len(labels))
        model = SequenceClassifier(encoder, classification_head)
    else:
        if family.masked_lm is None or family.read_masked_lm is None:
            raise CheckpointError(f"{config_path}: no masked-language-model (SPLADE) head implemented for the "
                                  f"{family.name} family (supported: bert, distilbert)")
        strategy, splade_activation = _splade_settings(directory)
        base = family.read_masked_lm(raw, config_path)
        sparse = SparseConfig(hidden_size=base.hidden_size, vocab_size=base.vocab_size, activation=base.activation,
                              norm_eps=base.norm_eps, pooling_strategy=strategy,
                              splade_activation=splade_activation)
        head = MaskedLMHead(sparse)
        tied = raw.get("tie_word_embeddings", True) is not False
        head.load_state_dict(take_head_weights(state, head, family.masked_lm, mapped, weights_file, tied))
        model = SpladeEncoder(encoder, head)
    model.eval()
    return LoadedTaskCheckpoint(
        task=task, model=model, encoder=encoder, config=config, family=family, model_name=directory.name,
        source_dir=directory, weights_file=weights_file, tokenizer_file=tokenizer_file,
        max_seq_length=max_seq_length, labels=labels, score_activation=activation_name, classifier=classifier,
        sparse=sparse,
    )
