"""bench/bench_serving.py's bare onnxruntime ceiling: one session, warmed at every shape it times, then timed.

A recording wrapper around the real session (tiny model) and a clock that logs its reads show the order of
events: every padded shape runs untimed before the clock first starts, and the timed pass runs each batch once.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import bench_serving
from bench.corpus import sentences

pytestmark = pytest.mark.timeout(120)


class RecordingSession:
    def __init__(self, inner: Any, events: list[tuple[str, Any]]) -> None:
        self.inner, self.events = inner, events

    def run(self, names: list[str], feeds: dict[str, Any]) -> Any:
        self.events.append(("run", feeds["input_ids"].shape))
        return self.inner.run(names, feeds)


@pytest.mark.parametrize("warmup_passes", [1, 2])
def test_every_timed_shape_is_warmed_before_the_clock_starts(tiny_artifact_dir: Path, warmup_passes: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, Any]] = []
    clock = iter(range(1, 1000))

    def perf_counter() -> float:
        events.append(("clock", None))
        return float(next(clock))

    monkeypatch.setattr(bench_serving, "time", SimpleNamespace(perf_counter=perf_counter))
    session = RecordingSession(bench_serving.onnxruntime_session(tiny_artifact_dir, "fp32"), events)
    corpus = sentences(40, seed=7, profile="mixed")
    result = bench_serving.onnxruntime_sorted(session, tiny_artifact_dir, corpus, batch_size=8,
                                              warmup_passes=warmup_passes)

    first_clock = events.index(("clock", None))
    warm = [shape for kind, shape in events[:first_clock] if kind == "run"]
    timed = [shape for kind, shape in events[first_clock:] if kind == "run"]
    assert len(timed) == 5, "one timed pass over 40 sentences in batches of 8"
    assert len({shape[1] for shape in timed}) > 1, "length-sorted batches have several widths"
    assert warm == timed * warmup_passes, "each timed shape ran untimed first, in the same order"
    assert [kind for kind, _ in events[first_clock:]] == ["clock", *["run"] * 5, "clock"]
    assert result["warmup_passes"] == warmup_passes
    assert result["sentences_per_s"] == pytest.approx(40 / 1.0)  # the fake clock advanced by one


def test_no_warmup_times_cold(tiny_artifact_dir: Path) -> None:
    events: list[tuple[str, Any]] = []
    session = RecordingSession(bench_serving.onnxruntime_session(tiny_artifact_dir, "fp32"), events)
    bench_serving.onnxruntime_sorted(session, tiny_artifact_dir, sentences(16, seed=7), batch_size=8,
                                     warmup_passes=0)
    assert len(events) == 2
