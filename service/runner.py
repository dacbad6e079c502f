"""Synchronous onnxruntime + numpy: pad token rows into feeds, run the right graph, unpad per row.

This is the batcher's `BatchRunner`. It knows three logical graphs, so that the batcher (which never mixes
graphs in one batch) keeps cheap and expensive work apart and each batch fetches only the outputs it needs:

    "embed"      configured variant (fp32/int8/fp16) -> sentence_embedding
    "tokens"     configured variant                  -> sentence_embedding + last_hidden_state
    "attention"  model_attention.onnx (unfused)      -> the above + attentions
    "explain"    model_explain.onnx, one unpadded row per pass -> every intermediate of the forward pass
                 (/v1/explain's walk-through), the query token's per-head outputs
    "score"      configured variant of a reranker or classifier -> logits (B, labels)
    "sparse"     configured variant of a SPLADE model -> its top-k vocabulary weights per row (the vocabulary-
                 sized logits stay inside the graph)

An embedding model has the first three, a reranker or classifier "score", a sparse model "sparse".

Provider choice is logged on exactly one line, from `session.get_providers()` (what onnxruntime actually
enabled), not from `get_available_providers()` (what the wheel was built with).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.artifacts import Manifest
from service.errors import ProviderError
from service.settings import Settings

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

EMBED = "embed"
TOKENS = "tokens"
ATTENTION = "attention"
SCORE = "score"
SPARSE = "sparse"
EXPLAIN = "explain"

_OUTPUTS = {
    EMBED: ("sentence_embedding",),
    TOKENS: ("sentence_embedding", "last_hidden_state"),
    ATTENTION: ("sentence_embedding", "last_hidden_state", "attentions"),
    SCORE: ("logits",),
    SPARSE: ("sparse_values", "sparse_indices"),
    # The explain graph's outputs (model/explain.py EXPLAIN_OUTPUTS; docs/explain.md says what each is).
    EXPLAIN: ("embed_token", "embed_position", "embed_segment", "embed_sum", "embed_output", "queries", "keys",
              "values", "raw_scores", "scaled_scores", "probs", "position_bias", "visibility", "context",
              "value_output_norms", "head_outputs", "attention_input", "attention_output", "attention_residual",
              "attention_block_output", "ffn_output", "layer_output", "last_hidden_state"),
}
# Graphs built on first use (or at start, or never) by a setting: the graph -> the Settings field that says how.
_OPTIONAL_GRAPHS = {ATTENTION: "attention_graph", EXPLAIN: "explain_graph"}
# The graphs the configured variant's session answers, by the model's task.
_MAIN_GRAPHS = {"embed": (EMBED, TOKENS), "rerank": (SCORE,), "classify": (SCORE,), "sparse": (SPARSE,)}


@dataclass(frozen=True)
class RowResult:
    """One input's outputs, sliced to its real length T."""

    embedding: np.ndarray | None = None  # (D,) float32, pooled, not normalised (embedding models)
    token_embeddings: np.ndarray | None = None  # (T, D)
    attentions: np.ndarray | None = None  # (L, H, T, T)
    logits: np.ndarray | None = None  # (labels,) float32, raw (rerank / classify models)
    sparse_indices: np.ndarray | None = None  # (K,) int64 vocabulary ids, by weight descending (sparse models)
    sparse_values: np.ndarray | None = None  # (K,) float32 weights; zeros mean "fewer than K non-zeros"
    explain: dict[str, np.ndarray] | None = None  # the explain graph's outputs by name (batch axis dropped)

    def first_output(self) -> np.ndarray:
        """Whichever main output this row has: the warm-up's finiteness check."""
        for value in (self.embedding, self.logits, self.sparse_values):
            if value is not None:
                return value
        if self.explain is not None:
            return self.explain["last_hidden_state"]
        raise ValueError("a row result with no output")


@dataclass(frozen=True)
class WarmUpTiming:
    """The start-up warm-up's largest batch and how long it took (cold, so an upper bound): the admission cost
    model's prior before any request's batch has finished."""

    graph: str
    rows: int
    width: int
    seconds: float


@dataclass(frozen=True)
class _Chunk:
    feeds: dict[str, np.ndarray]
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class Prepared:
    graph: str
    chunks: tuple[_Chunk, ...]


def _row_ids(row: Any) -> np.ndarray:
    """Rows may be BatchItems (with `.token_ids`) or bare id arrays; the runner accepts both."""
    ids = getattr(row, "token_ids", row)
    return np.asarray(ids, dtype=np.int64)


