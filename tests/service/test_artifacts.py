"""Artifact verification: every listed file must exist and match its sha256, and errors name the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from service.artifacts import load_manifest
from service.errors import ArtifactError


def _write_artifact(directory: Path) -> Path:
    files = {"model.onnx": b"graph-bytes", "tokenizer.json": b"{}"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {
        "format_version": 1,
        "model_name": "fake",
        "embedding_dim": 8,
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 16,
        "config": {"num_layers": 2, "num_heads": 2, "pad_token_id": 0},
        "graphs": {"fp32": {"file": "model.onnx", "outputs": [{"name": "sentence_embedding"}], "default": True}},
        "special_tokens": {"pad": 0},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_valid_artifact_loads(tmp_path: Path) -> None:
    m = load_manifest(_write_artifact(tmp_path))
    assert m.model_name == "fake" and m.embedding_dim == 8 and m.max_seq_length == 16
    assert m.graph("fp32").path == tmp_path / "model.onnx"
    assert m.graph("fp32").outputs == ("sentence_embedding",)


def test_missing_file_is_named(tmp_path: Path) -> None:
    _write_artifact(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"missing: .*model\.onnx"):
        load_manifest(tmp_path)


def test_checksum_mismatch_is_named(tmp_path: Path) -> None:
    _write_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"graph-bytes, truncated or swapped")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for .*model\.onnx"):
        load_manifest(tmp_path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest missing"):
        load_manifest(tmp_path)


def test_unknown_graph_variant_lists_the_available_ones(tmp_path: Path) -> None:
    m = load_manifest(_write_artifact(tmp_path))
    with pytest.raises(ArtifactError, match=r"'int8' not in .*have: fp32"):
        m.graph("int8")


def test_unsupported_format_version(tmp_path: Path) -> None:
    _write_artifact(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="format_version"):
        load_manifest(tmp_path)
