"""Load and verify the artifact directory (docs/contract.md §1) before anything is built from it.

The service trusts nothing it has not checksummed: a truncated or swapped model file must be reported as
"checksum mismatch for model.onnx", not as onnxruntime's "Protobuf parsing failed" three layers down.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ArtifactError

logger = logging.getLogger(__name__)

SUPPORTED_FORMAT_VERSION = 1
_REQUIRED_KEYS = ("model_name", "embedding_dim", "pooling", "max_seq_length", "graphs", "files")
_HASH_CHUNK_BYTES = 1 << 20
# prompt_length: (B,) prompt tokens per row, for pooling that leaves the prompt out (include_prompt=false).
# top_k: [1], how many of a sparse model's largest vocabulary weights its graph returns.
_FEEDABLE_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "prompt_length", "top_k"})
# What a model's graphs compute (docs/contract.md §1, "Task heads"); manifests before tasks existed are "embed".
TASKS = ("embed", "rerank", "classify", "sparse")


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph variant from the manifest's `graphs` table."""

    key: str
    path: Path
    outputs: tuple[str, ...]
    providers: tuple[str, ...]
    default: bool = False


@dataclass(frozen=True)
class Manifest:
    """The parts of manifest.json the service uses; `raw` keeps the rest for /info."""

    directory: Path
    model_name: str
    embedding_dim: int
    pooling: str
    normalize: bool
    max_seq_length: int
    num_layers: int
    num_heads: int
    pad_token_id: int
    graphs: dict[str, GraphSpec]
    tokenizer_path: Path
    # The graph inputs in order (input_ids, attention_mask, and token_type_ids only where the model has segments)
    # and the side padding goes on (left for decoders pooled from their last token).
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    padding_side: str = "right"
    special_tokens: dict[str, int] = field(default_factory=dict)
    # sentence-transformers prompts (config_sentence_transformers.json): name -> text prepended to an input.
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    task: str = "embed"
    labels: tuple[str, ...] = ()  # rerank / classify: label names in logit order (config.json id2label)
    # Per-dimension (min, max) of the model's embeddings over the export's calibration texts, for int8/uint8.
    quantization_ranges: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def graph(self, key: str) -> GraphSpec:
        try:
            return self.graphs[key]
        except KeyError:
            raise ArtifactError(
                f"graph variant {key!r} not in {self.directory / 'manifest.json'} "
                f"(have: {', '.join(sorted(self.graphs))})"
            ) from None


def sha256_file(path: Path) -> str:
    """Stream the file so a 400 MB model does not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(directory: Path, files: dict[str, str]) -> None:
    """Check every listed file exists and matches its sha256; raise on the first problem, naming the file."""
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"artifact file missing: {path}")
        actual = sha256_file(path)
        if actual != str(expected).lower():
            raise ArtifactError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")


def load_manifest(directory: Path, *, verify: bool = True) -> Manifest:
    """Read manifest.json, verify checksums (unless told not to) and return the typed view of it."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"manifest missing: {manifest_path}")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"manifest unreadable: {manifest_path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"manifest is not a JSON object: {manifest_path}")
    version = raw.get("format_version", SUPPORTED_FORMAT_VERSION)
    if version != SUPPORTED_FORMAT_VERSION:
        raise ArtifactError(f"unsupported manifest format_version {version!r} in {manifest_path}")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise ArtifactError(f"manifest {manifest_path} lacks keys: {', '.join(missing)}")

    files = raw["files"]
    if not isinstance(files, dict) or "tokenizer.json" not in files:
        raise ArtifactError(f"manifest {manifest_path} must list tokenizer.json under 'files'")
    if verify:
        verify_files(directory, files)

    graphs: dict[str, GraphSpec] = {}
    for key, spec in raw["graphs"].items():
        file_name = spec.get("file")
        if not file_name:
            raise ArtifactError(f"graph {key!r} in {manifest_path} has no 'file'")
        if file_name not in files:
            raise ArtifactError(f"graph file {directory / file_name} is not checksummed in the manifest")
        graphs[key] = GraphSpec(
            key=key,
            path=directory / file_name,
            outputs=tuple(o["name"] if isinstance(o, dict) else str(o) for o in spec.get("outputs", [])),
            providers=tuple(spec.get("providers", [])),
            default=bool(spec.get("default", False)),
        )

    prompts = raw.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ArtifactError(f"'prompts' in {manifest_path} must map names to strings")
    default_prompt_name = raw.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ArtifactError(f"default_prompt_name {default_prompt_name!r} in {manifest_path} is not in 'prompts'")

    config = raw.get("config", {})
    special = raw.get("special_tokens", {})
    if not isinstance(special, dict) or not all(isinstance(v, int) for v in special.values()):
        raise ArtifactError(f"'special_tokens' in {manifest_path} must map roles to token ids")
    pad_id = special.get("pad", config.get("pad_token_id", 0))
    inputs = tuple(str(i["name"]) if isinstance(i, dict) else str(i) for i in raw.get("inputs", [])) or (
        "input_ids", "attention_mask", "token_type_ids")
    unknown = sorted(set(inputs) - _FEEDABLE_INPUTS)
    if unknown or inputs[:2] != ("input_ids", "attention_mask"):
        raise ArtifactError(f"graph inputs {list(inputs)} in {manifest_path} are not ones this server can feed "
                            f"(input_ids, attention_mask, token_type_ids, prompt_length, top_k)")
    task = raw.get("task", "embed")
    if task not in TASKS:
        raise ArtifactError(f"task {task!r} in {manifest_path} is not one this server serves ({', '.join(TASKS)})")
    labels = raw.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"'labels' in {manifest_path} must be a list of label names")
    if task in ("rerank", "classify") and not labels:
        raise ArtifactError(f"a {task} model needs 'labels' in {manifest_path}")
    ranges = raw.get("quantization_ranges")
    quantization_ranges = None
    if ranges is not None:
        try:
            low = np.asarray(ranges["min"], dtype=np.float32)
            high = np.asarray(ranges["max"], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"'quantization_ranges' in {manifest_path} must hold 'min' and 'max' lists") from None
        if low.shape != high.shape or low.ndim != 1 or not (high >= low).all():
            raise ArtifactError(f"'quantization_ranges' in {manifest_path}: min and max must be equal-length "
                                "lists with max >= min")
        quantization_ranges = (low, high)
    padding_side = raw.get("padding_side", "right")
    if padding_side not in ("left", "right"):
        raise ArtifactError(f"padding_side {padding_side!r} in {manifest_path} must be 'left' or 'right'")
    manifest = Manifest(
        directory=directory,
        model_name=str(raw["model_name"]),
        embedding_dim=int(raw["embedding_dim"]),
        pooling=str(raw["pooling"]),
        normalize=bool(raw.get("normalize", True)),
        max_seq_length=int(raw["max_seq_length"]),
        num_layers=int(config.get("num_layers", 0)),
        num_heads=int(config.get("num_heads", 0)),
        pad_token_id=int(pad_id),
        graphs=graphs,
        tokenizer_path=directory / "tokenizer.json",
        inputs=inputs,
        padding_side=str(padding_side),
        special_tokens=dict(special),
        prompts=dict(prompts),
        default_prompt_name=default_prompt_name,
        task=str(task),
        labels=tuple(labels),
        quantization_ranges=quantization_ranges,
        raw=raw,
    )
    logger.info(
        "artifact %s verified: model=%s task=%s dim=%d graphs=%s",
        directory, manifest.model_name, manifest.task, manifest.embedding_dim, ",".join(sorted(graphs)),
    )
    return manifest
