"""Prometheus metrics (names in docs/contract.md §3), one `CollectorRegistry` per app.

A registry per app (not prometheus-client's global one) lets tests build many apps in one process without
"Duplicated timeseries" errors, and keeps /metrics to exactly what this server measures.
Everything a model does carries a `model` label: `Metrics.for_model(name)` gives the bound view that is that
model's batcher observer and its engine's stage timer. HTTP-level series (requests, latency, in-flight, door
refusals) have none, because the door answers before the body that names the model is read.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All the server's metrics; methods are cheap and safe to call from the event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("embed_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "embed_request_duration_seconds", "HTTP request latency", ["route"], buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.stage_duration = Histogram(
            "embed_stage_duration_seconds",
            "Time per stage of a request (tokenize, queue, inference, total)",
            ["model", "stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("embed_queue_depth", "Inputs admitted and not yet answered", ["model"], registry=r)
        self.inflight = Gauge("embed_inflight_requests", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram(
            "embed_batch_size", "Rows per executed batch", ["model", "graph"], buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "embed_batch_tokens", "Padded tokens per executed batch", ["model", "graph"],
            buckets=_BATCH_TOKEN_BUCKETS, registry=r,
        )
        self.rejected = Counter("embed_rejected", "Requests refused before compute, by reason", ["reason"], registry=r)
        self.cancelled = Counter(
            "embed_cancelled_before_compute", "Inputs dropped because the client went away", ["model"], registry=r
        )
        self.queue_timeouts = Counter("embed_queue_timeouts", "Inputs that waited past the queue deadline", ["model"],
                                      registry=r)
        self.inference_failures = Counter("embed_inference_failures", "Inputs whose forward pass failed", ["model"],
                                          registry=r)
        # How late the event loop runs a timer: what every probe and every refusal waits for under a burst.
        self.loop_lag = Histogram(
            "embed_event_loop_lag_seconds", "How late a 50 ms timer fired on the event loop (sampled 20 times a s)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r,
        )
        self.resident_bytes = Gauge(
            "embed_model_resident_bytes", "Resident memory a model added when it was loaded and warmed (estimate)",
            ["model"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)


class ModelMetrics:
    """One model's view of the metrics: its batcher's `BatchObserver` and its engine's stage timer."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self._stage = {stage: metrics.stage_duration.labels(model, stage)
                       for stage in ("tokenize", "queue", "inference", "total")}
        self._metrics = metrics
        self._queue_depth = metrics.queue_depth.labels(model)
        self._cancelled = metrics.cancelled.labels(model)
        self._timeouts = metrics.queue_timeouts.labels(model)
        self._failures = metrics.inference_failures.labels(model)
        self.resident_bytes = metrics.resident_bytes.labels(model)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stage[stage].observe(max(seconds, 0.0))

    # --- BatchObserver --------------------------------------------------------------------------------------

    def on_batch(self, graph: str, rows: int, padded_tokens: int, real_tokens: int, execute_s: float) -> None:
        self._metrics.batch_size.labels(self.model, graph).observe(rows)
        self._metrics.batch_tokens.labels(self.model, graph).observe(padded_tokens)

    def on_queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)

    def on_cancelled(self, n_items: int) -> None:
        self._cancelled.inc(n_items)

    def on_timed_out(self, n_items: int) -> None:
        self._timeouts.inc(n_items)

    def on_failure(self, n_items: int) -> None:
        self._failures.inc(n_items)
