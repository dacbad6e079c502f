"""Tests for service/batching.py against a small deterministic fake runner.

The fake pads rows with PAD into a 2-D array plus mask (like the real runner) and returns, per row,
``(graph, tuple of the real tokens)``: a function of the real tokens only, so every result can be checked against
the item it must belong to. It records every prepare/execute call with timestamps and threads, can be gated (to
hang an execute), and raises on a poison token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from service.batching import Batcher, BatcherConfig, BatchItem, ItemOutcome
from service.errors import InferenceError, QueueFullError, QueueTimeoutError, UnavailableError

pytestmark = pytest.mark.timeout(30)

PAD = 0
POISON_EXECUTE = 666  # execute raises for any batch containing this token
POISON_PREPARE = 667  # prepare raises for any batch containing this token


@dataclass
class Call:
    kind: str  # "prepare" | "execute"
    graph: str
    rows: list[tuple[int, ...]]
    start: float
    end: float = 0.0
    thread: str = ""


@dataclass
class Prepared:
    graph: str
    ids: np.ndarray  # (B, T)
    mask: np.ndarray  # (B, T)


@dataclass
class FakeRunner:
    execute_delay_s: float = 0.0
    prepare_delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)  # execute waits while it is clear
    entered: threading.Event = field(default_factory=threading.Event)  # set when an execute begins
    prepare_raises: BaseException | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def _record(self, kind: str, graph: str, rows: list[tuple[int, ...]]) -> Call:
        call = Call(kind, graph, rows, time.monotonic(), thread=threading.current_thread().name)
        with self.lock:
            self.calls.append(call)
        return call

    def prepare(self, graph: str, rows: Sequence[np.ndarray]) -> Prepared:
        call = self._record("prepare", graph, [tuple(int(t) for t in r) for r in rows])
        time.sleep(self.prepare_delay_s)
        if self.prepare_raises is not None:
            raise self.prepare_raises
        if any(POISON_PREPARE in r for r in rows):
            raise ValueError("poison row in prepare")
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), PAD, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        call.end = time.monotonic()
        return Prepared(graph, ids, mask)

    def execute(self, prepared: Prepared) -> list[Any]:
        rows = [tuple(int(t) for t in ids[m == 1]) for ids, m in zip(prepared.ids, prepared.mask, strict=True)]
        call = self._record("execute", prepared.graph, rows)
        self.entered.set()
        self.gate.wait(timeout=5)
        time.sleep(self.execute_delay_s)
        call.end = time.monotonic()
        if (prepared.ids == POISON_EXECUTE).any():
            raise RuntimeError("poison row in execute")
        return [(prepared.graph, row) for row in rows]

    def executes(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.kind == "execute"]

    def prepares(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.kind == "prepare"]

    def executed_tokens(self) -> set[int]:
        return {t for c in self.executes() for row in c.rows for t in row}

    def prepared_tokens(self) -> set[int]:
        return {t for c in self.prepares() for row in c.rows for t in row}


@dataclass
class RecordingObserver:
    batches: list[tuple[str, int, int, int, float]] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    cancelled: int = 0
    timed_out: int = 0
    failures: int = 0

    def on_batch(self, graph: str, rows: int, padded_tokens: int, real_tokens: int, execute_s: float) -> None:
        self.batches.append((graph, rows, padded_tokens, real_tokens, execute_s))

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def on_cancelled(self, n_items: int) -> None:
        self.cancelled += n_items

    def on_timed_out(self, n_items: int) -> None:
        self.timed_out += n_items

    def on_failure(self, n_items: int) -> None:
        self.failures += n_items


def run(main: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run, failing the test on anything sent to the loop's exception handler.

    That catches "Task exception was never retrieved" and "Future exception was never retrieved".
    """
    reports: list[dict[str, Any]] = []

    async def wrapper() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        await main()
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(wrapper())
    gc.collect()
    assert not reports, reports


@contextlib.asynccontextmanager
async def started(runner: FakeRunner, observer: Any = None, **config: Any) -> AsyncIterator[Batcher]:
    batcher = Batcher(runner, BatcherConfig(**config), observer)
    await batcher.start()
    try:
        yield batcher
    finally:
        runner.gate.set()
        await batcher.stop(timeout_s=3)


