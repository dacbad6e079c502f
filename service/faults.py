"""Test-only fault injection (EMBED_FAULT_INJECTION=true; off by default): prove the failure paths on a real server.

A wrapper around the batcher's runner that watches the token ids of every row for marker words. The markers are
ordinary text, so a test sends them over HTTP like any input; each must stand as a word of its own:

    FAULT_MARKERS["raise"]  this row's forward pass raises            -> 500 inference_error for its request only
    FAULT_MARKERS["hang"]   the forward pass sleeps `fault_duration_s` -> watchdog: /health 503, waiters get 503
    FAULT_MARKERS["break"]  every forward pass fails for `fault_duration_s` (a lost GPU) -> readiness trips

It matches token ids, not text, because that is all the runner sees, and it sits in front of the real
`OnnxRunner` so everything around it (batcher isolation, watchdog, metrics, HTTP mapping) is the production code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

import numpy as np

from service.batching import BatchRunner, PreparedT, ResultT
from service.tokenizer import TextTokenizer, TruncationPolicy

logger = logging.getLogger(__name__)

FAULT_MARKERS = {"raise": "zzfaultraisezz", "hang": "zzfaulthangzz", "break": "zzfaultbreakzz"}


class InjectedFault(RuntimeError):
    """What the runner raises for a marker row; the batcher treats it like any onnxruntime failure."""


@dataclass(frozen=True)
class _Marked(Generic[PreparedT]):
    inner: PreparedT
    faults: frozenset[str]


def _contains(row: np.ndarray, pattern: np.ndarray) -> bool:
    n, m = len(row), len(pattern)
    if m == 0 or n < m:
        return False
    windows = np.lib.stride_tricks.sliding_window_view(row, m)  # (n - m + 1, m)
    return bool((windows == pattern).all(axis=1).any())


class FaultInjectingRunner(Generic[PreparedT, ResultT]):
    """A `BatchRunner` that delegates to the real one, failing or stalling on marker rows."""

    def __init__(self, inner: BatchRunner[PreparedT, ResultT], tokenizer: TextTokenizer, duration_s: float) -> None:
        self._inner = inner
        self._duration_s = duration_s
        self._broken_until = 0.0
        self._patterns = {
            kind: tokenizer.encode_batch([marker], TruncationPolicy(), add_special_tokens=False)[0].ids
            for kind, marker in FAULT_MARKERS.items()
        }
        logger.warning("fault injection is ON (EMBED_FAULT_INJECTION): marker inputs make inference fail or hang")

    def prepare(self, graph: str, rows: Sequence[np.ndarray]) -> _Marked[PreparedT]:
        ids = [np.asarray(getattr(r, "token_ids", r)) for r in rows]
        found = frozenset(kind for kind, pat in self._patterns.items() if any(_contains(r, pat) for r in ids))
        return _Marked(self._inner.prepare(graph, rows), found)

    def execute(self, prepared: _Marked[PreparedT]) -> list[ResultT]:
        if "break" in prepared.faults:
            self._broken_until = time.monotonic() + self._duration_s
        if time.monotonic() < self._broken_until:
            raise InjectedFault("injected fault: inference is broken")
        if "raise" in prepared.faults:
            raise InjectedFault("injected fault: poison input")
        if "hang" in prepared.faults:
            time.sleep(self._duration_s)
        return self._inner.execute(prepared.inner)
