"""Load a Hugging Face / sentence-transformers directory into our Encoder, refusing anything we would load
only partly.

Reads config.json (its model_type picks the family recipe), model.safetensors (or pytorch_model.bin),
tokenizer.json and the sentence-transformers files (modules.json, Pooling and Dense module configs and
weights, sentence_bert_config.json). Every failure names the file and the key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.config import DenseActivation, DenseConfig, EncoderConfig, PoolingConfig, PoolingMode
from model.encoder import Encoder
from model.families import SUPPORTED_MODEL_TYPES, Family, family_for
from model.families.base import CheckpointError, require

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED_MODEL_TYPES", "CheckpointError", "LoadedCheckpoint", "load_checkpoint"]

_POOLING_KEYS: tuple[tuple[PoolingMode, str], ...] = (
    ("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"), ("max", "pooling_mode_max_tokens"),
    ("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"),
    ("weightedmean", "pooling_mode_weightedmean_tokens"), ("lasttoken", "pooling_mode_lasttoken"),
)
_POOLING_MODES: dict[str, PoolingMode] = {mode: mode for mode, _ in _POOLING_KEYS}
# sentence-transformers stores a Dense activation as its class path.
_DENSE_ACTIVATIONS: dict[str, DenseActivation] = {
    "torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu", "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
_TRANSFORMER_MODULE = ".Transformer"


@dataclass(frozen=True)
class LoadedCheckpoint:
    encoder: Encoder
    config: EncoderConfig
    pooling: PoolingConfig
    family: Family
    model_name: str
    source_dir: Path
    weights_file: Path
    tokenizer_file: Path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) and not isinstance(data, list):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_encoder_config(directory: Path) -> tuple[Family, EncoderConfig]:
    """config.json -> (family, EncoderConfig), refusing architectures whose weights we could not place exactly."""
    path = directory / "config.json"
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    family = family_for(require(raw, "model_type", path), path)
    return family, family.read_config(raw, path)


def _read_dense(directory: Path, module: dict[str, Any], in_features: int) -> tuple[DenseConfig, dict[str, Tensor]]:
    module_dir = directory / str(module.get("path", ""))
    path = module_dir / "config.json"
    raw = _read_json(path)
    if raw.get("use_residual"):
        raise CheckpointError(f"{path}: unsupported use_residual=true")
    name = raw.get("activation_function", "torch.nn.modules.activation.Tanh")
    if name not in _DENSE_ACTIVATIONS:
        raise CheckpointError(f"{path}: unsupported activation_function={name!r}")
    try:
        config = DenseConfig(in_features=int(require(raw, "in_features", path)),
                             out_features=int(require(raw, "out_features", path)),
                             bias=bool(raw.get("bias", True)), activation=_DENSE_ACTIVATIONS[name])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if config.in_features != in_features:
        raise CheckpointError(f"{path}: in_features {config.in_features} but the previous module gives {in_features}")
    if not any((module_dir / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{module_dir}: missing Dense weights (model.safetensors or pytorch_model.bin)")
    weights_file, state = _read_weights(module_dir)
    expected: dict[str, tuple[int, ...]] = {"linear.weight": (config.out_features, config.in_features)}
    if config.bias:
        expected["linear.bias"] = (config.out_features,)
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{weights_file}: missing Dense key {key!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{weights_file}: key {key!r} has shape {tuple(state[key].shape)}, "
                                  f"{path.name} implies {shape}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{weights_file}: unexpected Dense key(s) {', '.join(unexpected)}")
    return config, {k: state[k] for k in expected}


def read_max_seq_length(directory: Path, config: EncoderConfig) -> int:
    """sentence-transformers' own rule: sentence_bert_config.json's max_seq_length, else the tokenizer's
    model_max_length (what sentence-transformers 6 saves instead), never past the positions the model has."""
    limit = config.max_position_embeddings
    if config.position_ids == "padding_offset":
        limit -= config.pad_token_id + 1  # RoBERTa's ids start after padding_idx
    st_config = directory / "sentence_bert_config.json"
    declared = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    if not declared:
        tokenizer_config = directory / "tokenizer_config.json"
        model_max = _read_json(tokenizer_config).get("model_max_length") if tokenizer_config.is_file() else None
        # transformers writes a huge sentinel (1e30) when the length is unknown.
        if isinstance(model_max, int | float) and 0 < model_max < 1_000_000:
            declared = min(int(model_max), limit)
    max_seq_length = int(declared or limit)
    if max_seq_length > limit:
        raise CheckpointError(f"{st_config}: max_seq_length {max_seq_length} exceeds the {limit} positions "
                              f"config.json allows")
    return max_seq_length


def read_pooling_config(directory: Path, config: EncoderConfig,
                        default_mode: PoolingMode = "mean") -> tuple[PoolingConfig, list[dict[str, Tensor]]]:
    """sentence-transformers modules.json and its modules -> (PoolingConfig, Dense weights in order).

    A plain transformers directory (no modules.json) gets the family's default pooling (mean for encoders,
    last token for decoders) and normalisation, and a log line saying so. A module we do not implement stops
    the load.
    """
    modules_path = directory / "modules.json"
    max_seq_length = read_max_seq_length(directory, config)
    if not modules_path.is_file():
        log.info("%s has no modules.json: using %s pooling with normalisation", directory, default_mode)
        return PoolingConfig(mode=default_mode, normalize=True, max_seq_length=max_seq_length), []
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_path}: expected a list of modules")
    mode: PoolingMode = "mean"
    include_prompt = True
    normalize = False
    dense: list[DenseConfig] = []
    dense_weights: list[dict[str, Tensor]] = []
    width = config.hidden_size
    seen_pooling = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(_TRANSFORMER_MODULE):
            continue
        if kind.endswith(".Pooling"):
            mode, include_prompt = _read_pooling_module(directory / str(module.get("path", "")) / "config.json")
            seen_pooling = True
        elif kind.endswith(".Dense"):
            dense_config, weights = _read_dense(directory, module, width)
            dense.append(dense_config)
            dense_weights.append(weights)
            width = dense_config.out_features
        elif kind.endswith(".Normalize"):
            normalize = True
        else:
            raise CheckpointError(f"{modules_path}: unsupported module type {kind!r} "
                                  "(supported: Transformer, Pooling, Dense, Normalize)")
    if dense and not seen_pooling:
        raise CheckpointError(f"{modules_path}: a Dense module needs a Pooling module before it")
    pooling = PoolingConfig(mode=mode, normalize=normalize, max_seq_length=max_seq_length,
                            include_prompt=include_prompt, dense=tuple(dense))
    return pooling, dense_weights


def _read_pooling_module(path: Path) -> tuple[PoolingMode, bool]:
    raw = _read_json(path)
    # sentence-transformers 6 writes `pooling_mode` (a name or a list); older releases one boolean per mode.
    modern = raw.get("pooling_mode")
    if modern is not None:
        chosen = [modern] if isinstance(modern, str) else list(modern) if isinstance(modern, list) else [modern]
        unknown = [m for m in chosen if m not in dict(_POOLING_KEYS)]
        if unknown:
            raise CheckpointError(f"{path}: unsupported pooling_mode {unknown} "
                                  f"(supported: {', '.join(m for m, _ in _POOLING_KEYS)})")
    else:
        chosen = [mode for mode, key in _POOLING_KEYS if raw.get(key)]
    if len(chosen) != 1:
        raise CheckpointError(f"{path}: exactly one pooling mode must be set, found {chosen or 'none'}")
    return _POOLING_MODES[chosen[0]], bool(raw.get("include_prompt", True))


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


def map_state_dict(state: dict[str, Tensor], encoder: Encoder, weights_file: Path,
                   family: Family) -> dict[str, Tensor]:
    """Rename, then check that every parameter is present exactly once with its shape, and nothing is left over."""
    expected = {k: v for k, v in encoder.state_dict().items() if not k.startswith("dense.")}
    mapped: dict[str, Tensor] = {}
    for hf_key, tensor in state.items():
        targets = family.rename(hf_key)
        if targets is None:
            continue
        if not targets or any(ours not in expected for ours, _, _ in targets):
            raise CheckpointError(f"{weights_file}: unexpected key {hf_key!r} (not part of a {family.name} encoder)")
        for ours, part, parts in targets:
            if tensor.shape[0] % parts:
                raise CheckpointError(f"{weights_file}: key {hf_key!r} of shape {tuple(tensor.shape)} cannot be "
                                      f"split into {parts} equal parts")
            piece = tensor.chunk(parts, dim=0)[part] if parts > 1 else tensor
            if tuple(piece.shape) != tuple(expected[ours].shape):
                raise CheckpointError(
                    f"{weights_file}: key {hf_key!r} has shape {tuple(tensor.shape)}, "
                    f"config.json implies {tuple(expected[ours].shape)}" + (f" x {parts}" if parts > 1 else "")
                )
            if ours in mapped:
                raise CheckpointError(f"{weights_file}: key {hf_key!r} maps onto {ours!r} twice")
            mapped[ours] = piece.to(torch.float32).contiguous()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise CheckpointError(f"{weights_file}: missing key(s) {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return mapped


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Load a supported checkpoint directory exactly, or raise CheckpointError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    family, config = read_encoder_config(directory)
    pooling, dense_weights = read_pooling_config(directory, config, family.default_pooling)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{tokenizer_file}: file not found (a fast tokenizer file is required)")
    _check_tokenizer(tokenizer_file, config)
    weights_file, state = _read_weights(directory)
    encoder = Encoder(config, pooling=pooling)
    mapped = map_state_dict(state, encoder, weights_file, family)
    for index, weights in enumerate(dense_weights):
        mapped.update({f"dense.{index}.{k}": v.to(torch.float32) for k, v in weights.items()})
    encoder.load_state_dict(mapped, strict=True)
    encoder.eval()
    return LoadedCheckpoint(
        encoder=encoder,
        config=config,
        pooling=pooling,
        family=family,
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
