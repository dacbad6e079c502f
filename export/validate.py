"""Check each exported graph against the PyTorch encoder at shapes unlike the export's; collect every mismatch.

"Export succeeded" is not "export correct": a traced shape or a fused op can be wrong only for other shapes.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Encoding, Tokenizer

from model import Encoder

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4  # fused kernels reorder sums; 1e-4 absolute on unit-scale activations
ATTENTION_TOLERANCE = 1e-5  # the attention graph is unfused and must match probabilities closely


class ValidationError(RuntimeError):
    """One or more graphs disagree with PyTorch beyond tolerance; the message lists every failure."""


@dataclass
class Batch:
    """One padded batch as both runtimes take it; `names` are the graph's inputs (manifest order)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    prompt_length: np.ndarray | None = None
    token_type_ids: np.ndarray | None = None  # a pair's segment ids; zeros when None (single texts)

    def _values(self) -> dict[str, np.ndarray]:
        prompt = self.prompt_length if self.prompt_length is not None else np.zeros(len(self.input_ids), np.int64)
        types = self.token_type_ids if self.token_type_ids is not None else np.zeros_like(self.input_ids)
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": types, "prompt_length": prompt}

    def feeds(self) -> dict[str, np.ndarray]:
        values = self._values()
        return {name: values[name] for name in self.names}

    def torch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The encoder's positional arguments: ids and mask (every graph takes them), then token_type_ids and
        prompt_length where the graph takes them, else None."""
        values = self._values()
        type_ids, prompt = (torch.from_numpy(values[name]) if name in self.names else None
                            for name in ("token_type_ids", "prompt_length"))
        return torch.from_numpy(values["input_ids"]), torch.from_numpy(values["attention_mask"]), type_ids, prompt


def _padded_chunks(tokenizer: Tokenizer, items: tuple, max_len: int, sizes: tuple[int, ...], padding_side: str,
                   pad_id: int) -> Iterator[tuple[list[Encoding], np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch size: the next items (the first ones again once they run out), truncated to max_len, encoded,
    and padded on the model's side to the batch's longest row as (encodings, ids, mask, segment ids)."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_truncation(max_len)
    start = 0
    for size in sizes:
        chunk = items[start:start + size] or items[:size]
        start += size
        encodings = tok.encode_batch(list(chunk))
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            cols = slice(width - len(enc.ids), width) if padding_side == "left" else slice(0, len(enc.ids))
            ids[row, cols] = enc.ids
            mask[row, cols] = 1
            types[row, cols] = enc.type_ids
        yield encodings, ids, mask, types


def make_batches(tokenizer: Tokenizer, sentences: tuple[str, ...], max_len: int, sizes: tuple[int, ...],
                 names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids"),
                 padding_side: str = "right", pad_id: int = 0) -> list[Batch]:
    """Split sentences into batches of the given sizes, padded on the model's side to each batch's longest row."""
    return [Batch(ids, mask, names, np.array([min(2, len(e.ids) - 1) for e in encodings], dtype=np.int64))
            for encodings, ids, mask, _ in _padded_chunks(tokenizer, sentences, max_len, sizes, padding_side, pad_id)]


def make_pair_batches(tokenizer: Tokenizer, pairs: tuple[tuple[str, str], ...], max_len: int,
                      sizes: tuple[int, ...], names: tuple[str, ...], padding_side: str = "right",
                      pad_id: int = 0) -> list[Batch]:
    """(query, document) pairs tokenized as a cross-encoder sees them: the tokenizer's pair template and its
    segment ids, truncated longest-first to max_len, padded on the model's side."""
    return [Batch(ids, mask, names, None, types)
            for _, ids, mask, types in _padded_chunks(tokenizer, tuple(tuple(p) for p in pairs), max_len, sizes,
                                                      padding_side, pad_id)]


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_latency_ms(session: ort.InferenceSession, batch: Batch, repeats: int = 7) -> float:
    session.run(None, batch.feeds())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, batch.feeds())
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


