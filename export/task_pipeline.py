"""The export of a task model (rerank, classify, sparse): the embedding pipeline's steps with the task's graphs,
validation and manifest keys (docs/contract.md §1, "Task heads")."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export import onnx_export, optimize, tokenizer_info
from export.manifest import FORMAT_VERSION, io_spec, library_versions, sha256_file, write_manifest
from export.pipeline import (
    GRAPH_FILES,
    ExportOptions,
    _attention_pattern,
    _latency_batch,
    _write_tokenizer,
    read_prompts,
)
from export.validate import Batch, ValidationError, make_batches, make_pair_batches
from export.validate_task import quality_figure, validate_task
from export.validation_corpus import SENTENCES
from model.task_checkpoint import LoadedTaskCheckpoint, load_task_checkpoint

log = logging.getLogger(__name__)


def validation_pairs() -> tuple[tuple[str, str], ...]:
    """(query, document) pairs from the validation sentences: neighbours, so lengths and scripts mix, and the
    long ones make longest-first truncation cut both sides."""
    return tuple((SENTENCES[i], SENTENCES[(i * 5 + 3) % len(SENTENCES)]) for i in range(len(SENTENCES)))


def _outputs(name: str, checkpoint: LoadedTaskCheckpoint) -> list[dict[str, Any]]:
    outputs = [io_spec("last_hidden_state", "float32", ["batch_size", "sequence_length",
                                                          checkpoint.config.hidden_size])]
    if checkpoint.task == "sparse":
        outputs += [io_spec("sparse_values", "float32", ["batch_size", "k"]),
                    io_spec("sparse_indices", "int64", ["batch_size", "k"])]
    else:
        outputs.append(io_spec("logits", "float32", ["batch_size", len(checkpoint.labels)]))
    if name == "attention":
        outputs.append(io_spec("attentions", "float32",
                               ["num_layers", "batch_size", "num_heads", "sequence_length", "sequence_length"]))
    return outputs


def _graph_entry(name: str, checkpoint: LoadedTaskCheckpoint, parity: dict[str, Any], latency: dict[str, float],
                 out_dir: Path) -> dict[str, Any]:
    providers = {"fp16": ["CUDAExecutionProvider"], "int8": ["CPUExecutionProvider"]}.get(
        name, ["CPUExecutionProvider", "CUDAExecutionProvider"])
    entry: dict[str, Any] = {
        "file": GRAPH_FILES[name], "outputs": _outputs(name, checkpoint), "providers": providers,
        "default": name == "fp32",
        "size_bytes": sum(p.stat().st_size for p in out_dir.glob(GRAPH_FILES[name] + "*")),
        "parity": parity.get(name, {}),
    }
    if name in latency:
        entry["latency_ms"] = {"batch": 8, "sequence_length": 64, "provider": "CPUExecutionProvider",
                               "median": latency[name]}
    return entry


def _drop(build: Path, graphs: dict[str, Path], name: str) -> None:
    (build / GRAPH_FILES[name]).unlink()
    for data_file in build.glob(GRAPH_FILES[name] + ".data"):
        data_file.unlink()
    del graphs[name]


def run_task_export(options: ExportOptions, task: str, fingerprint: str) -> Path:
    """Load the task checkpoint, export its graphs, validate them against torch, write the manifest."""
    checkpoint = load_task_checkpoint(options.model_dir, task)
    prompts, default_prompt_name = read_prompts(options.model_dir)
    config = checkpoint.config
    model = checkpoint.model
    names = onnx_export.task_input_names(model, task)
    encoder_names = tuple(n for n in names if n != "top_k")
    side = tokenizer_info.padding_side(options.model_dir, checkpoint.family.padding_side)
    options.out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=options.out_dir.parent, prefix=f".{options.out_dir.name}.") as tmp:
        build = Path(tmp) / "build"
        build.mkdir()
        tokenizer = _write_tokenizer(checkpoint, build / "tokenizer.json")  # type: ignore[arg-type]
        graphs = {name: build / GRAPH_FILES[name] for name in ("fp32", "fp32-fused", "attention")}
        special = tokenizer_info.special_tokens(options.model_dir, tokenizer)
        threshold = options.external_data_threshold
        onnx_export.export_task_graph(model, task, graphs["fp32"], with_attentions=False,
                                      external_data_threshold=threshold)
        onnx_export.export_task_graph(model, task, graphs["attention"], with_attentions=True,
                                      external_data_threshold=threshold)
        fused_ops = optimize.fuse(graphs["fp32"], graphs["fp32-fused"], config,
                                  checkpoint.family.optimizer_model_type)
        if options.variants:
            optimize.to_int8(graphs["fp32-fused"], build / GRAPH_FILES["int8"])
            optimize.to_fp16(graphs["fp32-fused"], build / GRAPH_FILES["fp16"])
            graphs["int8"] = build / GRAPH_FILES["int8"]
            graphs["fp16"] = build / GRAPH_FILES["fp16"]
        max_len = checkpoint.max_seq_length
        pad_id = special.get("pad", config.pad_token_id)
        if task == "sparse":
            batches = make_batches(tokenizer, SENTENCES, max_len, sizes=(5, 4, 7), names=encoder_names,
                                   padding_side=side, pad_id=pad_id)
        else:
            batches = make_pair_batches(tokenizer, validation_pairs(), max_len, sizes=(5, 4, 7),
                                        names=encoder_names, padding_side=side, pad_id=pad_id)
        latency = _latency_batch(config.vocab_size, encoder_names)
        report = validate_task(model, task, graphs, batches, Batch(latency.input_ids, latency.attention_mask,
                                                                   encoder_names))
        dropped: dict[str, str] = {}
        for variant in ("int8", "fp16"):
            if variant not in graphs:
                continue
            figure = quality_figure(task, report.parity.get(variant, {}))
            if figure is not None and figure < options.int8_min_cosine:
                # As for embeddings: a lossy opt-in variant is left out rather than failing the export.
                dropped[variant] = f"{task} quality vs torch {figure:.4f} < {options.int8_min_cosine}"
                log.warning("%s variant dropped: %s", variant, dropped[variant])
                _drop(build, graphs, variant)
        if report.failures:
            raise ValidationError("; ".join(report.failures))
        inputs = [io_spec(n, "int64", [1] if n == "top_k" else ["batch_size", "sequence_length"]) for n in names]
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "task": task,
            "labels": list(checkpoint.labels),
            "model_name": options.model_name,
            "source": {"path": str(options.model_dir), "weights_file": checkpoint.weights_file.name,
                       "weights_sha256": sha256_file(checkpoint.weights_file)},
            "family": checkpoint.family.name,
            "config": config.to_dict(),
            "hidden_size": config.hidden_size,
            "embedding_dim": config.hidden_size,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
            "pooling": checkpoint.pooling,
            "pooling_chain": [],
            "normalize": False,
            "padding_side": side,
            "attention_pattern": _attention_pattern(config),
            "max_seq_length": max_len,
            "prompts": prompts,
            "default_prompt_name": default_prompt_name,
            "opset": onnx_export.OPSET,
            "inputs": inputs,
            "graphs": {name: _graph_entry(name, checkpoint, report.parity, report.latency_ms, build)
                       for name in graphs},
            "fused_operators": fused_ops,
            "dropped_variants": dropped,
            "special_tokens": special,
            "token_style": tokenizer_info.token_style(tokenizer),
            "versions": library_versions(),
            "export": {"inputs_sha256": fingerprint, "created_by": "python -m export",
                       "validation_sentences": len(SENTENCES)},
        }
        if task == "sparse":
            sparse = checkpoint.sparse
            assert sparse is not None
            manifest["sparse"] = {"vocab_size": sparse.vocab_size, "pooling_strategy": sparse.pooling_strategy,
                                  "activation": sparse.splade_activation}
        else:
            classifier = checkpoint.classifier
            assert classifier is not None
            manifest["score_activation"] = checkpoint.score_activation
            manifest["head"] = {"pooling": classifier.pooling, "activation": classifier.activation,
                                "num_labels": classifier.num_labels}
        write_manifest(build, manifest)
        if options.out_dir.exists():
            shutil.rmtree(options.out_dir)
        build.rename(options.out_dir)
    log.info("wrote %s (%s, %s)", options.out_dir, task, ", ".join(sorted(graphs)))
    return options.out_dir
