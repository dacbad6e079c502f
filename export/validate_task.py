"""Check each task graph (rerank, classify, sparse) against our PyTorch task model at shapes unlike the export's.

Logits must match within FP32_TOLERANCE; a sparse graph's top-k, scattered back into a vocabulary-sized vector,
must match the torch SPLADE vector within the same tolerance (so indices agree wherever the weight is nonzero,
whatever order equal zeros come in), and a small top_k must return exactly the k largest weights. Every
mismatch is collected; int8 and fp16 report a quality figure the pipeline uses to keep or drop them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.validate import (
    FP32_TOLERANCE,
    Batch,
    Report,
    _masked_max_abs,
    attention_max_abs,
    check_attention,
    cpu_session,
    median_latency_ms,
    not_runnable_on_cpu,
)
from model.heads import SpladeEncoder, TaskModel

log = logging.getLogger(__name__)

SMALL_TOP_K = 10
_EXACT = ("fp32", "fp32-fused", "attention")


def _feeds(batch: Batch, top_k: int | None) -> dict[str, np.ndarray]:
    feeds = batch.feeds()
    if top_k is not None:
        feeds["top_k"] = np.array([top_k], dtype=np.int64)
    return feeds


def _dense(values: np.ndarray, indices: np.ndarray, vocab: int) -> np.ndarray:
    out = np.zeros((values.shape[0], vocab), dtype=np.float32)
    np.put_along_axis(out, indices.astype(np.int64), values.astype(np.float32), axis=1)
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flattened score arrays (1.0 for identical ones, also for one label)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float((a * b).sum() / den) if den > 0 else float(np.allclose(a, b))


def _run(session: ort.InferenceSession, batch: Batch, top_k: int | None) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, _feeds(batch, top_k)), strict=True))


def validate_task(model: TaskModel, task: str, graphs: dict[str, Path], batches: list[Batch],
                  latency_batch: Batch) -> Report:
    """Compare every task graph with the PyTorch task model; record the figures; raise nothing."""
    report = Report()
    sparse = task == "sparse"
    with torch.no_grad():
        expected = [model(*b.torch()[:3]) for b in batches]
        vectors = ([model.sparse_embedding(*b.torch()[:3])[0].numpy() for b in batches]
                   if sparse and isinstance(model, SpladeEncoder) else [])
    vocab = vectors[0].shape[1] if sparse else 0
    for name, path in graphs.items():
        try:
            session = cpu_session(path)
        except Exception as exc:  # onnxruntime raises its own types; fp16 may lack CPU kernels
            if name == "fp16":
                report.parity[name] = {"cpu": not_runnable_on_cpu(exc)}
                continue
            raise
        worst_hidden = worst_out = worst_attention = 0.0
        quality: list[float] = []
        small_ok = True
        for index, (batch, ref) in enumerate(zip(batches, expected, strict=True)):
            try:
                outputs = _run(session, batch, vocab if sparse else None)
            except Exception as exc:  # a missing fp16 CPU kernel shows only at run time
                if name != "fp16":
                    raise
                report.parity[name] = {"cpu": not_runnable_on_cpu(exc)}
                break
            worst_hidden = max(worst_hidden, _masked_max_abs(outputs["last_hidden_state"],
                                                             ref.last_hidden_state.numpy(), batch.attention_mask))
            if sparse:
                got = _dense(outputs["sparse_values"], outputs["sparse_indices"], vocab)
                want = vectors[index]
                worst_out = max(worst_out, float(np.abs(got - want).max()))
                num = (got * want).sum(axis=1)
                den = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
                quality.extend((num / np.maximum(den, 1e-12)).tolist())
                small = _run(session, batch, SMALL_TOP_K)
                k = min(SMALL_TOP_K, vocab)
                rows = np.arange(len(want))[:, None]
                small_ok = small_ok and small["sparse_values"].shape == (len(want), k) and bool(
                    np.abs(want[rows, small["sparse_indices"]] - small["sparse_values"]).max() <= FP32_TOLERANCE
                    and np.abs(small["sparse_values"] - -np.sort(-want, axis=1)[:, :k]).max() <= FP32_TOLERANCE
                    and (np.diff(small["sparse_values"], axis=1) <= 0).all())
            else:
                logits = outputs["logits"]
                worst_out = max(worst_out, float(np.abs(logits - ref.logits.numpy()).max()))
                quality.append(_correlation(logits, ref.logits.numpy()))
            if "attentions" in outputs:
                worst_attention = max(worst_attention, attention_max_abs(outputs["attentions"], ref.attentions,
                                                                         batch.attention_mask))
        else:
            out_key = "max_abs_diff_sparse_vs_torch" if sparse else "max_abs_diff_logits_vs_torch"
            quality_key = "mean_cosine_vs_torch" if sparse else "logits_correlation_vs_torch"
            figures: dict[str, float | bool] = {"max_abs_diff_hidden_vs_torch": worst_hidden, out_key: worst_out,
                                                quality_key: float(np.mean(quality) if sparse else min(quality))}
            if sparse:
                figures["small_top_k_matches_torch"] = small_ok
            if name == "attention":
                figures["max_abs_diff_attentions_vs_torch"] = worst_attention
                check_attention(worst_attention, report.failures)
            if name in _EXACT:
                if max(worst_hidden, worst_out) > FP32_TOLERANCE:
                    report.failures.append(f"{name}: max abs diff {max(worst_hidden, worst_out):.2e} > "
                                           f"{FP32_TOLERANCE} ({out_key})")
                if sparse and not small_ok:
                    report.failures.append(f"{name}: top_k={SMALL_TOP_K} does not return the {SMALL_TOP_K} "
                                           "largest weights in descending order")
            report.parity[name] = figures
            report.latency_ms[name] = median_latency_ms(session, _with_top_k(latency_batch, sparse))
            log.info("validated %s: %s, %.1f ms", name, figures, report.latency_ms[name])
    return report


def quality_figure(task: str, figures: dict[str, object]) -> float | None:
    """The number an int8 or fp16 variant is kept or dropped by (cosine of sparse vectors, correlation of
    logits, both vs torch); None when the variant could not be run here."""
    key = "mean_cosine_vs_torch" if task == "sparse" else "logits_correlation_vs_torch"
    value = figures.get(key)
    return float(value) if isinstance(value, int | float) else None


class _TopKBatch(Batch):
    def feeds(self) -> dict[str, np.ndarray]:
        return {**super().feeds(), "top_k": np.array([64], dtype=np.int64)}


def _with_top_k(batch: Batch, sparse: bool) -> Batch:
    if not sparse:
        return batch
    return _TopKBatch(batch.input_ids, batch.attention_mask, batch.names, batch.prompt_length,
                      batch.token_type_ids)
