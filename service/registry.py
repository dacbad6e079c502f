"""The served models: one immutable handle per model, built once at start-up, looked up by name per request.

A handle owns everything one model needs (verified manifest, tokenizer, onnxruntime sessions, its own batcher
and engine). Models share the CPU or GPU but never a queue: a saturated embedder fills its own batcher while a
reranker's requests wait only for the compute they need (docs/performance.md, the fairness figure).

Start-up is two steps, as for one model: `load_models` (synchronous, no event loop: verify, tokenize, build and
warm sessions, model by model, failing with one line that names the model and the file), then
`build_registry` (a batcher and an engine per model), whose batchers the app's lifespan starts and drains.
The registry is never changed after it is built.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from service.admission import attention_knee, row_units_for
from service.artifacts import Manifest, load_manifest
from service.batching import Batcher, BatcherConfig, BatchRunner
from service.engine import Engine
from service.errors import ModelNotFoundError, QueueFullError, ServiceError
from service.metrics import Metrics
from service.runner import OnnxRunner, RowResult
from service.settings import ModelSpec, Settings
from service.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class ModelStartupError(ServiceError):
    """A model could not be loaded; the message names the model and the file."""

    code = "model_startup_failed"


@dataclass(frozen=True)
class ModelLimits:
    """The batcher limits one model runs under: its EMBED_MODELS options, else the server-wide settings."""

    max_batch_size: int
    max_batch_tokens: int
    max_queue_size: int

    @classmethod
    def of(cls, spec: ModelSpec, settings: Settings) -> ModelLimits:
        return cls(spec.max_batch_size or settings.max_batch_size,
                   spec.max_batch_tokens or settings.max_batch_tokens,
                   spec.max_queue_size or settings.max_queue_size)


@dataclass(frozen=True)
class LoadedModel:
    """The loop-free part of one model: verified manifest, tokenizer, warmed sessions, and what it cost."""

    name: str
    manifest: Manifest
    tokenizer: TextTokenizer
    runner: OnnxRunner
    limits: ModelLimits
    resident_bytes: int  # RSS growth while this model was loaded and warmed (an estimate: allocators keep pages)


@dataclass(frozen=True)
class ModelHandle:
    """Everything one served model owns. Immutable: built once, read by every request for this model."""

    name: str
    manifest: Manifest
    tokenizer: TextTokenizer
    runner: OnnxRunner
    batcher: Batcher[Any, RowResult]
    engine: Engine
    limits: ModelLimits
    resident_bytes: int

    @property
    def task(self) -> str:
        return self.manifest.task


def _rss_bytes() -> int:
    """This process's resident set from /proc (Linux); 0 where there is no /proc."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def intra_op_threads_per_model(settings: Settings, n_models: int) -> int:
    """EMBED_INTRA_OP_THREADS when set; with several models and the default (0), the cores split between them.

    Each model's session runs its own passes concurrently with the others'; two sessions with every core's
    worth of spinning threads each oversubscribe the CPU, and a probe of one model then waits inside its own
    forward pass (docs/performance.md, "Several models in one process": 2.7x idle p50 with 2 threads each on
    2 cores, 1.2x with 1 each, and more throughput for the saturated model too).
    """
    if settings.intra_op_threads or n_models == 1:
        return settings.intra_op_threads
    return max(1, (os.cpu_count() or 1) // n_models)


def load_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Verify, load and warm one model. Raises ServiceError whose message names the artifact file at fault."""
    before = _rss_bytes()
    manifest = load_manifest(spec.artifact_dir)
    name = spec.name or manifest.model_name
    vocab = manifest.raw.get("config", {}).get("vocab_size")
    tokenizer = TextTokenizer(manifest.tokenizer_path, max_length=manifest.max_seq_length,
                              max_chars=settings.max_chars_per_input, vocab_size=int(vocab) if vocab else None)
    limits = ModelLimits.of(spec, settings)
    runner = OnnxRunner(manifest, settings)
    runner.warm_up(limits.max_batch_size, limits.max_batch_tokens)
    resident = max(_rss_bytes() - before, 0)
    logger.info("model %r loaded from %s: task=%s, ~%.0f MiB resident", name, spec.artifact_dir, manifest.task,
                resident / 2**20)
    return LoadedModel(name, manifest, tokenizer, runner, limits, resident)


def load_models(settings: Settings) -> list[LoadedModel]:
    """Every model EMBED_MODELS (or EMBED_ARTIFACT_DIR) names, in order; the first failure stops start-up."""
    loaded: list[LoadedModel] = []
    specs = settings.model_specs()
    threads = intra_op_threads_per_model(settings, len(specs))
    if threads != settings.intra_op_threads:
        logger.info("%d models: %d intra-op thread(s) per model (EMBED_INTRA_OP_THREADS overrides)", len(specs),
                    threads)
        settings = settings.model_copy(update={"intra_op_threads": threads})
    for spec in specs:
        label = spec.name or str(spec.artifact_dir)
        try:
            model = load_model(spec, settings)
        except ServiceError as exc:
            raise ModelStartupError(f"model {label!r}: {exc.message}") from exc
        if any(m.name == model.name for m in loaded):
            raise ModelStartupError(f"model {label!r}: the name {model.name!r} is served twice; name the entries "
                                    "in EMBED_MODELS (name=dir)")
        loaded.append(model)
    return loaded


def _batcher_config(settings: Settings, model: LoadedModel) -> BatcherConfig:
    row_units = row_units_for(attention_knee(model.manifest.raw.get("config", {})))
    timing = getattr(model.runner, "warm_up_timing", None)
    prior = None
    if timing is not None and timing.seconds > 0:
        prior = timing.seconds / (timing.rows * row_units(timing.graph, timing.width))
    return BatcherConfig(
        max_batch_size=model.limits.max_batch_size,
        max_batch_tokens=model.limits.max_batch_tokens,
        padding_slack_tokens=settings.batch_padding_slack_tokens,
        max_wait_ms=settings.max_wait_ms,
        adaptive_window=settings.batch_window_adaptive,
        max_queue_size=model.limits.max_queue_size,
        queue_timeout_s=settings.queue_timeout_s,
        watchdog_timeout_s=settings.watchdog_timeout_s,
        padded_width=model.runner.padded_width,
        deadline_share=settings.admission_deadline_share or None,
        row_units=row_units,
        prior_s_per_unit=prior,
        small_request_tokens=settings.small_request_tokens,
    )


def build_registry(loaded: Sequence[LoadedModel], settings: Settings, metrics: Metrics) -> ModelRegistry:
    """A batcher and an engine per model (each its own queue); `ModelRegistry.start` starts the batchers."""
    handles: list[ModelHandle] = []
    for model in loaded:
        observer = metrics.for_model(model.name)
        observer.resident_bytes.set(model.resident_bytes)
        runner: BatchRunner[Any, RowResult] = model.runner  # or the fault injector's wrapper of it
        if settings.fault_injection:  # test only: the wrapper is not even imported otherwise
            from service.faults import FaultInjectingRunner

            runner = FaultInjectingRunner(model.runner, model.tokenizer, settings.fault_duration_s)
        batcher = Batcher(runner, _batcher_config(settings, model), observer=observer)
        engine = Engine(model.manifest, model.tokenizer, batcher, settings, observer, model.runner.graphs)
        handles.append(ModelHandle(model.name, model.manifest, model.tokenizer, model.runner, batcher, engine,
                                   model.limits, model.resident_bytes))
    return ModelRegistry(tuple(handles))


class ModelRegistry:
    """The served models by name; the first is the default. Read-only once built."""

    def __init__(self, handles: tuple[ModelHandle, ...]) -> None:
        if not handles:
            raise ValueError("a registry needs at least one model")
        self.handles = handles
        self._by_name = {h.name: h for h in handles}
        self.default = handles[0]

    def __iter__(self) -> Iterator[ModelHandle]:
        return iter(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.handles]

    def get(self, name: str | None, *, param: str = "model") -> ModelHandle:
        """The model a request names (None: the default); unknown -> ModelNotFoundError (404)."""
        if name is None:
            return self.default
        handle = self._by_name.get(name)
        if handle is None:
            raise ModelNotFoundError(
                f"model not found; this server serves: {', '.join(self._by_name)}", param=param)
        return handle

    def check_capacity(self, requests_at_door: int, small: bool = False) -> None:
        """The door's question: would a newcomer certainly be refused? With one model that is its batcher's
        answer; with several, only when every model refuses or the requests already let in would fill every
        model's queue, because the door cannot know which model the unread body names."""
        if len(self.handles) == 1:
            self.default.batcher.check_capacity(requests_at_door, small=small)
            return
        room = 0  # queue slots of the models that accept work; no exception is built unless one is answered
        open_models = 0
        for handle in self.handles:
            batcher = handle.batcher
            if batcher.accepting:
                room += batcher.max_queue_size
                open_models += batcher.queue_depth < batcher.max_queue_size and not batcher.over_budget()
        if open_models == 0:
            self.default.batcher.check_capacity(0)  # raises what every model would: full (429) or down (503)
            raise QueueFullError("the server is at capacity; retry later", retry_after_s=1)
        if requests_at_door >= room:
            raise QueueFullError("the server is at capacity; retry later", retry_after_s=1)

    async def start(self) -> None:
        for handle in self.handles:
            await handle.batcher.start()

    async def stop(self, timeout_s: float) -> None:
        """Drain every model's queue (each batcher answers what it holds), then release the engines."""
        await asyncio.gather(*(h.batcher.stop(timeout_s=timeout_s) for h in self.handles))
        for handle in self.handles:
            handle.engine.close()
