"""The export, step by step: load -> ONNX -> fuse -> variants -> validate -> manifest, built aside and swapped in."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from export import explain_graph, onnx_export, optimize, tokenizer_info
from export.manifest import (
    FORMAT_VERSION,
    io_spec,
    is_up_to_date,
    library_versions,
    sha256_file,
    write_manifest,
)
from export.quantization import quantization_ranges
from export.validate import Batch, Report, ValidationError, make_batches, validate
from export.validation_corpus import SENTENCES
from model import CheckpointError, EncoderConfig, LoadedCheckpoint, load_checkpoint

if TYPE_CHECKING:
    from model.families.base import Family
    from model.task_checkpoint import LoadedTaskCheckpoint

log = logging.getLogger(__name__)

_SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling/config.json", "model.safetensors", "pytorch_model.bin")
_SOURCE_GLOBS = ("*_Dense/config.json", "*_Dense/model.safetensors", "*_Dense/pytorch_model.bin",
                 "*_SpladePooling/config.json")
_ST_CONFIG = "config_sentence_transformers.json"
_CODE_DIRS = (Path(__file__).parent, Path(__file__).parent.parent / "model",
              Path(__file__).parent.parent / "model" / "families")
# "fp32" is the exported graph as it is (onnxruntime applies its own optimizations when a session loads it);
# "fp32-fused" has onnxruntime's transformer optimizer fusions baked in, and int8 and fp16 are made from it.
GRAPH_FILES = {"fp32": "model.onnx", "fp32-fused": "model_fused.onnx", "attention": "model_attention.onnx",
               "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}


@dataclass(frozen=True)
class ExportOptions:
    model_dir: Path
    out_dir: Path
    model_name: str
    force: bool = False
    variants: bool = True  # int8 and fp16 too
    int8_min_cosine: float = 0.99
    external_data_threshold: int = onnx_export.EXTERNAL_DATA_THRESHOLD  # lowered in tests
    task: str = "auto"  # auto | embed | rerank | classify | sparse (auto: model.task_checkpoint.detect_task)
    explain: bool = True  # the explain graph (/v1/explain) of an embedding model


def inputs_fingerprint(options: ExportOptions) -> str:
    """Hash of everything that decides the artifacts: source files, our code, library versions, options."""
    digest = hashlib.sha256()
    for rel in _SOURCE_FILES:
        path = options.model_dir / rel
        if path.is_file():
            digest.update(f"{rel}:{sha256_file(path)}\n".encode())
    for pattern in _SOURCE_GLOBS:
        for path in sorted(options.model_dir.glob(pattern)):
            digest.update(f"{path.relative_to(options.model_dir)}:{sha256_file(path)}\n".encode())
    for code_dir in _CODE_DIRS:
        for path in sorted(code_dir.glob("*.py")):
            digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    versions = library_versions()
    versions.pop("python", None)
    digest.update(repr(sorted(versions.items())).encode())
    digest.update(f"{options.model_name}|{options.variants}|{options.int8_min_cosine}|"
                  f"{options.external_data_threshold}|{options.task}|{options.explain}".encode())
    return digest.hexdigest()


def _write_tokenizer(checkpoint: LoadedCheckpoint | LoadedTaskCheckpoint, path: Path) -> Tokenizer:
    """Copy the tokenizer with truncation and padding switched off: the service owns both policies, and the
    embedded MiniLM file silently truncates and pads at 128 while the model allows 256."""
    tokenizer = Tokenizer.from_file(str(checkpoint.tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(path), pretty=True)
    return tokenizer


def read_prompts(model_dir: Path) -> tuple[dict[str, str], str | None]:
    """sentence-transformers' `prompts` and `default_prompt_name` (config_sentence_transformers.json), which the
    server applies by name (TEI's `prompt_name`) and by default, as `SentenceTransformer.encode` does."""
    path = model_dir / _ST_CONFIG
    if not path.is_file():
        return {}, None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from None
    prompts = raw.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise CheckpointError(f"{path}: 'prompts' must map prompt names to strings")
    default = raw.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise CheckpointError(f"{path}: default_prompt_name {default!r} is not one of its prompts")
    return prompts, default


def _latency_batch(vocab_size: int, names: tuple[str, ...]) -> Batch:
    """8 rows x 64 tokens: a mid-size batch typical of served traffic, the same for every graph."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000 % vocab_size, vocab_size, size=(8, 64), dtype=np.int64)
    return Batch(ids, np.ones_like(ids), names)


def _graph_entry(name: str, outputs: list[dict[str, Any]], report: Report, out_dir: Path) -> dict[str, Any]:
    """One graph's manifest entry; `outputs` are the head's, the attention graph adds every layer's probabilities."""
    if name == "attention":
        outputs = [*outputs, io_spec("attentions", "float32",
                                     ["num_layers", "batch_size", "num_heads", "sequence_length", "sequence_length"])]
    providers = {"fp16": ["CUDAExecutionProvider"], "int8": ["CPUExecutionProvider"]}.get(
        name, ["CPUExecutionProvider", "CUDAExecutionProvider"])
    entry: dict[str, Any] = {
        "file": GRAPH_FILES[name],
        "outputs": outputs,
        "providers": providers,
        "default": name == "fp32",
        "size_bytes": sum(p.stat().st_size for p in out_dir.glob(GRAPH_FILES[name] + "*")),
        "parity": report.parity.get(name, {}),
    }
    if name in report.latency_ms:
        entry["latency_ms"] = {"batch": 8, "sequence_length": 64, "provider": "CPUExecutionProvider",
                               "median": report.latency_ms[name]}
    return entry


def _attention_pattern(config: EncoderConfig) -> dict[str, Any]:
    """Which keys each layer's queries see, for the explorer: causal, and which layers use a local window."""
    local = [i for i in range(config.num_layers) if not config.is_global_layer(i)]
    return {"causal": config.causal, "local_window": config.local_window if local else 0, "local_layers": local,
            "num_kv_heads": config.kv_heads, "position": config.position_embedding,
            "relative_bias": bool(config.relative_attention_buckets)}


@dataclass
class _Build:
    """What an export has made so far in its staging directory: the tokenizer, the graphs, what was dropped."""

    dir: Path
    tokenizer: Tokenizer
    special_tokens: dict[str, int]
    graphs: dict[str, Path] = field(default_factory=dict)
    fused_operators: dict[str, int] = field(default_factory=dict)
    dropped_variants: dict[str, str] = field(default_factory=dict)

    def export_graphs(self, export_graph: Callable[..., None], config: EncoderConfig, family: Family,
                      variants: bool) -> None:
        """The exact graphs (`export_graph(path, with_attentions=...)`), the fused one, and int8/fp16 from it."""
        self.graphs = {name: self.dir / GRAPH_FILES[name] for name in ("fp32", "fp32-fused", "attention")}
        export_graph(self.graphs["fp32"], with_attentions=False)
        export_graph(self.graphs["attention"], with_attentions=True)
        self.fused_operators = optimize.fuse(self.graphs["fp32"], self.graphs["fp32-fused"], config,
                                             family.optimizer_model_type)
        if variants:
            optimize.to_int8(self.graphs["fp32-fused"], self.dir / GRAPH_FILES["int8"])
            optimize.to_fp16(self.graphs["fp32-fused"], self.dir / GRAPH_FILES["fp16"])
            self.graphs["int8"] = self.dir / GRAPH_FILES["int8"]
            self.graphs["fp16"] = self.dir / GRAPH_FILES["fp16"]

    def drop(self, name: str, reason: str) -> None:
        """Leave an opt-in variant out, with its files; the log and the manifest's dropped_variants say why."""
        self.dropped_variants[name] = reason
        log.warning("%s variant dropped: %s", name, reason)
        (self.dir / GRAPH_FILES[name]).unlink()
        for data_file in self.dir.glob(GRAPH_FILES[name] + ".data"):
            data_file.unlink()
        del self.graphs[name]


@contextmanager
def _staging(options: ExportOptions, checkpoint: LoadedCheckpoint | LoadedTaskCheckpoint) -> Iterator[_Build]:
    """A build directory beside out_dir holding the copied tokenizer; when the block ends without an error (its
    last step writes the manifest) it replaces out_dir, otherwise out_dir is left as it was."""
    options.out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=options.out_dir.parent, prefix=f".{options.out_dir.name}.") as tmp:
        build = Path(tmp) / "build"
        build.mkdir()
        tokenizer = _write_tokenizer(checkpoint, build / "tokenizer.json")
        yield _Build(build, tokenizer, tokenizer_info.special_tokens(options.model_dir, tokenizer))
        if options.out_dir.exists():
            shutil.rmtree(options.out_dir)
        build.rename(options.out_dir)


