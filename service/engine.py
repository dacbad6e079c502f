"""The request pipeline without HTTP: admit -> tokenize -> batcher -> normalise / Matryoshka slice / attention cut.

Order matters for load shedding and fairness:
1. counts are checked and queue slots reserved (`try_admit`) before any tokenizing, so an overloaded server
   answers 429 in microseconds;
2. token-level limits (tokens per request, attention budget) are checked after tokenizing but before compute;
3. every item's outcome is inspected; one failed item fails the request with that item's error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np

from service import explain as explanation
from service.artifacts import Manifest
from service.batching import Batcher, BatchItem, ItemOutcome
from service.errors import (
    AttentionBudgetError,
    ExplainBudgetError,
    InferenceError,
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceError,
)
from service.metrics import ModelMetrics
from service.runner import ATTENTION, EMBED, EXPLAIN, SCORE, SPARSE, TOKENS, RowResult
from service.settings import Settings
from service.tokenizer import Encoded, TextTokenizer, TruncationPolicy

logger = logging.getLogger(__name__)

_NORM_FLOOR = 1e-12
TOKENIZE_WORKERS = 2  # the tokenizer thread pool (reported as TEI's `tokenization_workers`)
# A prompt name no real model defines (it starts with NUL): "no prompt at all",
# as opposed to None, which applies the model's default prompt.
NO_PROMPT = "\x00none"

# One input: a text, or a list of token ids taken verbatim.
Input = str | Sequence[int]


@dataclass(frozen=True)
class AttentionSpec:
    """Which attention maps to return; None means all layers / all heads."""

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    aggregate: Literal["none", "mean"] = "none"


@dataclass(frozen=True)
class EncodeOptions:
    policy: TruncationPolicy = field(default_factory=TruncationPolicy)
    normalize: bool = True
    dimensions: int | None = None
    token_embeddings: bool = False
    attention: AttentionSpec | None = None
    # A sentence-transformers prompt name; None applies the model's default prompt (if it has one), like
    # SentenceTransformer.encode. Prompts are prepended to text inputs only, never to token ids.
    prompt_name: str | None = None


@dataclass(frozen=True)
class ItemResult:
    encoded: Encoded
    embedding: np.ndarray  # (dimensions,) float32
    token_embeddings: np.ndarray | None = None  # (T, D)
    attention: np.ndarray | None = None  # (L_sel, H_sel, T, T); H_sel = 1 when averaged over heads
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()


@dataclass(frozen=True)
class Timings:
    tokenize_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class RowsResult:
    """What the task heads return: one raw row result per input (logits, or sparse weights), with the costs."""

    rows: list[RowResult]
    encoded: list[Encoded]
    timings: Timings
    prompt_tokens: int
    characters: int

    @property
    def truncated_indexes(self) -> list[int]:
        return [i for i, e in enumerate(self.encoded) if e.truncated]


@dataclass(frozen=True)
class ExplainRun:
    """One input through the explain graph: its tokens, the query token, every output by name, the costs."""

    encoded: Encoded
    token: int
    outputs: dict[str, np.ndarray]
    timings: Timings
    prompt_tokens: int
    characters: int
    truncated_indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class EncodeResult:
    items: list[ItemResult]
    timings: Timings
    prompt_tokens: int
    characters: int

    @property
    def truncated_indexes(self) -> list[int]:
        return [i for i, it in enumerate(self.items) if it.encoded.truncated]


class Engine:
    """Owns the tokenizer thread pool; one per app, built in the lifespan."""

    def __init__(
        self,
        manifest: Manifest,
        tokenizer: TextTokenizer,
        batcher: Batcher[Any, RowResult],  # whatever the runner pads batches into, its rows are RowResults
        settings: Settings,
        metrics: ModelMetrics,
        graphs: frozenset[str],
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.settings = settings
        self.metrics = metrics
        self.graphs = graphs
        self._executor = ThreadPoolExecutor(max_workers=TOKENIZE_WORKERS, thread_name_prefix="tokenize")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- public operations ----------------------------------------------------------------------------------

    async def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = True,
                       prompt_name: str | None = None) -> list[Encoded]:
        """Tokenize for /tokenize: no window, no batcher, but the same char cap and off the event loop."""
        self._check_count(len(texts))
        return await self.tokenizer.aencode_batch(
            texts,
            TruncationPolicy(truncate=False),
            self._executor,
            add_special_tokens=add_special_tokens,
            enforce_window=False,
            allow_empty=True,
            prefix=self.prompt(prompt_name),
        )

    async def decode(self, ids_lists: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        """Token ids back to text, one string per list (TEI's /decode), off the event loop."""
        self._check_count(len(ids_lists))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            functools.partial(self.tokenizer.decode_batch, ids_lists, skip_special_tokens=skip_special_tokens),
        )

    def prompt_name_for(self, prompt_name: str | None, input_type: str | None) -> str | None:
        """/v1/embeddings' `input_type` as a prompt name: `query` -> the model's "query" prompt, `document` ->
        its "document" or "passage" prompt; a role the model has no prompt for gets no prompt (not the default,
        which is usually the query prompt)."""
        if input_type is None:
            return prompt_name
        if prompt_name is not None:
            raise InvalidRequestError("give prompt_name or input_type, not both", param="input_type",
                                      code="invalid_value")
        names = ("query",) if input_type == "query" else ("document", "passage")
        return next((n for n in names if n in self.manifest.prompts), NO_PROMPT)

    def prompt(self, name: str | None) -> str:
        """The text a prompt name prepends; None gives the model's default prompt, or none."""
        prompts = self.manifest.prompts
        if name is None:
            default = self.manifest.default_prompt_name
            return prompts[default] if default is not None else ""
        if name == NO_PROMPT:
            return ""
        if name not in prompts:
            have = ", ".join(sorted(prompts)) if prompts else "none"
            raise InvalidRequestError(
                f"prompt_name is not a prompt of this model (its prompts: {have})", param="prompt_name",
                code="unknown_prompt",
            )
        return prompts[name]

    async def encode(self, inputs: Sequence[Input], options: EncodeOptions) -> EncodeResult:
        """Run inputs through the model. Raises ServiceError subclasses only (mapped to HTTP in api/errors.py)."""
        started = time.perf_counter()
        self._check_count(len(inputs))
        self._check_options(options)
        prefix = self.prompt(options.prompt_name)
        graph = ATTENTION if options.attention else TOKENS if options.token_embeddings else EMBED
        encoded, rows, timings = await self._submit(
            len(inputs), graph, lambda: self._tokenize_inputs(inputs, options.policy, prefix), options)
        results = [self._finish(e, row, options) for e, row in zip(encoded, rows, strict=True)]
        total_s = time.perf_counter() - started
        self.metrics.observe_stage("total", total_s)
        return EncodeResult(
            items=results,
            timings=replace(timings, total_ms=total_s * 1000),
            prompt_tokens=sum(e.token_count for e in encoded),
            characters=sum(e.char_count for e in encoded),
        )

    async def similarity(self, source: str, sentences: Sequence[str],
                         options: EncodeOptions) -> tuple[list[float], EncodeResult]:
        """Cosine similarity of `source` with each of `sentences` (TEI's /similarity), in one pass."""
        if not sentences:
            raise InvalidRequestError("inputs.sentences must not be empty", param="inputs.sentences",
                                      code="empty_input")
        result = await self.encode([source, *sentences], replace(options, normalize=True, dimensions=None))
        vectors = np.stack([it.embedding for it in result.items])  # (1 + N, D), unit length
        return [float(x) for x in np.clip(vectors[1:] @ vectors[0], -1.0, 1.0)], result

    async def score_pairs(self, pairs: Sequence[tuple[str, str]], policy: TruncationPolicy, *,
                          param: str = "texts") -> RowsResult:
        """Raw logits of a reranker or classifier for (query, document) or (text, text) pairs, in order."""
        self._check_count(len(pairs), param=param, limit=self._pair_limit(param))
        return await self._run_rows(len(pairs), SCORE, lambda: self.tokenizer.aencode_pairs(
            pairs, policy, self._executor, param=param))

    async def score_texts(self, texts: Sequence[str], policy: TruncationPolicy) -> RowsResult:
        """Raw logits of a classifier for single texts."""
        self._check_count(len(texts))
        return await self._run_rows(len(texts), SCORE, lambda: self.tokenizer.aencode_batch(
            texts, policy, self._executor))

    async def sparse(self, inputs: Sequence[Input], policy: TruncationPolicy,
                     prompt_name: str | None = None) -> RowsResult:
        """A SPLADE model's largest vocabulary weights per input (zeros included where it has fewer)."""
        self._check_count(len(inputs))
        prefix = self.prompt(prompt_name)
        return await self._run_rows(len(inputs), SPARSE, lambda: self._tokenize_inputs(inputs, policy, prefix))

    @property
    def explain_max_tokens(self) -> int:
        """The longest input (special tokens included) the explain routes take: their limit, within the window."""
        return min(self.settings.explain_max_tokens, self.manifest.max_seq_length)

    async def explain_tokens(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize inputs for an explanation: no prompt, never truncated, each within `explain_max_tokens`
        (an explanation of a cut text would explain another text)."""
        self._check_count(len(texts))
        encoded = await self.tokenizer.aencode_batch(texts, TruncationPolicy(truncate=False), self._executor,
                                                     enforce_window=False)
        limit = self.explain_max_tokens
        for i, e in enumerate(encoded):
            if e.token_count > limit:
                where = "input" if len(texts) == 1 else f"input[{i}]"
                raise ExplainBudgetError(
                    f"{where} has {e.token_count} tokens; explanations take at most {limit} "
                    "(EMBED_EXPLAIN_MAX_TOKENS, within the model's window): send a shorter text",
                    param=where)
        return encoded

    def check_explain_selection(self, layer: int, head: int) -> None:
        """Layer and head in range, and the explain graph there: checked before any tokenizing or compute."""
        if EXPLAIN not in self.graphs:
            raise InvalidRequestError("explanations are not available for this model artifact (exported without "
                                      "its explain graph, or EMBED_EXPLAIN_GRAPH=off)", param="model",
                                      code="explain_unavailable")
        for name, value, count in (("layer", layer, self.manifest.num_layers),
                                   ("head", head, self.manifest.num_heads)):
            if not 0 <= value < count:
                raise InvalidRequestError(f"{name} must be in [0, {count})", param=name)

    async def explain(self, text: str, layer: int, head: int, token: int | None) -> ExplainRun:
        """One input through the explain graph, with `token` (None: the first non-special one) as the query."""
        started = time.perf_counter()
        self.check_explain_selection(layer, head)
        chosen: list[int] = []

        async def tokenize() -> list[Encoded]:
            (encoded,) = await self.explain_tokens([text])
            seq = encoded.token_count
            index = explanation.default_token(encoded) if token is None else token
            if not 0 <= index < seq:
                raise InvalidRequestError(f"token must be in [0, {seq}): the input has {seq} tokens", param="token")
            chosen.append(index)
            return [encoded]

        encoded, rows, timings = await self._submit(1, EXPLAIN, tokenize, EncodeOptions(),
                                                    query_index=lambda: chosen[0])
        outputs = rows[0].explain
        if outputs is None or not all(np.isfinite(v).all() for v in outputs.values()):
            logger.error("non-finite or missing explain outputs for an input of %d tokens", encoded[0].token_count)
            raise InferenceError()
        total_s = time.perf_counter() - started
        self.metrics.observe_stage("total", total_s)
        return ExplainRun(encoded[0], chosen[0], outputs, replace(timings, total_ms=total_s * 1000),
                          encoded[0].token_count, encoded[0].char_count)

    async def similarity_explain(self, texts: Sequence[str]) -> tuple[list[Encoded], EncodeResult]:
        """Two inputs through the main graph, for the token-pair split of their cosine: the tokens (no prompt, so
        every token is the input's), and each input's pooled vector (not normalised) and contextual vectors."""
        if len(texts) != 2:
            raise InvalidRequestError("input must be exactly two texts", param="input", code="invalid_value")
        encoded = await self.explain_tokens(texts)
        options = EncodeOptions(policy=TruncationPolicy(truncate=False), normalize=False, token_embeddings=True,
                                prompt_name=NO_PROMPT)
        result = await self.encode([[int(i) for i in e.ids] for e in encoded], options)
        return encoded, result

    def _pair_limit(self, param: str) -> int:
        return self.settings.max_documents_per_request if param in ("texts", "documents") else \
            self.settings.max_inputs_per_request

    async def _run_rows(self, n: int, graph: str,
                        tokenize: Callable[[], Awaitable[list[Encoded]]]) -> RowsResult:
        """`_submit` for a head whose rows need no post-processing: only their finiteness is checked."""
        started = time.perf_counter()
        encoded, rows, timings = await self._submit(n, graph, tokenize, EncodeOptions())
        for row, e in zip(rows, encoded, strict=True):
            if not np.isfinite(row.first_output()).all():
                logger.error("non-finite %s output for an input of %d tokens", graph, e.token_count)
                raise InferenceError()
        total_s = time.perf_counter() - started
        self.metrics.observe_stage("total", total_s)
        return RowsResult(rows, encoded, replace(timings, total_ms=total_s * 1000),
                          sum(e.token_count for e in encoded), sum(e.char_count for e in encoded))

    async def _submit(self, n: int, graph: str, tokenize: Callable[[], Awaitable[list[Encoded]]],
                      options: EncodeOptions, query_index: Callable[[], int] = lambda: 0,
                      ) -> tuple[list[Encoded], list[RowResult], Timings]:
        """Admit `n` inputs, tokenize them, check the token limits, batch and wait: the one path every head's
        request takes. Slots are reserved before tokenizing, so an overloaded server answers 429 at once.
        `query_index` (asked after tokenizing) is the explain graph's query token.
        Returns the stage timings without the total (the caller's post-processing belongs to it)."""
        with self.batcher.try_admit(n) as admission:
            t0 = time.perf_counter()
            encoded = await tokenize()
            tokenize_s = time.perf_counter() - t0
            self.metrics.observe_stage("tokenize", tokenize_s)
            self._check_tokens(encoded, options)
            query = query_index()
            items = [BatchItem(e.ids, graph, e.prompt_length, e.type_ids, query) for e in encoded]
            outcomes = await self.batcher.submit(admission, items)
        rows, queue_ms, inference_ms = self._rows_or_raise(outcomes)
        self.metrics.observe_stage("queue", queue_ms / 1000)
        self.metrics.observe_stage("inference", inference_ms / 1000)
        return encoded, rows, Timings(tokenize_s * 1000, queue_ms, inference_ms)

    async def _tokenize_inputs(self, inputs: Sequence[Input], policy: TruncationPolicy, prefix: str) -> list[Encoded]:
        """Texts through the tokenizer (off the loop, with the prompt), token-id lists verbatim, in input order."""
        text_at = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        ids_at = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        mixed = bool(text_at) and bool(ids_at)
        out: list[Encoded | None] = [None] * len(inputs)
        if text_at:
            texts = [cast(str, inputs[i]) for i in text_at]
            encoded = await self.tokenizer.aencode_batch(
                texts, policy, self._executor, prefix=prefix, positions=text_at if mixed else None
            )
            for i, e in zip(text_at, encoded, strict=True):
                out[i] = e
        if ids_at:
            ids = [cast(Sequence[int], inputs[i]) for i in ids_at]
            for i, e in zip(ids_at, self.tokenizer.encode_ids(ids, policy, positions=ids_at), strict=True):
                out[i] = e
        return cast(list[Encoded], out)

    async def probe(self, timeout_s: float) -> bool:
        """One tiny forward pass through the batcher (TEI's health re-probe); True when it computed.

        The input is one word with the model's own special tokens (from its tokenizer, so no family's ids are
        written here). A success also resets the batcher's failed-batch streak, which lets /ready turn 200 again.
        """
        ids = self.tokenizer.encode_batch(["ok"], TruncationPolicy())[0].ids
        try:
            with self.batcher.try_admit(1, enforce_deadline=False) as admission:
                async with asyncio.timeout(timeout_s):
                    (outcome,) = await self.batcher.submit(admission, [BatchItem(ids, EMBED)], enforce_deadline=False)
        except (ServiceError, TimeoutError):
            return False
        return outcome.ok

    # --- checks ---------------------------------------------------------------------------------------------

    def _check_count(self, n: int, *, param: str = "input", limit: int | None = None) -> None:
        if n == 0:
            raise InvalidRequestError(f"{param} must not be empty", param=param, code="empty_input")
        limit = limit or self.settings.max_inputs_per_request
        if n > limit:
            raise PayloadTooLargeError(f"too many {param}: {n} > {limit}", param=param, code="too_many_inputs")

    def _check_options(self, options: EncodeOptions) -> None:
        dim = options.dimensions
        if dim is not None and not 1 <= dim <= self.manifest.embedding_dim:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {self.manifest.embedding_dim}", param="dimensions"
            )
        spec = options.attention
        if spec is None:
            return
        if ATTENTION not in self.graphs:
            raise InvalidRequestError(
                "attention maps are not available for this model artifact", param="attention",
                code="attention_unavailable",
            )
        for name, chosen, count in (
            ("layers", spec.layers, self.manifest.num_layers),
            ("heads", spec.heads, self.manifest.num_heads),
        ):
            if chosen is not None and (not chosen or any(not 0 <= x < count for x in chosen)):
                raise InvalidRequestError(
                    f"attention.{name} must be 'all' or a non-empty list of indexes in [0, {count})",
                    param=f"attention.{name}",
                )

    def _check_tokens(self, encoded: list[Encoded], options: EncodeOptions) -> None:
        total = sum(e.token_count for e in encoded)
        if total > self.settings.max_tokens_per_request:
            raise PayloadTooLargeError(
                f"request has {total} tokens, max {self.settings.max_tokens_per_request}",
                param="input",
                code="too_many_tokens",
            )
        spec = options.attention
        if spec is None:
            return
        n_layers = len(spec.layers) if spec.layers is not None else self.manifest.num_layers
        n_heads = len(spec.heads) if spec.heads is not None else self.manifest.num_heads
        per_map = n_layers * (1 if spec.aggregate == "mean" else n_heads)
        values = sum(per_map * e.token_count**2 for e in encoded)
        budget = self.settings.attention_budget
        if values > budget:
            raise AttentionBudgetError(
                f"attention output would have {values} values, over the limit of {budget} per request "
                "(EMBED_ATTENTION_BUDGET); select fewer layers or heads, aggregate, or send shorter inputs",
                param="attention",
            )

    # --- results --------------------------------------------------------------------------------------------

    @staticmethod
    def _rows_or_raise(outcomes: list[ItemOutcome[RowResult]]) -> tuple[list[RowResult], float, float]:
        """Every item's row, or the first item's error; with the slowest item's queue and inference times."""
        rows: list[RowResult] = []
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
            if outcome.result is None:  # the batcher sets exactly one of the two; never reached
                raise InferenceError()
            rows.append(outcome.result)
        queue_ms = max((o.queue_ms for o in outcomes), default=0.0)
        inference_ms = max((o.inference_ms for o in outcomes), default=0.0)
        return rows, queue_ms, inference_ms

    def _finish(self, encoded: Encoded, row: RowResult, options: EncodeOptions) -> ItemResult:
        if row.embedding is None:  # the embed/tokens/attention graphs always pool; never reached
            logger.error("no sentence embedding for an input of %d tokens", encoded.token_count)
            raise InferenceError()
        vector = row.embedding
        if options.dimensions is not None:
            vector = vector[: options.dimensions]  # Matryoshka: cut first, then re-normalise
        if options.normalize:
            vector = vector / max(float(np.linalg.norm(vector)), _NORM_FLOOR)
        vector = vector.astype(np.float32, copy=False)
        if not np.isfinite(vector).all():
            logger.error("non-finite embedding for an input of %d tokens", encoded.token_count)
            raise InferenceError()
        tokens = row.token_embeddings if options.token_embeddings else None
        if tokens is not None and not np.isfinite(tokens).all():
            logger.error("non-finite token embeddings for an input of %d tokens", encoded.token_count)
            raise InferenceError()
        attention: np.ndarray | None = None
        layers: tuple[int, ...] = ()
        heads: tuple[int, ...] = ()
        spec = options.attention
        if spec is not None and row.attentions is not None:
            layers = spec.layers if spec.layers is not None else tuple(range(row.attentions.shape[0]))
            heads = spec.heads if spec.heads is not None else tuple(range(row.attentions.shape[1]))
            attention = row.attentions[list(layers)][:, list(heads)]  # (L_sel, H_sel, T, T)
            if spec.aggregate == "mean":
                attention = attention.mean(axis=1, keepdims=True)  # (L_sel, 1, T, T): always 4-D
            if not np.isfinite(attention).all():
                logger.error("non-finite attention for an input of %d tokens", encoded.token_count)
                raise InferenceError()
        return ItemResult(
            encoded=encoded,
            embedding=vector,
            token_embeddings=row.token_embeddings if options.token_embeddings else None,
            attention=attention,
            layers=tuple(layers),
            heads=tuple(heads),
        )
