"""The export of a task model (rerank, classify, sparse): the embedding pipeline's steps with the task's graphs,
validation and manifest keys (docs/contract.md §1, "Task heads")."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from export import onnx_export, tokenizer_info
from export.manifest import io_spec, write_manifest
from export.pipeline import (
    ExportOptions,
    _common_manifest,
    _graph_entry,
    _latency_batch,
    _staging,
    read_prompts,
)
from export.validate import ValidationError, make_batches, make_pair_batches
from export.validate_task import quality_figure, validate_task
from export.validation_corpus import SENTENCES
from model.task_checkpoint import LoadedTaskCheckpoint, load_task_checkpoint

log = logging.getLogger(__name__)


def validation_pairs() -> tuple[tuple[str, str], ...]:
    """(query, document) pairs from the validation sentences: neighbours, so lengths and scripts mix, and the
    long ones make longest-first truncation cut both sides."""
    return tuple((SENTENCES[i], SENTENCES[(i * 5 + 3) % len(SENTENCES)]) for i in range(len(SENTENCES)))


def _outputs(checkpoint: LoadedTaskCheckpoint) -> list[dict[str, Any]]:
    outputs = [io_spec("last_hidden_state", "float32", ["batch_size", "sequence_length",
                                                          checkpoint.config.hidden_size])]
    if checkpoint.task == "sparse":
        outputs += [io_spec("sparse_values", "float32", ["batch_size", "k"]),
                    io_spec("sparse_indices", "int64", ["batch_size", "k"])]
    else:
        outputs.append(io_spec("logits", "float32", ["batch_size", len(checkpoint.labels)]))
    return outputs


def run_task_export(options: ExportOptions, task: str, fingerprint: str) -> Path:
    """Load the task checkpoint, export its graphs, validate them against torch, write the manifest."""
    checkpoint = load_task_checkpoint(options.model_dir, task)
    prompts = read_prompts(options.model_dir)
    config = checkpoint.config
    model = checkpoint.model
    names = onnx_export.task_input_names(model, task)
    encoder_names = tuple(n for n in names if n != "top_k")
    side = tokenizer_info.padding_side(options.model_dir, checkpoint.family.padding_side)
    with _staging(options, checkpoint) as build:
        build.export_graphs(partial(onnx_export.export_task_graph, model, task,
                                    external_data_threshold=options.external_data_threshold),
                            config, checkpoint.family, options.variants)
        max_len = checkpoint.max_seq_length
        pad_id = build.special_tokens.get("pad", config.pad_token_id)
        if task == "sparse":
            batches = make_batches(build.tokenizer, SENTENCES, max_len, sizes=(5, 4, 7), names=encoder_names,
                                   padding_side=side, pad_id=pad_id)
        else:
            batches = make_pair_batches(build.tokenizer, validation_pairs(), max_len, sizes=(5, 4, 7),
                                        names=encoder_names, padding_side=side, pad_id=pad_id)
        report = validate_task(model, task, build.graphs, batches, _latency_batch(config.vocab_size, encoder_names))
        for variant in ("int8", "fp16"):
            if variant not in build.graphs:
                continue
            figure = quality_figure(task, report.parity.get(variant, {}))
            if figure is not None and figure < options.int8_min_cosine:
                # As for embeddings: a lossy opt-in variant is left out rather than failing the export.
                build.drop(variant, f"{task} quality vs torch {figure:.4f} < {options.int8_min_cosine}")
        if report.failures:
            raise ValidationError("; ".join(report.failures))
        outputs = _outputs(checkpoint)
        manifest: dict[str, Any] = {
            **_common_manifest(options, fingerprint, checkpoint, build, padding_side=side, max_seq_length=max_len,
                               prompts=prompts),
            "task": task,
            "labels": list(checkpoint.labels),
            "embedding_dim": config.hidden_size,
            "pooling": checkpoint.pooling,
            "pooling_chain": [],
            "normalize": False,
            "inputs": [io_spec(n, "int64", [1] if n == "top_k" else ["batch_size", "sequence_length"])
                       for n in names],
            "graphs": {name: _graph_entry(name, outputs, report, build.dir) for name in build.graphs},
        }
        if task == "sparse":
            sparse = checkpoint.sparse
            if sparse is None:  # load_task_checkpoint sets it for every sparse checkpoint
                raise ValueError(f"{options.model_dir}: a sparse export without the checkpoint's sparse head config")
            manifest["sparse"] = {"vocab_size": sparse.vocab_size, "pooling_strategy": sparse.pooling_strategy,
                                  "activation": sparse.splade_activation}
        else:
            classifier = checkpoint.classifier
            if classifier is None:  # load_task_checkpoint sets it for every rerank/classify checkpoint
                raise ValueError(f"{options.model_dir}: a {task} export without the checkpoint's classifier head")
            manifest["score_activation"] = checkpoint.score_activation
            manifest["head"] = {"pooling": classifier.pooling, "activation": classifier.activation,
                                "num_labels": classifier.num_labels}
        write_manifest(build.dir, manifest)
    log.info("wrote %s (%s, %s)", options.out_dir, task, ", ".join(sorted(build.graphs)))
    return options.out_dir