def tokens(item_id: int, length: int) -> np.ndarray:
    """Distinct, recognisable row: every token is 1000 + item_id."""
    return np.full(length, 1000 + item_id, dtype=np.int64)


async def embed(batcher: Batcher, rows: Sequence[np.ndarray], graph: str = "embed") -> list[ItemOutcome]:
    admission = batcher.try_admit(len(rows))
    return await batcher.submit(admission, [BatchItem(r, graph) for r in rows])


async def wait_until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def assert_results(outcomes: list[ItemOutcome], rows: Sequence[np.ndarray], graph: str = "embed") -> None:
    assert len(outcomes) == len(rows)
    for outcome, row in zip(outcomes, rows, strict=True):
        assert outcome.error is None
        assert outcome.result == (graph, tuple(int(t) for t in row))


# 1. token budget with padding, max_batch_size, an over-budget item runs alone


def test_token_budget_counts_padding_and_caps_rows() -> None:
    lengths = [10] * 6 + [15] * 3 + [3] * 5 + [100]
    rows = [tokens(i, n) for i, n in enumerate(lengths)]
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, max_batch_size=4, max_batch_tokens=40, max_wait_ms=20) as b:
            outcomes = await embed(b, rows)
            assert_results(outcomes, rows)
            for outcome in outcomes:
                assert outcome.batch_size >= 1
                assert outcome.batch_tokens <= 40 or outcome.batch_size == 1

    run(main)
    executes = runner.executes()
    for call in executes:
        longest = max(len(r) for r in call.rows)
        assert len(call.rows) <= 4
        assert len(call.rows) * longest <= 40 or len(call.rows) == 1
    assert [c.rows for c in executes if any(len(r) == 100 for r in c.rows)] == [[tuple(rows[-1])]]
    assert max(len(c.rows) for c in executes) == 4  # batching did happen
    assert sorted(len(r) for c in executes for r in c.rows) == sorted(lengths)  # each item exactly once
    assert [(rows_, padded) for _, rows_, padded, _, _ in observer.batches] == [
        (len(c.rows), len(c.rows) * max(len(r) for r in c.rows)) for c in executes
    ]


def test_token_budget_counts_the_padding_a_longer_row_adds() -> None:
    rows = [tokens(0, 10), tokens(1, 15)]  # 10 + 15 real tokens fit 25, but padded it is 2 x 15 = 30
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_batch_size=4, max_batch_tokens=25, max_wait_ms=20) as b:
            assert_results(await embed(b, rows), rows)

    run(main)
    assert [c.rows for c in runner.executes()] == [[tuple(rows[0])], [tuple(rows[1])]]


# 2. length-aware grouping and fairness


@pytest.mark.parametrize(("slack", "expected"), [(16, [[10, 10, 11], [200]]), (10_000, [[10, 10, 11, 200]])])
def test_a_row_that_would_add_more_padding_than_the_slack_goes_elsewhere(slack: int, expected: list) -> None:
    """Compute is ~proportional to padded tokens: 3 short rows padded to 200 cost 4x their real size."""
    rows = [tokens(0, 10), tokens(1, 10), tokens(2, 200), tokens(3, 11)]
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_batch_size=8, max_wait_ms=20, padding_slack_tokens=slack) as b:
            assert_results(await embed(b, rows), rows)

    run(main)
    assert sorted(sorted(len(r) for r in c.rows) for c in runner.executes()) == expected


def test_mixed_lengths_are_grouped_with_low_padding_waste() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 129, size=64)]
    rows = [tokens(i, n) for i, n in enumerate(lengths)]
    runner = FakeRunner()

    async def main() -> None:
        # Slack off (large): this test is about grouping full batches by length, not about splitting them.
        async with started(runner, max_batch_size=8, max_batch_tokens=100_000, max_wait_ms=20,
                           padding_slack_tokens=10_000) as b:
            assert_results(await embed(b, rows), rows)

    run(main)
    executes = runner.executes()
    real = sum(lengths)
    padded = sum(len(c.rows) * max(len(r) for r in c.rows) for c in executes)
    fifo_padded = sum(len(lengths[i : i + 8]) * max(lengths[i : i + 8]) for i in range(0, 64, 8))
    assert fifo_padded / real > 1.5  # the input really is mixed: arrival-order batches waste a lot
    assert padded / real < 1.15, (padded, real)
    assert len(executes) == 8


