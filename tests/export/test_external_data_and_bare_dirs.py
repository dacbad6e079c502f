"""Graphs over the protobuf limit keep their weights in external data (forced here with a low threshold), and
a bare transformers directory gets its family's pooling default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from export.pipeline import ExportOptions, run_export
from model import load_checkpoint
from tests.families.builders import build_checkpoint, mixed_texts
from tests.server_process import ServerProcess


def test_external_data_export_is_checksummed_and_served(tmp_path: Path) -> None:
    checkpoint = build_checkpoint("qwen3", tmp_path / "qwen3")
    artifact = run_export(ExportOptions(model_dir=checkpoint, out_dir=tmp_path / "artifact", model_name="qwen3-ext",
                                        int8_min_cosine=0.0, external_data_threshold=1000))
    manifest = json.loads((artifact / "manifest.json").read_text())
    for entry in manifest["graphs"].values():
        graph = artifact / entry["file"]
        data = artifact / f"{entry['file']}.data"
        assert data.is_file(), entry["file"]
        assert data.name in manifest["files"], entry["file"]
        assert graph.stat().st_size < data.stat().st_size  # the weights are outside the protobuf
        assert entry["size_bytes"] == graph.stat().st_size + data.stat().st_size
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 6, 7, 8]], dtype=np.int64)
    (vector,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert np.isfinite(vector).all()
    server = ServerProcess(artifact, tmp_path / "server.log", EMBED_INTRA_OP_THREADS="1").wait_ready()
    try:
        reply = httpx.post(f"{server.base_url}/v1/embeddings", json={"input": mixed_texts()[:3]}, timeout=30)
        assert reply.status_code == 200
        assert len(reply.json()["data"]) == 3
    finally:
        server.stop_and_check()


def test_bare_decoder_directory_pools_the_last_token(tmp_path: Path) -> None:
    checkpoint = build_checkpoint("qwen3", tmp_path / "st")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, bare / name)
    loaded = load_checkpoint(bare)
    assert loaded.pooling.mode == "lasttoken"
    assert loaded.pooling.normalize
    # No sentence_bert_config.json: the tokenizer's model_max_length, not the 32k rotary positions.
    assert loaded.pooling.max_seq_length == json.loads((bare / "tokenizer_config.json").read_text())[
        "model_max_length"]
