"""Task exports (rerank, classify, sparse) of the task builders' checkpoints: the manifest contract the service
reads (docs/contract.md §1 "Task heads") and every graph against our torch head on inputs unlike the export's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from export.__main__ import main
from export.pipeline import ExportOptions, run_export
from model.task_checkpoint import load_task_checkpoint
from tests.families.task_builders import CLASSIFIER_LABELS, EXPECTED_TASK, TASK_CHECKPOINTS, task_checkpoint

TOLERANCE = 1e-4
PAIRS = [("best pizza in town", "I love pizza 🍕 and coffee, every evening."),
         ("capital of France?", "Paris is the capital of France."),
         ("a", "the the the the the the the the the the the the the the the the")]
TEXTS = ["sunflowers and tomatoes in the garden", "安녕하세요 세계", "SELECT * FROM users;"]


def _root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "task-checkpoints"


@pytest.fixture(scope="module", params=sorted(TASK_CHECKPOINTS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    source = task_checkpoint(request.param, _root(tmp_path_factory))
    out = tmp_path_factory.mktemp("task-artifacts") / request.param
    run_export(ExportOptions(model_dir=source, out_dir=out, model_name=request.param, variants=False))
    return source, out


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def _feeds(out: Path, manifest: dict[str, Any], sparse: bool) -> dict[str, np.ndarray]:
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    encodings = tok.encode_batch(TEXTS) if sparse else tok.encode_batch(PAIRS)
    width = max(len(e.ids) for e in encodings)
    pad = manifest["special_tokens"].get("pad", 0)
    ids = np.full((len(encodings), width), pad, dtype=np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        ids[row, :len(enc.ids)], mask[row, :len(enc.ids)], types[row, :len(enc.ids)] = enc.ids, 1, enc.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {i["name"]: feeds[i["name"]] for i in manifest["inputs"] if i["name"] != "top_k"}


def test_manifest_contract(exported: tuple[Path, Path]) -> None:
    source, out = exported
    manifest = _manifest(out)
    task = EXPECTED_TASK[source.name]
    assert manifest["task"] == task
    for key in ("model_name", "embedding_dim", "pooling", "max_seq_length", "graphs", "files", "inputs",
                "special_tokens", "padding_side"):
        assert key in manifest, key
    assert manifest["embedding_dim"] == manifest["hidden_size"]
    assert set(manifest["graphs"]) == {"fp32", "fp32-fused", "attention"}
    names = [i["name"] for i in manifest["inputs"]]
    assert names[:2] == ["input_ids", "attention_mask"]
    assert ("token_type_ids" in names) == (manifest["config"]["type_vocab_size"] > 1)
    if task == "sparse":
        assert names[-1] == "top_k"
        assert manifest["inputs"][-1]["shape"] == [1]
        assert manifest["sparse"] == {"vocab_size": manifest["config"]["vocab_size"], "pooling_strategy": "max",
                                      "activation": "relu"}
        assert not manifest.get("labels")
        wanted = ["last_hidden_state", "sparse_values", "sparse_indices"]
    else:
        expected_labels = [CLASSIFIER_LABELS[i] for i in range(3)] if task == "classify" else ["LABEL_0"]
        assert manifest["labels"] == expected_labels
        assert manifest["score_activation"] == ("softmax" if task == "classify" else "sigmoid")
        wanted = ["last_hidden_state", "logits"]
    for key, graph in manifest["graphs"].items():
        outputs = [o["name"] for o in graph["outputs"]]
        assert outputs == wanted + (["attentions"] if key == "attention" else []), key
        session = ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == outputs
        assert [i.name for i in session.get_inputs()] == names


def test_graphs_match_torch(exported: tuple[Path, Path]) -> None:
    source, out = exported
    manifest = _manifest(out)
    sparse = manifest["task"] == "sparse"
    loaded = load_task_checkpoint(source)
    feeds = _feeds(out, manifest, sparse)
    args = [torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]),
            torch.from_numpy(feeds["token_type_ids"]) if "token_type_ids" in feeds else None]
    worst = 0.0
    for graph in manifest["graphs"].values():
        session = ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        if sparse:
            vocab = manifest["sparse"]["vocab_size"]
            with torch.no_grad():
                want = loaded.model.sparse_embedding(*args)[0].numpy()
            for k in (8, vocab + 100):
                values, indices = session.run(["sparse_values", "sparse_indices"],
                                              {**feeds, "top_k": np.array([k], dtype=np.int64)})
                assert values.shape == indices.shape == (len(TEXTS), min(k, vocab))
                assert indices.dtype == np.int64
                assert (np.diff(values, axis=1) <= 0).all()
                rows = np.arange(len(TEXTS))[:, None]
                worst = max(worst, float(np.abs(want[rows, indices] - values).max()))
                if k >= vocab:  # the whole vector: the same ids carry weight in both (near-ties may reorder)
                    for row in range(len(TEXTS)):
                        assert set(indices[row][values[row] > 1e-3]) <= set(np.flatnonzero(want[row] > 0))
                        assert set(np.flatnonzero(want[row] > 1e-3)) <= set(indices[row][values[row] > 0])
        else:
            with torch.no_grad():
                want = loaded.model(*args).logits.numpy()
            (logits,) = session.run(["logits"], feeds)
            assert logits.shape == (len(PAIRS), len(manifest["labels"]))
            worst = max(worst, float(np.abs(logits - want).max()))
    assert worst <= TOLERANCE, f"{source.name}: ONNX vs torch {worst:.2e}"
    for graph in manifest["graphs"].values():
        figures = graph["parity"]
        key = "max_abs_diff_sparse_vs_torch" if sparse else "max_abs_diff_logits_vs_torch"
        assert figures[key] <= TOLERANCE


def test_embed_manifest_has_task_and_quantization_ranges(tiny_artifact_dir: Path) -> None:
    manifest = _manifest(tiny_artifact_dir)
    assert manifest["task"] == "embed"
    assert not manifest.get("labels")
    ranges = manifest["quantization_ranges"]
    dim = manifest["embedding_dim"]
    assert len(ranges["min"]) == len(ranges["max"]) == dim
    assert ranges["calibration_texts"] >= 300
    low, high = np.array(ranges["min"]), np.array(ranges["max"])
    assert (low < high).all()
    assert (np.abs(np.concatenate([low, high])) <= 1.0 + 1e-6).all()  # normalised


def test_task_override_and_auto_via_cli(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """--task embed exports a classifier's encoder as an embedding model; --task sparse on a classifier fails
    with exit 2 (its checkpoint has no MLM head)."""
    source = task_checkpoint("distilbert-classifier", _root(tmp_path_factory))
    out = tmp_path / "as-embed"
    assert main(["--model", str(source), "--out", str(out), "--skip-variants", "--task", "embed"]) == 0
    manifest = _manifest(out)
    assert manifest["task"] == "embed"
    assert "quantization_ranges" in manifest
    assert "sentence_embedding" in [o["name"] for o in manifest["graphs"]["fp32"]["outputs"]]
    assert main(["--model", str(source), "--out", str(tmp_path / "bad"), "--skip-variants",
                 "--task", "sparse"]) == 2