def test_old_short_item_is_not_starved_by_newer_long_items() -> None:
    runner = FakeRunner(execute_delay_s=0.005)
    old = tokens(0, 2)
    newer = [[tokens(10 * r + k, 60) for k in range(4)] for r in range(1, 6)]

    async def main() -> None:
        async with started(runner, max_batch_size=4, max_batch_tokens=4 * 60, max_wait_ms=50) as b:
            first = asyncio.create_task(embed(b, [old]))
            await asyncio.sleep(0.005)
            stream = [asyncio.create_task(embed(b, rs)) for rs in newer]
            assert_results(await first, [old])
            for task, rs in zip(stream, newer, strict=True):
                assert_results(await task, rs)

    run(main)
    executes = runner.executes()
    # A "fullest group first" policy would run the four-of-a-kind long batches first; the oldest item anchors.
    assert tuple(old) in executes[0].rows
    assert sum(len(c.rows) for c in executes) == 21


# 3. the wait window


@pytest.mark.parametrize("max_wait_ms", [0.0, 40.0])
def test_lone_request_waits_at_most_the_window(max_wait_ms: float) -> None:
    runner = FakeRunner(execute_delay_s=0.02)

    async def main() -> None:
        async with started(runner, max_wait_ms=max_wait_ms) as b:
            await embed(b, [tokens(0, 5)])  # warm the threads
            t0 = time.monotonic()
            outcomes = await embed(b, [tokens(1, 5)])
            elapsed = time.monotonic() - t0
            assert_results(outcomes, [tokens(1, 5)])
            assert elapsed >= 0.02 + max_wait_ms / 1000 - 0.002
            assert elapsed < 0.02 + max_wait_ms / 1000 + 0.05, elapsed
            assert outcomes[0].queue_ms < max_wait_ms + 25
            assert outcomes[0].inference_ms >= 19

    run(main)


def test_adaptive_window_lets_a_lone_client_skip_the_wait() -> None:
    """One client, one input at a time: batches hold one row, so the 80 ms window is skipped after the first."""
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_wait_ms=80, adaptive_window=True) as b:
            for i in range(4):
                t0 = time.monotonic()
                outcomes = await embed(b, [tokens(i, 5)])
                assert_results(outcomes, [tokens(i, 5)])
                assert time.monotonic() - t0 < 0.05, f"request {i} waited the window"

    run(main)


def test_adaptive_window_waits_for_an_admitted_request_still_tokenizing() -> None:
    """A second request admitted (slots reserved) but not yet submitted: the first waits for it, one batch."""
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_wait_ms=80, adaptive_window=True) as b:
            second = b.try_admit(1)  # being tokenized
            first = asyncio.create_task(embed(b, [tokens(0, 5)]))
            await asyncio.sleep(0.02)
            assert not first.done()
            outcomes = await b.submit(second, [BatchItem(tokens(1, 5), "embed")])
            assert outcomes[0].batch_size == 2
            assert (await first)[0].batch_size == 2

    run(main)


def test_adaptive_window_comes_back_once_batches_hold_several_rows() -> None:
    """After a burst of batches of several rows the smoothed rows per batch is over the bar: a lone request
    waits the window again (company is likely)."""
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_wait_ms=60, adaptive_window=True) as b:
            await asyncio.gather(*(embed(b, [tokens(i, 5) for i in range(4 * k, 4 * k + 4)]) for k in range(3)))
            t0 = time.monotonic()
            await embed(b, [tokens(99, 5)])
            assert time.monotonic() - t0 >= 0.055

    run(main)


def test_burst_within_window_forms_one_batch() -> None:
    runner = FakeRunner()
    rows = [tokens(i, 8) for i in range(5)]

    async def main() -> None:
        async with started(runner, max_wait_ms=80) as b:
            tasks = []
            for row in rows:
                tasks.append(asyncio.create_task(embed(b, [row])))
                await asyncio.sleep(0.005)
            for task, row in zip(tasks, rows, strict=True):
                outcomes = await task
                assert_results(outcomes, [row])
                assert outcomes[0].batch_size == 5

    run(main)
    assert [len(c.rows) for c in runner.executes()] == [5]


