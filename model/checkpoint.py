"""Load a Hugging Face BERT-family directory into our Encoder, refusing anything we would load only partly.

Reads config.json, model.safetensors (or pytorch_model.bin), tokenizer.json and the sentence-transformers files
(modules.json, <pooling>/config.json, sentence_bert_config.json). Every failure names the file and the key.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.config import EncoderConfig, PoolingConfig, PoolingMode
from model.encoder import Encoder

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("bert",)
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
# Checkpoint keys we knowingly do not use: BERT's NSP pooler, MLM heads, and a position-id buffer.
_IGNORED_KEYS = re.compile(r"^(pooler\.|cls\.|embeddings\.position_ids$)")
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


class CheckpointError(ValueError):
    """The checkpoint directory cannot be loaded exactly; the message names the file and the key."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    encoder: Encoder
    config: EncoderConfig
    pooling: PoolingConfig
    model_name: str
    source_dir: Path
    weights_file: Path
    tokenizer_file: Path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) and not isinstance(data, list):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data  # type: ignore[return-value]


def _require(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return data[key]


def read_encoder_config(directory: Path) -> EncoderConfig:
    """config.json -> EncoderConfig, refusing architectures whose weights we could not place exactly."""
    path = directory / "config.json"
    raw = _read_json(path)
    model_type = _require(raw, "model_type", path)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: unsupported architecture model_type={model_type!r} "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    position_type = raw.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(f"{path}: unsupported position_embedding_type={position_type!r}")
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"{path}: unsupported hidden_act={act!r}")
    try:
        return EncoderConfig(
            vocab_size=int(_require(raw, "vocab_size", path)),
            hidden_size=int(_require(raw, "hidden_size", path)),
            num_layers=int(_require(raw, "num_hidden_layers", path)),
            num_heads=int(_require(raw, "num_attention_heads", path)),
            intermediate_size=int(_require(raw, "intermediate_size", path)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            hidden_act=_ACTIVATIONS[act],  # type: ignore[arg-type]
            position_embedding="learned",
            norm_first=False,
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def read_pooling_config(directory: Path, config: EncoderConfig) -> PoolingConfig:
    """sentence-transformers modules.json / Pooling / sentence_bert_config.json -> PoolingConfig.

    A plain transformers directory (no modules.json) gets mean pooling and normalisation, the common choice
    for embedding models, and a log line saying so.
    """
    modules_path = directory / "modules.json"
    max_seq_length = config.max_position_embeddings
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq_length = int(_read_json(st_config).get("max_seq_length") or max_seq_length)
    if max_seq_length > config.max_position_embeddings:
        raise CheckpointError(
            f"{st_config}: max_seq_length {max_seq_length} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    if not modules_path.is_file():
        log.info("%s has no modules.json: using mean pooling with normalisation", directory)
        return PoolingConfig(mode="mean", normalize=True, max_seq_length=max_seq_length)
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_path}: expected a list of modules")
    types = [str(m.get("type", "")) for m in modules]
    normalize = any(t.endswith(".Normalize") for t in types)
    pooling_modules = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling_modules:
        return PoolingConfig(mode="mean", normalize=normalize, max_seq_length=max_seq_length)
    pooling_path = directory / str(pooling_modules[0].get("path", "")) / "config.json"
    raw = _read_json(pooling_path)
    if raw.get("pooling_mode_mean_sqrt_len_tokens") or raw.get("pooling_mode_weightedmean_tokens") or raw.get(
        "pooling_mode_lasttoken"
    ):
        raise CheckpointError(f"{pooling_path}: unsupported pooling mode (supported: mean, cls, max)")
    chosen: list[PoolingMode] = [
        mode
        for mode, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                          ("max", "pooling_mode_max_tokens"))
        if raw.get(key)
    ]
    if len(chosen) != 1:
        raise CheckpointError(f"{pooling_path}: exactly one pooling mode must be set, found {chosen or 'none'}")
    return PoolingConfig(mode=chosen[0], normalize=normalize, max_seq_length=max_seq_length)


def _read_weights(directory: Path) -> tuple[Path, dict[str, Tensor]]:
    safetensors_path = directory / "model.safetensors"
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return safetensors_path, load_file(str(safetensors_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{safetensors_path}: corrupt or unreadable safetensors file ({exc})") from exc
    bin_path = directory / "pytorch_model.bin"
    if bin_path.is_file():
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a broken pickle/zip
            raise CheckpointError(f"{bin_path}: corrupt or unreadable weights file ({exc})") from exc
        return bin_path, state
    raise CheckpointError(f"{directory}: no weights file (model.safetensors or pytorch_model.bin)")


def _our_key(hf_key: str) -> str | None:
    """Map one Hugging Face key to ours; None for keys we knowingly ignore; raise for keys we do not know."""
    key = hf_key.removeprefix("bert.")
    if _IGNORED_KEYS.match(key):
        return None
    for theirs, ours in _EMBEDDING_KEYS.items():
        if key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    match = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
    if match:
        index, module, param = match.groups()
        if module in _LAYER_KEYS:
            return f"layers.{index}.{_LAYER_KEYS[module]}.{param}"
    return ""


def map_state_dict(state: dict[str, Tensor], encoder: Encoder, weights_file: Path) -> dict[str, Tensor]:
    """Rename, then check that every parameter is present exactly once with its shape, and nothing is left over."""
    expected = encoder.state_dict()
    mapped: dict[str, Tensor] = {}
    for hf_key, tensor in state.items():
        ours = _our_key(hf_key)
        if ours is None:
            continue
        if ours == "" or ours not in expected:
            raise CheckpointError(f"{weights_file}: unexpected key {hf_key!r} (not part of a BERT encoder)")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise CheckpointError(
                f"{weights_file}: key {hf_key!r} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[ours].shape)}"
            )
        mapped[ours] = tensor.to(torch.float32)
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise CheckpointError(f"{weights_file}: missing key(s) {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return mapped


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Load a BERT-family checkpoint directory exactly, or raise CheckpointError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    config = read_encoder_config(directory)
    pooling = read_pooling_config(directory, config)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file}: file not found (a fast tokenizer file is required)")
    _check_tokenizer(tokenizer_file, config)
    weights_file, state = _read_weights(directory)
    encoder = Encoder(config, pooling=pooling.mode)
    encoder.load_state_dict(map_state_dict(state, encoder, weights_file), strict=True)
    encoder.eval()
    return LoadedCheckpoint(
        encoder=encoder,
        config=config,
        pooling=pooling,
        model_name=directory.name,
        source_dir=directory,
        weights_file=weights_file,
        tokenizer_file=tokenizer_file,
    )


def _check_tokenizer(path: Path, config: EncoderConfig) -> None:
    """A tokenizer whose ids run past the embedding table would fail only at the first unlucky request."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise CheckpointError(f"{path}: cannot be read as a tokenizers file ({exc})") from exc
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:
        raise CheckpointError(
            f"{path}: vocabulary of {size} tokens exceeds config.json vocab_size {config.vocab_size}"
        )