def _common_manifest(options: ExportOptions, fingerprint: str, checkpoint: LoadedCheckpoint | LoadedTaskCheckpoint,
                     build: _Build, *, padding_side: str, max_seq_length: int,
                     prompts: tuple[dict[str, str], str | None]) -> dict[str, Any]:
    """The manifest keys every task writes the same way; each pipeline adds its task's keys, inputs and graphs."""
    config = checkpoint.config
    return {
        "format_version": FORMAT_VERSION,
        "model_name": options.model_name,
        "source": {"path": str(options.model_dir), "weights_file": checkpoint.weights_file.name,
                   "weights_sha256": sha256_file(checkpoint.weights_file)},
        "family": checkpoint.family.name,
        "config": config.to_dict(),
        "hidden_size": config.hidden_size,
        "vocab_size": build.tokenizer.get_vocab_size(with_added_tokens=True),
        "padding_side": padding_side,
        "attention_pattern": _attention_pattern(config),
        "max_seq_length": max_seq_length,
        "prompts": prompts[0],
        "default_prompt_name": prompts[1],
        "opset": onnx_export.OPSET,
        "fused_operators": build.fused_operators,
        "dropped_variants": build.dropped_variants,
        "special_tokens": build.special_tokens,
        "token_style": tokenizer_info.token_style(build.tokenizer),
        "versions": library_versions(),
        "export": {"inputs_sha256": fingerprint, "created_by": "python -m export",
                   "validation_sentences": len(SENTENCES)},
    }


