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
    assert m.model_name == "fake"
    assert m.embedding_dim == 8
    assert m.max_seq_length == 16
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


def _rewrite_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_prompts_are_read_and_an_old_manifest_has_none(tmp_path: Path) -> None:
    plain = load_manifest(_write_artifact(tmp_path))
    assert plain.prompts == {}
    assert plain.default_prompt_name is None
    _rewrite_manifest(tmp_path, prompts={"query": "query: "}, default_prompt_name="query")
    m = load_manifest(tmp_path)
    assert m.prompts == {"query": "query: "}
    assert m.default_prompt_name == "query"


@pytest.mark.parametrize(("prompts", "default", "needle"), [
    ({"query": 3}, None, "must map names to strings"),
    (["query: "], None, "must map names to strings"),
    ({"query": "query: "}, "passage", "'passage'"),
])
def test_bad_prompts_are_refused(tmp_path: Path, prompts: object, default: str | None, needle: str) -> None:
    _rewrite_manifest(_write_artifact(tmp_path), prompts=prompts, default_prompt_name=default)
    with pytest.raises(ArtifactError, match=needle):
        load_manifest(tmp_path)