def test_items_arriving_during_a_forward_pass_share_the_next_batch() -> None:
    runner = FakeRunner(execute_delay_s=0.06)
    rows = [tokens(i, 8) for i in range(1, 6)]

    async def main() -> None:
        async with started(runner, max_batch_size=8, max_wait_ms=0) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 8)]))
            await asyncio.to_thread(runner.entered.wait, 2)
            tasks = []
            for row in rows:  # each one's window (0 ms) is long over when the inference thread frees up
                tasks.append(asyncio.create_task(embed(b, [row])))
                await asyncio.sleep(0.005)
            assert_results(await first, [tokens(0, 8)])
            for task, row in zip(tasks, rows, strict=True):
                assert_results(await task, [row])

    run(main)
    assert [len(c.rows) for c in runner.executes()] == [1, 5]


# 4. inference off the loop, one inference thread, prepare of N+1 overlapping execute of N


def test_event_loop_stays_responsive_during_long_execute() -> None:
    runner = FakeRunner(execute_delay_s=0.3)

    async def main() -> None:
        async with started(runner, max_wait_ms=0) as b:
            task = asyncio.create_task(embed(b, [tokens(0, 4)]))
            gaps, last = [], time.monotonic()
            while not task.done():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            assert_results(await task, [tokens(0, 4)])
            assert len(gaps) > 20
            assert max(gaps) < 0.1, max(gaps)
            await asyncio.gather(*(embed(b, [tokens(i, 3)]) for i in range(1, 4)))

    run(main)
    threads = {c.thread for c in runner.executes()}
    assert len(threads) == 1
    assert threads.pop() != threading.main_thread().name


def test_prepare_of_next_batch_overlaps_execute_of_current() -> None:
    runner = FakeRunner(execute_delay_s=0.1, prepare_delay_s=0.03)
    rows = [tokens(i, 5) for i in range(4)]

    async def main() -> None:
        async with started(runner, max_batch_size=2, max_wait_ms=0) as b:
            assert_results(await embed(b, rows), rows)

    run(main)
    prepares, executes = runner.prepares(), runner.executes()
    assert [len(c.rows) for c in executes] == [2, 2]
    assert len(prepares) == 2  # each batch padded once, in the prepare thread
    assert prepares[1].rows == executes[1].rows
    assert executes[0].start < prepares[1].end < executes[0].end  # batch 2 padded while batch 1 ran
    assert executes[1].start >= executes[0].end  # one batch at a time on the inference thread
    assert prepares[1].thread != executes[0].thread


# 5. admission control


def test_admission_rejects_fast_when_full_and_slots_return() -> None:
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, max_queue_size=4, max_wait_ms=0) as b:
            runner.gate.clear()
            first = asyncio.create_task(embed(b, [tokens(0, 3)] * 3))
            await asyncio.sleep(0)
            assert b.queue_depth == 3
            t0 = time.monotonic()
            with pytest.raises(QueueFullError) as info:
                b.try_admit(2)
            assert time.monotonic() - t0 < 0.005
            assert info.value.retry_after_s > 0
            with b.try_admit(1) as admission:  # released unused on exit
                assert b.queue_depth == 4
                assert admission.held == 1
            assert b.queue_depth == 3
            runner.gate.set()
            assert_results(await first, [tokens(0, 3)] * 3)
            assert b.queue_depth == 0
            admission = b.try_admit(4)
            partial = b.submit(admission, [BatchItem(tokens(1, 2))])  # 3 slots left unused
            task = asyncio.create_task(partial)
            await asyncio.sleep(0)
            assert b.queue_depth == 1
            assert_results(await task, [tokens(1, 2)])
            assert b.queue_depth == 0

    run(main)
    assert observer.depths[-1] == 0
    assert max(observer.depths) == 4


# 6. queue deadline


def test_items_past_queue_deadline_time_out_and_are_never_computed() -> None:
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, queue_timeout_s=0.08, max_batch_size=1, max_wait_ms=0) as b:
            runner.gate.clear()
            a = asyncio.create_task(embed(b, [tokens(0, 3)]))
            await asyncio.to_thread(runner.entered.wait, 2)
            t0 = time.monotonic()
            waiting = asyncio.gather(embed(b, [tokens(1, 3)]), embed(b, [tokens(2, 3)]))
            (late1,), (late2,) = await waiting
            assert 0.07 < time.monotonic() - t0 < 0.5
            for late in (late1, late2):
                assert isinstance(late.error, QueueTimeoutError)
                assert late.result is None
                assert late.queue_ms >= 75
            assert not a.done()
            assert b.queue_depth == 1
            runner.gate.set()
            assert_results(await a, [tokens(0, 3)])
            assert b.queue_depth == 0

    run(main)
    assert 1001 not in runner.executed_tokens()
    assert 1002 not in runner.executed_tokens()
    # at most one of them was padded ahead (the lookahead batch), and neither after its deadline
    assert len({1001, 1002} & runner.prepared_tokens()) <= 1
    assert observer.timed_out == 2