class OnnxRunner:
    """Owns the onnxruntime sessions; `prepare` and `execute` are called from the batcher's worker thread."""

    def __init__(self, manifest: Manifest, settings: Settings) -> None:
        self.manifest = manifest
        self.pad_id = manifest.pad_token_id
        self._left_padded = manifest.padding_side == "left"
        self.variant = settings.graph_variant
        self._attention_values_per_chunk = max(settings.attention_budget, 1)
        self._pad_multiple = settings.pad_to_multiple
        self.provider, self.provider_reason = "", ""
        self._settings = settings
        # A sparse model's graph returns this many weights per row (the largest first); the vocabulary at most.
        vocab = int(manifest.raw.get("sparse", {}).get("vocab_size", 0) or manifest.raw.get("vocab_size", 0) or 0)
        self.sparse_top_k = min(settings.sparse_top_k, vocab) if vocab else settings.sparse_top_k
        variant_spec = manifest.graph(settings.graph_variant)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self.warm_up_timing: WarmUpTiming | None = None
        main = self._build(variant_spec.path, settings, first=True)
        self.main_graphs = _MAIN_GRAPHS[manifest.task]
        for graph in self.main_graphs:
            self._sessions[graph] = main
        # The attention and explain graphs (~90 MB of weights each plus their arenas, used only by attention and
        # explain requests) are built at start-up when their setting (EMBED_ATTENTION_GRAPH, EMBED_EXPLAIN_GRAPH) is
        # eager, on the first batch that needs them when lazy, never when off.
        self._lazy_graphs: set[str] = set()
        self._lazy_lock = threading.Lock()
        self._explain_warm_width = max(2, min(settings.explain_max_tokens, manifest.max_seq_length))
        for graph, setting in _OPTIONAL_GRAPHS.items():
            mode = getattr(settings, setting)
            if manifest.task != "embed" or graph not in manifest.graphs or mode == "off":
                continue
            if mode == "eager":
                self._sessions[graph] = self._build(manifest.graphs[graph].path, settings, first=False)
            else:
                self._check_declared_outputs(graph)
                self._lazy_graphs.add(graph)
        for graph, session in self._sessions.items():
            self._check_outputs(graph, session)

    @property
    def graphs(self) -> frozenset[str]:
        """Every graph a batch may name, built or still to be built on first use."""
        return frozenset(self._sessions) | frozenset(self._lazy_graphs)

    @property
    def loaded_graphs(self) -> frozenset[str]:
        return frozenset(self._sessions)

    @staticmethod
    def _check_outputs(graph: str, session: ort.InferenceSession) -> None:
        have = {o.name for o in session.get_outputs()}
        missing = [name for name in _OUTPUTS[graph] if name not in have]
        if missing:
            raise ProviderError(f"graph for {graph!r} lacks outputs {missing}")

    def _check_declared_outputs(self, graph: str) -> None:
        """A lazily built graph is checked against the manifest now, so a wrong artifact still fails at start."""
        declared = self.manifest.graphs[graph].outputs
        missing = [name for name in _OUTPUTS[graph] if name not in declared]
        if missing:
            raise ProviderError(f"graph for {graph!r} lacks outputs {missing} (manifest.json)")

    def _session(self, graph: str) -> ort.InferenceSession:
        session = self._sessions.get(graph)
        if session is not None:
            return session
        with self._lazy_lock:
            if graph not in self._sessions:
                if graph not in self._lazy_graphs:
                    raise ValueError(f"unknown graph {graph!r}")
                t0 = time.perf_counter()
                built = self._build(self.manifest.graphs[graph].path, self._settings, first=False)
                self._check_outputs(graph, built)
                self._sessions[graph] = built
                self._lazy_graphs.discard(graph)
                self._warm(graph, 1)
                logger.info("graph %r built on first use in %.0f ms", graph, (time.perf_counter() - t0) * 1000)
            return self._sessions[graph]

    def _build(self, path: Any, settings: Settings, *, first: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Shapes change every batch; the memory pattern would cache a plan per shape and grow RSS (§3.1).
        options.enable_mem_pattern = settings.ort_mem_pattern
        options.log_severity_level = 3
        # Spinning intra-op threads skip the sleep/wake between a pass's parallel sections (~0.7 ms a pass on
        # the 2-core Zen 5 box) but keep cores busy between them; on some CPUs that starves the event loop and
        # the tokenizer threads instead (docs/contract.md, EMBED_INTRA_OP_SPINNING).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0")
        # Spin inside a forward pass (its many small ops need it) but not after it: between batches the spinning
        # threads would take the cores from the event loop and the tokenizer, which a burst needs most.
        stop = "0" if settings.intra_op_spin_after_run else "1"
        options.add_session_config_entry("session.force_spinning_stop", stop)
        wanted, reason = self._wanted_providers(settings)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ProviderError(f"onnxruntime could not load {path}: {type(exc).__name__}") from exc
        active = session.get_providers()
        if first:
            self._announce(settings, wanted, active, reason)
        return session

    @staticmethod
    def _wanted_providers(settings: Settings) -> tuple[list[str], str]:
        if settings.provider == "cpu":
            return [CPU], "EMBED_PROVIDER=cpu"
        if CUDA not in ort.get_available_providers():
            return [CPU], "this onnxruntime build has no CUDA support"
        return [CUDA, CPU], ""

    def _announce(self, settings: Settings, wanted: list[str], active: list[str], reason: str) -> None:
        self.provider = active[0] if active else CPU
        if self.provider == CUDA:
            self.provider_reason = f"EMBED_PROVIDER={settings.provider}"
            logger.info("using %s (%s)", CUDA, self.provider_reason)
        elif settings.provider == "cpu":
            self.provider_reason = reason
            logger.info("using %s (%s)", CPU, reason)
        else:
            why = reason or "CUDA requested but onnxruntime did not enable it (driver or CUDA libraries missing?)"
            self.provider_reason = why
            logger.warning("%s unavailable (%s); using %s", CUDA, why, self.provider)
        if settings.require_gpu and self.provider != CUDA:
            raise ProviderError(f"EMBED_REQUIRE_GPU is set but the provider in use is {self.provider}")
        if settings.graph_variant == "fp16" and self.provider != CUDA:
            raise ProviderError("graph variant fp16 needs CUDAExecutionProvider")

    # --- BatchRunner protocol -------------------------------------------------------------------------------

    def prepare(self, graph: str, rows: Sequence[Any]) -> Prepared:
        """Pad rows into int64 feeds. The attention graph is split into chunks so one batch's `attentions`
        output (L×B×H×T×T) stays within the per-request attention budget's order of magnitude."""
        if graph not in self.graphs:
            raise ValueError(f"unknown graph {graph!r}")
        if graph == EXPLAIN:
            return Prepared(graph, tuple(self._explain_chunk(r) for r in rows))
        id_rows = [_row_ids(r) for r in rows]
        groups: list[list[np.ndarray]] = [id_rows]
        if graph == ATTENTION:
            groups = self._attention_groups(id_rows)
        prompt_lengths = [int(getattr(r, "prompt_length", 0)) for r in rows]
        type_ids = [getattr(r, "type_ids", None) for r in rows]
        chunks, start = [], 0
        for group in groups:
            end = start + len(group)
            chunks.append(self._pad(group, prompt_lengths[start:end], type_ids[start:end]))
            start = end
        return Prepared(graph, tuple(chunks))

    def execute(self, prepared: Prepared) -> list[RowResult]:
        """Run each chunk and cut every row back to its real length; one result per row, in order."""
        session = self._session(prepared.graph)
        names = list(_OUTPUTS[prepared.graph])
        results: list[RowResult] = []
        for chunk in prepared.chunks:
            outs = dict(zip(names, session.run(names, chunk.feeds), strict=True))
            if prepared.graph == SCORE:
                results.extend(RowResult(logits=np.array(row, dtype=np.float32)) for row in outs["logits"])
                continue
            if prepared.graph == EXPLAIN:
                results.append(RowResult(explain=outs))  # the graph's outputs have no batch axis
                continue
            if prepared.graph == SPARSE:
                results.extend(
                    RowResult(sparse_values=np.array(v, dtype=np.float32), sparse_indices=np.array(i, dtype=np.int64))
                    for v, i in zip(outs["sparse_values"], outs["sparse_indices"], strict=True))
                continue
            pooled = outs["sentence_embedding"]  # (B, D)
            hidden = outs.get("last_hidden_state")  # (B, T, D)
            attn = outs.get("attentions")  # (L, B, H, T, T)
            width = chunk.feeds["input_ids"].shape[1]
            for i, n in enumerate(chunk.lengths):
                real = slice(width - n, width) if self._left_padded else slice(0, n)
                results.append(
                    RowResult(
                        embedding=np.array(pooled[i], dtype=np.float32),
                        token_embeddings=None if hidden is None else np.array(hidden[i, real], dtype=np.float32),
                        attentions=None if attn is None else np.array(attn[:, i, :, real, real], dtype=np.float32),
                    )
                )
        return results

    # --- helpers --------------------------------------------------------------------------------------------

    def padded_width(self, longest: int) -> int:
        """`longest` rounded up to a multiple of `pad_to_multiple`, never past the model window (or `longest`).

        onnxruntime keeps state per input shape (allocator arenas, kernel caches), so 256 distinct widths cost
        more memory than 32; the extra columns are masked out of attention and pooling, so outputs match.
        """
        m = self._pad_multiple
        rounded = -(-longest // m) * m
        return max(longest, min(rounded, self.manifest.max_seq_length))

    def _pad(self, rows: list[np.ndarray], prompt_lengths: Sequence[int] = (),
             type_ids: Sequence[np.ndarray | None] = ()) -> _Chunk:
        """Feeds for exactly the graph's inputs; rows padded on the model's side (left for decoders, so that
        every row's last token sits in the last column)."""
        lengths = tuple(len(r) for r in rows)
        width = self.padded_width(max(lengths))
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if self._left_padded else slice(0, len(r))
            input_ids[i, cols] = r
            attention_mask[i, cols] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.manifest.inputs:
            # A query-document pair carries its segment ids (0 for the query, 1 for the document); a single text
            # is all segment 0.
            token_type_ids = np.zeros_like(input_ids)
            for i, (r, types) in enumerate(zip(rows, type_ids or [None] * len(rows), strict=True)):
                if types is not None:
                    cols = slice(width - len(r), width) if self._left_padded else slice(0, len(r))
                    token_type_ids[i, cols] = types
            feeds["token_type_ids"] = token_type_ids
        if "prompt_length" in self.manifest.inputs:
            feeds["prompt_length"] = np.array(list(prompt_lengths) or [0] * len(rows), dtype=np.int64)  # (B,)
        if "top_k" in self.manifest.inputs:
            feeds["top_k"] = np.array([self.sparse_top_k], dtype=np.int64)  # (1,)
        return _Chunk(feeds, lengths)

    def _explain_chunk(self, row: Any) -> _Chunk:
        """One input, unpadded (batch 1): the explain graph's walk-through is of one sequence."""
        ids = _row_ids(row)[None, :]  # (1, T)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "query_index": np.array([int(getattr(row, "query_index", 0))], dtype=np.int64)}
        if "token_type_ids" in self.manifest.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return _Chunk(feeds, (ids.shape[1],))

    def _attention_groups(self, rows: list[np.ndarray]) -> list[list[np.ndarray]]:
        per_position = max(self.manifest.num_layers * self.manifest.num_heads, 1)
        groups: list[list[np.ndarray]] = []
        current: list[np.ndarray] = []
        longest = 0
        for r in rows:
            longest_if_added = max(longest, len(r))
            values = per_position * (len(current) + 1) * longest_if_added**2
            if current and values > self._attention_values_per_chunk:
                groups.append(current)
                current, longest_if_added = [], len(r)
            current.append(r)
            longest = longest_if_added
        if current:
            groups.append(current)
        return groups

    def warm_up(self, max_batch_size: int, max_batch_tokens: int) -> None:
        """Run the largest batch the settings allow, so shape or memory errors show at start-up, not at load."""
        rows = max(1, min(max_batch_size, max_batch_tokens // self.manifest.max_seq_length))
        first, *others = self.main_graphs
        for graph, n in ((first, rows), *((g, 1) for g in others), (ATTENTION, 1), (EXPLAIN, 1)):
            if graph in self._sessions:
                t0 = time.perf_counter()
                self._warm(graph, n)
                if graph == first:
                    self.warm_up_timing = WarmUpTiming(graph, n, self.padded_width(self.manifest.max_seq_length),
                                                       time.perf_counter() - t0)
        logger.info("warm-up done: %d rows × %d tokens on %s", rows, self.manifest.max_seq_length, self.variant)

    def _warm(self, graph: str, rows: int) -> None:
        special = self.manifest.special_tokens
        # Any in-vocabulary id will do (shapes and finiteness are what is checked): the model's own unknown or
        # padding token, led by its [CLS]/<s> (or BOS) where it has one.
        # The explain graph's outputs grow as L·H·T²: it is warmed at the longest input it accepts, not the window.
        width = self._explain_warm_width if graph == EXPLAIN else self.manifest.max_seq_length
        filler = np.full(width, special.get("unk", self.manifest.pad_token_id), dtype=np.int64)
        lead = special.get("cls", special.get("bos"))
        if lead is not None:
            filler[0] = lead
        out = self.execute(self.prepare(graph, [filler] * rows))
        if not np.isfinite(out[0].first_output()).all():
            raise ProviderError(f"warm-up of graph {graph!r} produced non-finite values")
