"""Prometheus metrics (names in docs/contract.md §3), one `CollectorRegistry` per app.

A registry per app (not prometheus-client's global one) lets tests build many apps in one process without
"Duplicated timeseries" errors, and keeps /metrics to exactly what this server measures.
`Metrics` is also the batcher's `BatchObserver`.
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
            ["stage"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("embed_queue_depth", "Inputs admitted and not yet answered", registry=r)
        self.inflight = Gauge("embed_inflight_requests", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram(
            "embed_batch_size", "Rows per executed batch", ["graph"], buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "embed_batch_tokens", "Padded tokens per executed batch", ["graph"], buckets=_BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.rejected = Counter("embed_rejected", "Requests refused before compute, by reason", ["reason"], registry=r)
        self.cancelled = Counter(
            "embed_cancelled_before_compute", "Inputs dropped because the client went away", registry=r
        )
        self.queue_timeouts = Counter("embed_queue_timeouts", "Inputs that waited past the queue deadline", registry=r)
        self.inference_failures = Counter("embed_inference_failures", "Inputs whose forward pass failed", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_duration.labels(stage).observe(max(seconds, 0.0))

    # --- BatchObserver --------------------------------------------------------------------------------------

    def on_batch(self, graph: str, rows: int, padded_tokens: int, real_tokens: int, execute_s: float) -> None:
        self.batch_size.labels(graph).observe(rows)
        self.batch_tokens.labels(graph).observe(padded_tokens)

    def on_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def on_cancelled(self, n_items: int) -> None:
        self.cancelled.inc(n_items)

    def on_timed_out(self, n_items: int) -> None:
        self.queue_timeouts.inc(n_items)

    def on_failure(self, n_items: int) -> None:
        self.inference_failures.inc(n_items)