# 9. watchdog (with 6: waiting items still time out behind a hung execute)


def test_watchdog_reports_stall_and_waiting_items_still_time_out() -> None:
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, watchdog_timeout_s=0.15, queue_timeout_s=0.05, max_wait_ms=0) as b:
            assert b.health().ok
            runner.gate.clear()  # the next execute hangs
            hung = asyncio.create_task(embed(b, [tokens(0, 3)]))
            await asyncio.to_thread(runner.entered.wait, 2)
            assert b.health().ok
            (waiting,) = await embed(b, [tokens(1, 3)])
            assert isinstance(waiting.error, QueueTimeoutError)
            (stalled,) = await hung  # answered by the watchdog, not left hanging
            assert isinstance(stalled.error, UnavailableError)
            health = b.health()
            assert not health.ok
            assert not b.healthy
            assert "no batch finished" in (health.reason or "")
            assert health.seconds_since_progress >= 0.15
            assert b.queue_depth == 0
            assert b.in_flight_batches >= 1  # the hung one (+ an emptied lookahead)
            runner.gate.set()  # the forward pass returns at last: progress resumes
            await wait_until(lambda: b.healthy)
            assert_results(await embed(b, [tokens(2, 3)]), [tokens(2, 3)])

    run(main)


def test_idle_batcher_is_healthy_however_long_since_last_batch() -> None:
    async def main() -> None:
        async with started(FakeRunner(), watchdog_timeout_s=0.03, max_wait_ms=0) as b:
            await asyncio.sleep(0.06)
            assert b.health().ok
            assert_results(await embed(b, [tokens(0, 2)]), [tokens(0, 2)])
            assert b.health().ok

    run(main)


# 7. cancellation


def test_cancelled_waiting_items_are_dropped_before_compute() -> None:
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, max_batch_size=1, max_wait_ms=0) as b:
            runner.gate.clear()
            a = asyncio.create_task(embed(b, [tokens(0, 3)]))
            await asyncio.to_thread(runner.entered.wait, 2)
            gone = asyncio.create_task(embed(b, [tokens(1, 3), tokens(2, 3), tokens(3, 3)]))
            await asyncio.sleep(0.01)
            assert b.queue_depth == 4
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert b.queue_depth == 1
            assert observer.cancelled == 3
            runner.gate.set()
            assert_results(await a, [tokens(0, 3)])
            assert_results(await embed(b, [tokens(4, 3)]), [tokens(4, 3)])
            assert b.queue_depth == 0

    run(main)
    assert not {1001, 1002, 1003} & runner.executed_tokens()
    assert [c.rows for c in runner.executes()] == [[(1000,) * 3], [(1004,) * 3]]


def test_cancelled_running_items_finish_quietly() -> None:
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, max_wait_ms=0) as b:
            runner.gate.clear()
            a = asyncio.create_task(embed(b, [tokens(0, 3), tokens(1, 3)]))
            await asyncio.to_thread(runner.entered.wait, 2)
            a.cancel()
            with pytest.raises(asyncio.CancelledError):
                await a
            assert b.queue_depth == 2  # still computing: the slots are freed when the batch ends
            runner.gate.set()
            await wait_until(lambda: b.queue_depth == 0)
            assert b.in_flight_batches == 0

    run(main)
    assert observer.cancelled == 0
    assert len(runner.executes()) == 1


# 8. failures: isolate the poison row; a dead loop answers everyone and turns unhealthy