@dataclass
class Report:
    """Parity figures per graph, and every failure found."""

    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _masked_max_abs(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Max |a-b| over real tokens only: hidden states at padding positions are unused garbage."""
    real = mask.astype(bool)
    return float(np.abs(a[real] - b[real]).max())


def attention_max_abs(got: np.ndarray, want: torch.Tensor, mask: np.ndarray) -> float:
    """Max |got-want| over the rows of real query tokens; padded keys must carry zero probability in both."""
    real_rows = mask.astype(bool)
    got = got.transpose(1, 3, 0, 2, 4)[real_rows]  # (N real queries, L, H, T)
    return float(np.abs(got - want.numpy().transpose(1, 3, 0, 2, 4)[real_rows]).max())


def check_attention(worst: float, failures: list[str]) -> None:
    if worst > ATTENTION_TOLERANCE:
        failures.append(f"attention: probabilities differ by {worst:.2e} > {ATTENTION_TOLERANCE}")


FP16_MIN_COSINE = 0.999


def not_runnable_on_cpu(exc: Exception) -> str:
    """The parity note for an fp16 graph onnxruntime's CPU kernels cannot run."""
    return f"not runnable on CPUExecutionProvider ({type(exc).__name__}); validated on CUDA only"


def validate_fp16_on_cpu(path: Path, batches: list[Batch], expected: list, failures: list[str]) -> dict[str, object]:
    """What the CPU can say about the CUDA-only fp16 graph: its interface must be the manifest's (int64 inputs,
    float32 outputs, as keep_io_types promises), and where onnxruntime's CPU kernels run it, its vectors must be
    close to PyTorch's. Its speed and its CUDA numbers need a GPU."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    want_inputs = {name: onnx.TensorProto.INT64 for name in batches[0].names}
    want_outputs = {"last_hidden_state": onnx.TensorProto.FLOAT, "sentence_embedding": onnx.TensorProto.FLOAT}
    figures: dict[str, object] = {"interface_matches_manifest": inputs == want_inputs and outputs == want_outputs}
    if not figures["interface_matches_manifest"]:
        failures.append(f"fp16: graph inputs {inputs} / outputs {outputs} are not the manifest's")
        return figures
    try:
        session = cpu_session(path)
        got = [session.run(["sentence_embedding"], b.feeds())[0] for b in batches]
    except Exception as exc:  # onnxruntime raises its own types; a missing fp16 CPU kernel is expected
        figures["cpu"] = not_runnable_on_cpu(exc)
        return figures
    cosines = []
    for vectors, ref in zip(got, expected, strict=True):
        reference = ref.sentence_embedding.numpy()
        num = (vectors * reference).sum(axis=1)
        cosines.extend((num / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))).tolist())
    min_cosine = figures["cpu_min_cosine_vs_torch"] = float(np.min(cosines))
    if min_cosine < FP16_MIN_COSINE:
        failures.append(f"fp16 on CPU: min cosine {np.min(cosines):.5f} < {FP16_MIN_COSINE}")
    return figures


def validate(encoder: Encoder, graphs: dict[str, Path], batches: list[Batch], latency_batch: Batch) -> Report:
    """Compare every graph with the PyTorch encoder; record the figures; raise nothing (callers decide)."""
    report = Report()
    with torch.no_grad():
        expected = [encoder(*b.torch()) for b in batches]
    fp32_vectors: list[np.ndarray] = []
    for name, path in graphs.items():
        if name == "fp16":
            report.parity[name] = validate_fp16_on_cpu(path, batches, expected, report.failures)
            continue
        session = cpu_session(path)
        worst_hidden = worst_sentence = worst_attention = 0.0
        cosines: list[float] = []
        for batch, ref in zip(batches, expected, strict=True):
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, batch.feeds()), strict=True))
            hidden, sentence = outputs["last_hidden_state"], outputs["sentence_embedding"]
            hidden_diff = _masked_max_abs(hidden, ref.last_hidden_state.numpy(), batch.attention_mask)
            worst_hidden = max(worst_hidden, hidden_diff)
            worst_sentence = max(worst_sentence, float(np.abs(sentence - ref.sentence_embedding.numpy()).max()))
            if "attentions" in outputs:
                worst_attention = max(worst_attention, attention_max_abs(outputs["attentions"], ref.attentions,
                                                                         batch.attention_mask))
            if name == "fp32":
                fp32_vectors.append(sentence)
            if name == "int8":
                reference = ref.sentence_embedding.numpy()
                num = (sentence * reference).sum(axis=1)
                den = np.linalg.norm(sentence, axis=1) * np.linalg.norm(reference, axis=1)
                cosines.extend((num / den).tolist())
        figures: dict[str, float] = {"max_abs_diff_hidden_vs_torch": worst_hidden,
                                     "max_abs_diff_sentence_vs_torch": worst_sentence}
        if name == "attention":
            figures["max_abs_diff_attentions_vs_torch"] = worst_attention
            check_attention(worst_attention, report.failures)
        if name in ("fp32", "fp32-fused", "attention") and max(worst_hidden, worst_sentence) > FP32_TOLERANCE:
            report.failures.append(f"{name}: max abs diff {max(worst_hidden, worst_sentence):.2e} > {FP32_TOLERANCE}")
        if name == "int8":
            figures = {"mean_cosine_vs_fp32": float(np.mean(cosines)), "min_cosine_vs_fp32": float(np.min(cosines))}
        report.parity[name] = figures
        report.latency_ms[name] = median_latency_ms(session, latency_batch)
        # Let this session go before the next one is built: rebinding the name would hold both at once. A session
        # of a 0.6B model is several GB; holding two, validating bench/qwen3_shaped.py's model ran a 24 GiB
        # machine out of memory, and without that it passed.
        del session
        log.info("validated %s: %s, %.1f ms", name, figures, report.latency_ms[name])
    return report
