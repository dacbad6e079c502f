"""What a family is: how its config.json becomes an EncoderConfig and how its weight names become ours.

A family adds no layers of its own. It states which variant of each shared component its checkpoints use and
where their tensors go; `map_state_dict` then places every tensor exactly once or refuses the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from model.config import Activation, EncoderConfig, PoolingMode
from model.heads import ClassifierConfig, HeadRecipe, SparseConfig


class CheckpointError(ValueError):
    """The checkpoint directory cannot be loaded exactly; the message names the file and the key."""


def require(raw: dict[str, Any], key: str, path: Path) -> Any:
    if key not in raw or raw[key] is None:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return raw[key]


def refuse_unless(raw: dict[str, Any], key: str, allowed: tuple[Any, ...], path: Path) -> None:
    """A config option we do not implement must stop the load, not be ignored."""
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise CheckpointError(f"{path}: unsupported {key}={value!r} (supported: {', '.join(map(repr, allowed))})")


class Sizes(TypedDict):
    """The five sizes, as EncoderConfig's keyword arguments (``EncoderConfig(**sizes(...), ...)``)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


def sizes(raw: dict[str, Any], path: Path, *, hidden: str = "hidden_size", layers: str = "num_hidden_layers",
          heads: str = "num_attention_heads", intermediate: str = "intermediate_size") -> Sizes:
    """The five sizes every family states, under its own key names."""
    try:
        return Sizes(vocab_size=int(require(raw, "vocab_size", path)), hidden_size=int(require(raw, hidden, path)),
                     num_layers=int(require(raw, layers, path)), num_heads=int(require(raw, heads, path)),
                     intermediate_size=int(require(raw, intermediate, path)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


# Hugging Face activation names -> ours.
ACTIVATIONS: dict[str, Activation] = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                                      "relu": "relu", "silu": "silu", "swish": "silu"}


def activation(raw: dict[str, Any], key: str, path: Path, default: str = "gelu") -> Activation:
    name = raw.get(key) or default
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{path}: unsupported {key}={name!r} (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class Family:
    """One architecture's recipe.

    embedding_keys / final_keys: Hugging Face module prefix -> ours, outside the layer stack.
    layer_prefix: regex of a layer's key prefix, capturing its index.
    layer_keys: module path inside a layer -> ours.
    split_keys: fused module inside a layer -> our modules, cut into equal parts along the output axis
        (ModernBERT stores Q, K, V as one Wqkv and the GLU's two projections as one Wi).
    prefixes: wrappers stripped from every key (a *ForMaskedLM checkpoint nests the encoder under one).
    ignored: keys we knowingly do not use (task heads, buffers), matched after stripping.
    optimizer_model_type: onnxruntime transformer optimizer type whose fusions are exact for this family, or None.
    padding_side: the default when tokenizer_config.json does not say.
    default_pooling: for a bare transformers directory (no modules.json): mean for encoders, the last token
        for decoders (whose only token that has seen the whole text is the last).
    classifier / read_classifier: where a *ForSequenceClassification head's weights are and how config.json
        shapes it (num_labels given); None when we do not implement this family's head.
    masked_lm / read_masked_lm: the same for a *ForMaskedLM head (SPLADE); None when not implemented.
    """

    name: str
    model_types: tuple[str, ...]
    read_config: Callable[[dict[str, Any], Path], EncoderConfig]
    embedding_keys: dict[str, str]
    layer_prefix: str
    layer_keys: dict[str, str]
    final_keys: dict[str, str] = field(default_factory=dict)
    split_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prefixes: tuple[str, ...] = ()
    ignored: str = r"^$"
    optimizer_model_type: str | None = None
    padding_side: str = "right"
    default_pooling: PoolingMode = "mean"
    classifier: HeadRecipe | None = None
    read_classifier: Callable[[dict[str, Any], Path, int], ClassifierConfig] | None = None
    masked_lm: HeadRecipe | None = None
    read_masked_lm: Callable[[dict[str, Any], Path], SparseConfig] | None = None

    def rename(self, hf_key: str) -> list[tuple[str, int, int]] | None:
        """One Hugging Face key -> [(our key, part, parts)]; None when ignored; [] when unknown."""
        key = hf_key
        for prefix in self.prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if re.match(self.ignored, key):
            return None
        for table in (self.embedding_keys, self.final_keys):
            for theirs, ours in table.items():
                if key.startswith(theirs + "."):
                    return [(ours + key[len(theirs):], 0, 1)]
        match = re.match(self.layer_prefix + r"(.+)\.(weight|bias)$", key)
        if match:
            index, module, param = match.groups()
            if module in self.layer_keys:
                return [(f"layers.{index}.{self.layer_keys[module]}.{param}", 0, 1)]
            if module in self.split_keys:
                targets = self.split_keys[module]
                return [(f"layers.{index}.{t}.{param}", i, len(targets)) for i, t in enumerate(targets)]
        return []