@pytest.mark.parametrize("poison", [POISON_EXECUTE, POISON_PREPARE])
def test_failed_batch_is_isolated_to_the_poison_item(poison: int) -> None:
    runner, observer = FakeRunner(), RecordingObserver()
    good = [[tokens(i, 4)] for i in range(3)]
    bad_request = [tokens(10, 4), np.array([101, poison, 102]), tokens(11, 6)]

    async def main() -> None:
        async with started(runner, observer, max_wait_ms=30) as b:
            results = await asyncio.gather(*(embed(b, rs) for rs in [*good, bad_request]))
            for outcomes, rs in zip(results[:3], good, strict=True):
                assert_results(outcomes, rs)
            mixed = results[3]
            assert_results([mixed[0], mixed[2]], [bad_request[0], bad_request[2]])
            assert isinstance(mixed[1].error, InferenceError)
            assert mixed[1].result is None
            assert b.healthy
            for i in range(5):
                assert_results(await embed(b, [tokens(20 + i, 3)]), [tokens(20 + i, 3)])
            assert b.queue_depth == 0

    run(main)
    assert observer.failures == 1
    sizes = [len(c.rows) for c in runner.executes()]
    if poison == POISON_EXECUTE:
        assert sizes[:7] == [6, 1, 1, 1, 1, 1, 1]  # the failed batch, then each member alone
    else:
        assert sizes[:6] == [1] * 6  # prepare failed: straight to one-by-one (the poison never executes)


class WeirdError(BaseException):
    """Not an Exception: slips past ordinary error handling, like a bug would."""


def test_loop_that_dies_fails_queued_items_and_turns_unhealthy(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_wait_ms=0) as b:
            assert_results(await embed(b, [tokens(0, 3)]), [tokens(0, 3)])

            def broken(anchor: Any) -> Any:
                raise RuntimeError("bug in batch formation")

            b._form_batch = broken  # type: ignore[method-assign]
            outcomes = await embed(b, [tokens(1, 3), tokens(2, 3)])
            assert all(isinstance(o.error, UnavailableError) for o in outcomes)
            assert not b.healthy
            assert "unexpectedly" in (b.health().reason or "")
            assert b.queue_depth == 0
            with pytest.raises(UnavailableError):
                b.try_admit(1)

    with caplog.at_level(logging.CRITICAL, logger="service.batching"):
        run(main)
    assert any("unexpectedly" in r.getMessage() for r in caplog.records)


def test_base_exception_from_runner_kills_loop_loudly_not_silently() -> None:
    runner = FakeRunner(prepare_raises=WeirdError("weird"))

    async def main() -> None:
        async with started(runner, max_wait_ms=0) as b:
            admission = b.try_admit(1)  # admitted while alive, submitted after the loop died
            outcomes = await embed(b, [tokens(0, 3), tokens(1, 3)])
            assert all(isinstance(o.error, UnavailableError) for o in outcomes)
            assert not b.health().ok
            (late,) = await b.submit(admission, [BatchItem(tokens(2, 3))])
            assert isinstance(late.error, UnavailableError)
            assert b.queue_depth == 0

    run(main)
    assert runner.executes() == []


def test_base_exception_from_execute_answers_the_batch_and_turns_unhealthy() -> None:
    class WeirdRunner(FakeRunner):
        def execute(self, prepared: Prepared) -> list[Any]:
            super().execute(prepared)
            raise WeirdError("weird")

    runner = WeirdRunner()

    async def main() -> None:
        async with started(runner, max_wait_ms=0) as b:
            outcomes = await embed(b, [tokens(0, 3), tokens(1, 3)])
            assert all(isinstance(o.error, InferenceError) for o in outcomes)
            assert not b.healthy
            with pytest.raises(UnavailableError):
                b.try_admit(1)
            assert b.queue_depth == 0

    run(main)
    assert len(runner.executes()) == 1  # no row-by-row retry of something that is not an ordinary error


# 10. results map back to the right item and request


