"""The export on the tiny model: ONNX vs PyTorch at unseen shapes, manifest, idempotence and determinism."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from bench.parity_corpus import parity_sentences
from export.manifest import sha256_file
from export.pipeline import ExportOptions, run_export
from tests.export.onnx_helpers import padded_batch, run, session, torch_outputs

# (rows, sentences seed): batch shapes unlike the export's 3 x 11 dummy, including a single row.
SHAPES = [(1, 11), (2, 12), (9, 13), (16, 14)]


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint_dir: Path):
    from model import load_checkpoint

    return load_checkpoint(tiny_checkpoint_dir).encoder


@pytest.mark.parametrize(("rows", "seed"), SHAPES)
def test_fp32_graphs_and_attention_graph_match_torch(tiny_artifact_dir: Path, encoder, rows: int, seed: int) -> None:
    feeds = padded_batch(tiny_artifact_dir / "tokenizer.json", parity_sentences(rows, seed=seed), 128)
    want = torch_outputs(encoder, feeds)
    real = feeds["attention_mask"].astype(bool)
    for name in ("model.onnx", "model_fused.onnx"):
        got = run(session(tiny_artifact_dir / name), feeds)
        assert np.abs(got["sentence_embedding"] - want.sentence_embedding.numpy()).max() <= 1e-4, name
        assert np.abs(got["last_hidden_state"] - want.last_hidden_state.numpy())[real].max() <= 1e-4, name
    exact = run(session(tiny_artifact_dir / "model_attention.onnx"), feeds)
    got = exact["attentions"].transpose(1, 3, 0, 2, 4)[real]  # (real queries, L, H, T)
    ref = want.attentions.numpy().transpose(1, 3, 0, 2, 4)[real]
    assert exact["attentions"].shape == tuple(want.attentions.shape)
    assert np.abs(got - ref).max() <= 1e-5


def test_int8_is_close_to_fp32(tiny_artifact_dir: Path, encoder) -> None:
    feeds = padded_batch(tiny_artifact_dir / "tokenizer.json", parity_sentences(24, seed=3), 128)
    ref = torch_outputs(encoder, feeds).sentence_embedding.numpy()
    got = run(session(tiny_artifact_dir / "model_int8.onnx"), feeds)["sentence_embedding"]
    cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.mean() >= 0.99


def test_graphs_have_dynamic_axes_and_fused_attention(tiny_artifact_dir: Path) -> None:
    for name in ("model.onnx", "model_fused.onnx", "model_attention.onnx", "model_int8.onnx", "model_fp16.onnx"):
        graph = onnx.load(str(tiny_artifact_dir / name), load_external_data=False).graph
        for tensor in graph.input:
            dims = [d.dim_param for d in tensor.type.tensor_type.shape.dim]
            assert dims == ["batch_size", "sequence_length"], (name, tensor.name, dims)
    fused_ops = {n.op_type for n in onnx.load(str(tiny_artifact_dir / "model_fused.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= fused_ops
    for name in ("model.onnx", "model_attention.onnx"):  # as exported: onnxruntime optimizes at load
        exact_ops = {n.op_type for n in onnx.load(str(tiny_artifact_dir / name)).graph.node}
        assert "Attention" not in exact_ops, name
        assert "Softmax" in exact_ops, name


def test_manifest_describes_and_checksums_everything(tiny_artifact_dir: Path) -> None:
    manifest = json.loads((tiny_artifact_dir / "manifest.json").read_text())
    assert manifest["model_name"] == "tiny-bert"
    assert manifest["embedding_dim"] == 48
    assert manifest["config"]["num_layers"] == 2
    assert manifest["pooling"] == "mean"
    assert manifest["normalize"] is True
    assert manifest["max_seq_length"] == 128
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(manifest["graphs"]) == {"fp32", "fp32-fused", "attention", "int8", "fp16", "explain"}
    explain = manifest["graphs"]["explain"]
    assert explain["file"] == "model_explain.onnx"
    assert [i["name"] for i in explain["inputs"]] == ["input_ids", "attention_mask", "query_index", "token_type_ids"]
    assert max(explain["parity"]["max_abs_vs_torch"].values()) <= 1e-4
    assert explain["parity"]["max_abs_vs_torch"]["probs"] <= 1e-5
    assert [k for k, g in manifest["graphs"].items() if g["default"]] == ["fp32"]
    for key in ("fp32", "fp32-fused"):
        assert manifest["graphs"][key]["parity"]["max_abs_diff_sentence_vs_torch"] <= 1e-4
    assert manifest["graphs"]["attention"]["parity"]["max_abs_diff_attentions_vs_torch"] <= 1e-5
    assert {"mean_cosine_vs_fp32", "min_cosine_vs_fp32"} <= set(manifest["graphs"]["int8"]["parity"])
    # fp16 is for CUDA; on the CPU its interface is checked and, where CPU kernels run it, its vectors.
    fp16 = manifest["graphs"]["fp16"]["parity"]
    assert fp16["interface_matches_manifest"] is True
    assert fp16.get("cpu_min_cosine_vs_torch", 1.0) >= 0.999 or "not runnable" in fp16.get("cpu", "")
    for key in ("fp32", "fp32-fused", "attention", "int8"):
        assert manifest["graphs"][key]["latency_ms"]["median"] > 0
    assert {"torch", "onnx", "onnxruntime", "tokenizers"} <= set(manifest["versions"])
    files = {p.name for p in tiny_artifact_dir.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for name, digest in manifest["files"].items():
        assert sha256_file(tiny_artifact_dir / name) == digest


def test_tokenizer_has_no_built_in_truncation_or_padding(tiny_artifact_dir: Path) -> None:
    data = json.loads((tiny_artifact_dir / "tokenizer.json").read_text())
    assert data["truncation"] is None
    assert data["padding"] is None


def test_rerun_skips_work_and_changes_nothing(tiny_artifact_dir: Path, tiny_checkpoint_dir: Path) -> None:
    before = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in tiny_artifact_dir.iterdir()}
    start = time.perf_counter()
    run_export(ExportOptions(model_dir=tiny_checkpoint_dir, out_dir=tiny_artifact_dir, model_name="tiny-bert",
                             int8_min_cosine=0.0))
    assert time.perf_counter() - start < 5  # checksums only, no export (the export itself takes longer)
    after = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in tiny_artifact_dir.iterdir()}
    assert after == before


def test_export_is_deterministic(tiny_artifact_dir: Path, tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    again = run_export(ExportOptions(model_dir=tiny_checkpoint_dir, out_dir=tmp_path / "again",
                                     model_name="tiny-bert", int8_min_cosine=0.0, force=True))
    first = json.loads((tiny_artifact_dir / "manifest.json").read_text())["files"]
    second = json.loads((again / "manifest.json").read_text())["files"]
    assert first == second  # every graph, the tokenizer: byte for byte


def test_a_too_lossy_int8_is_dropped_not_fatal(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    out = run_export(ExportOptions(model_dir=tiny_checkpoint_dir, out_dir=tmp_path / "strict", model_name="tiny-bert",
                                   int8_min_cosine=1.01))  # no int8 graph reaches a cosine above 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert "int8" not in manifest["graphs"]
    assert not (out / "model_int8.onnx").exists()
    assert "int8" in manifest["dropped_variants"]
    assert "fp16" in manifest["graphs"]
    assert "model_int8.onnx" not in manifest["files"]


def test_an_fp16_graph_with_the_wrong_interface_fails_validation(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    import onnx

    from export.validate import validate_fp16_on_cpu

    model = onnx.load(str(tiny_artifact_dir / "model_fp16.onnx"))
    model.graph.output[1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16  # as if keep_io_types were off
    broken = tmp_path / "model_fp16.onnx"
    onnx.save(model, str(broken))
    failures: list[str] = []
    figures = validate_fp16_on_cpu(broken, _tiny_batches(tiny_artifact_dir), [], failures)
    assert figures["interface_matches_manifest"] is False
    assert failures
    assert "fp16" in failures[0]


def _tiny_batches(artifact: Path) -> list:
    from tokenizers import Tokenizer

    from export.validate import make_batches

    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    return make_batches(tokenizer, ("one sentence", "and another one"), 32, sizes=(2,))