def _export_explain(encoder: Any, build: _Build, options: ExportOptions) -> dict[str, Any]:
    """The explain graph, checked output by output against the PyTorch walk-through; its manifest entry."""
    path = build.dir / explain_graph.FILE
    explain_graph.export(encoder, path, external_data_threshold=options.external_data_threshold)
    try:
        report = explain_graph.check(encoder, path, build.tokenizer)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return explain_graph.manifest_entry(encoder, path, report)


def resolve_task(options: ExportOptions) -> str:
    """The task to export: the one asked for, or (auto) what the checkpoint's files say it was trained for."""
    from model.heads import TASKS
    from model.task_checkpoint import detect_task

    if options.task == "auto":
        if not (options.model_dir / "config.json").is_file():
            return "embed"  # load_checkpoint says what is wrong with the directory, as it always has
        task = detect_task(options.model_dir)
        log.info("%s: task %s (detected; --task overrides)", options.model_dir, task)
        return task
    if options.task not in TASKS:
        raise CheckpointError(f"unknown task {options.task!r} (known: auto, {', '.join(TASKS)})")
    return options.task


def run_export(options: ExportOptions) -> Path:
    """Export, or return at once if the artifacts already match the inputs. Returns the artifact directory."""
    fingerprint = inputs_fingerprint(options)
    if not options.force and is_up_to_date(options.out_dir, fingerprint):
        log.info("%s is up to date (inputs %s…); nothing to do", options.out_dir, fingerprint[:12])
        return options.out_dir
    task = resolve_task(options)
    if task != "embed":
        from export.task_pipeline import run_task_export

        return run_task_export(options, task, fingerprint)
    checkpoint = load_checkpoint(options.model_dir)
    prompts = read_prompts(options.model_dir)
    config = checkpoint.config
    encoder = checkpoint.encoder
    names = onnx_export.input_names(encoder)
    side = tokenizer_info.padding_side(options.model_dir, checkpoint.family.padding_side)
    with _staging(options, checkpoint) as build:
        build.export_graphs(partial(onnx_export.export_graph, encoder,
                                    external_data_threshold=options.external_data_threshold),
                            config, checkpoint.family, options.variants)
        max_len = checkpoint.pooling.max_seq_length
        pad_id = build.special_tokens.get("pad", config.pad_token_id)
        batches = make_batches(build.tokenizer, SENTENCES, max_len, sizes=(5, 4, 7), names=names, padding_side=side,
                               pad_id=pad_id)
        report = validate(encoder, build.graphs, batches, _latency_batch(config.vocab_size, names))
        int8 = report.parity.get("int8", {})
        if int8 and int8["mean_cosine_vs_fp32"] < options.int8_min_cosine:
            # An opt-in variant too lossy for this model (all-mpnet-base-v2's dynamic int8 is near random) must not
            # cost the user the exact graphs: it is left out, said so in the log and the manifest.
            build.drop("int8", f"mean cosine vs fp32 {int8['mean_cosine_vs_fp32']:.4f} < "
                               f"{options.int8_min_cosine} (--int8-min-cosine)")
        if report.failures:
            raise ValidationError("; ".join(report.failures))
        explain_entry = _export_explain(encoder, build, options) if options.explain else None
        ranges = quantization_ranges(encoder, build.tokenizer, max_len, names, side, pad_id,
                                     checkpoint.pooling.normalize)
        outputs = [io_spec("last_hidden_state", "float32", ["batch_size", "sequence_length", config.hidden_size]),
                   io_spec("sentence_embedding", "float32", ["batch_size", encoder.embedding_dim])]
        manifest: dict[str, Any] = {
            **_common_manifest(options, fingerprint, checkpoint, build, padding_side=side, max_seq_length=max_len,
                               prompts=prompts),
            "task": "embed",
            "quantization_ranges": ranges,
            "embedding_dim": encoder.embedding_dim,
            "pooling": checkpoint.pooling.mode,
            "pooling_chain": checkpoint.pooling.chain(),
            "normalize": checkpoint.pooling.normalize,
            "inputs": [io_spec(n, "int64", ["batch_size"] if n == "prompt_length" else
                               ["batch_size", "sequence_length"]) for n in names],
            "graphs": {name: _graph_entry(name, outputs, report, build.dir) for name in build.graphs},
        }
        if explain_entry is not None:
            manifest["graphs"]["explain"] = explain_entry
        write_manifest(build.dir, manifest)
    log.info("wrote %s (%s)", options.out_dir, ", ".join(sorted(build.graphs)))
    return options.out_dir