def test_results_map_back_for_many_concurrent_requests() -> None:
    rng = np.random.default_rng(1)
    runner = FakeRunner()
    requests = []
    for _ in range(40):
        n_items = int(rng.integers(1, 7))
        graph = "attention" if rng.random() < 0.3 else "embed"
        rows = [rng.integers(1, 30000, size=int(rng.integers(1, 51))) for _ in range(n_items)]
        requests.append((graph, rows, float(rng.random() * 0.004)))

    async def one(b: Batcher, graph: str, rows: list[np.ndarray], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        assert_results(await embed(b, rows, graph), rows, graph)

    async def main() -> None:
        async with started(runner, max_batch_size=8, max_batch_tokens=200, max_wait_ms=2) as b:
            await asyncio.gather(*(one(b, *req) for req in requests))
            assert b.queue_depth == 0

    run(main)
    executes = runner.executes()
    assert sum(len(c.rows) for c in executes) == sum(len(rows) for _, rows, _ in requests)
    assert {c.graph for c in executes} == {"embed", "attention"}
    for call in executes:
        assert len(call.rows) <= 8
        assert len(call.rows) * max(len(r) for r in call.rows) <= 200
    assert any(len(c.rows) > 1 for c in executes)


# 11. stop drains


def test_stop_drains_admitted_work_then_refuses() -> None:
    runner = FakeRunner(execute_delay_s=0.01)

    async def main() -> None:
        batcher = Batcher(runner, BatcherConfig(max_batch_size=2, max_wait_ms=5))
        await batcher.start()
        queued = [asyncio.create_task(embed(batcher, [tokens(i, 4)])) for i in range(6)]
        await asyncio.sleep(0)
        tokenizing = batcher.try_admit(2)  # admitted, still being tokenized when stop begins
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waits for the admission still out
        assert not batcher.accepting
        assert batcher.health().ok  # draining is not a liveness failure
        with pytest.raises(UnavailableError):
            batcher.try_admit(1)
        late_rows = [tokens(10, 3), tokens(11, 3)]
        assert_results(await batcher.submit(tokenizing, [BatchItem(r) for r in late_rows]), late_rows)
        await stopping
        for i, task in enumerate(queued):
            assert_results(task.result(), [tokens(i, 4)])
        assert batcher.queue_depth == 0
        assert not batcher.health().ok
        assert "stopped" in (batcher.health().reason or "")
        with pytest.raises(UnavailableError):
            batcher.try_admit(1)

    run(main)


def test_stop_with_timeout_answers_leftovers_when_inference_is_wedged() -> None:
    runner = FakeRunner()

    async def main() -> None:
        batcher = Batcher(runner, BatcherConfig(max_batch_size=1, max_wait_ms=0))
        await batcher.start()
        runner.gate.clear()
        hung = asyncio.create_task(embed(batcher, [tokens(0, 2)]))
        await asyncio.to_thread(runner.entered.wait, 2)
        waiting = asyncio.create_task(embed(batcher, [tokens(1, 2)]))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await batcher.stop(timeout_s=0.05)
        assert time.monotonic() - t0 < 0.5
        for task in (waiting, hung):  # nobody is left waiting, computed or not
            (outcome,) = await task
            assert isinstance(outcome.error, UnavailableError)
        runner.gate.set()

    run(main)
    assert 1001 not in runner.executed_tokens()


def test_check_capacity_counts_requests_already_let_in() -> None:
    """Requests past the door will each reserve a slot: when they alone fill the queue, refuse newcomers early."""
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, max_queue_size=4) as b:
            b.check_capacity(requests_at_door=3)  # room for one more
            with pytest.raises(QueueFullError):
                b.check_capacity(requests_at_door=4)
            with b.try_admit(4), pytest.raises(QueueFullError):
                b.check_capacity(requests_at_door=0)  # reservations alone fill it too

    run(main)


class _Result:
    """A result the test can hold a weak reference to (tuples cannot be weakly referenced)."""

    def __init__(self, row: tuple[int, ...]) -> None:
        self.row = row


@dataclass
class _ObjectRunner(FakeRunner):
    def execute(self, prepared: Prepared) -> list[Any]:
        return [_Result(row) for _, row in super().execute(prepared)]


def test_a_finished_requests_results_are_freed_without_the_garbage_collector() -> None:
    """Items point back at their request; once the request is answered that cycle is broken, so its results
    (attention maps, explain outputs: tens of MB) go when the caller drops them, not at the next cyclic GC."""
    import weakref

    async def main() -> None:
        async with started(_ObjectRunner(), max_wait_ms=0) as batcher:
            gc.disable()
            try:
                outcomes = await embed(batcher, [tokens(1, 5), tokens(2, 7)])
                refs = [weakref.ref(o.result) for o in outcomes]
                del outcomes
                await embed(batcher, [tokens(3, 4)])  # the worker moves on to another batch
                assert [r() for r in refs] == [None, None]
            finally:
                gc.enable()

    run(main)
