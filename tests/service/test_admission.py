"""Deadline-aware admission: the cost model (service/admission.py) and the batcher refusing what it cannot finish.

The batcher tests price work with a fixed warm-up prior and hold the fake runner on its gate, so what is
"queued" and what it costs are known exactly: no test depends on how fast this machine runs.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.admission import WorkEstimate, attention_knee, row_units_for
from service.batching import BatchItem
from service.errors import QueueFullError
from tests.service.test_batching import FakeRunner, assert_results, embed, run, started, tokens, wait_until

pytestmark = pytest.mark.timeout(30)


# ---- the cost model


def test_cold_start_knows_nothing_until_a_prior_or_a_batch() -> None:
    cold = WorkEstimate()
    assert cold.seconds("embed", 100) is None
    assert cold.typical_seconds(100) is None
    assert cold.item_units() is None
    assert cold.request_units() is None
    primed = WorkEstimate(prior_s_per_unit=0.001)
    assert primed.seconds("embed", 100) == pytest.approx(0.1)
    primed.observe_batch("embed", padded_units=1000, real_units=1000, seconds=0.5)
    assert primed.seconds("embed", 100) == pytest.approx(0.05)  # a measured batch replaces the prior


def test_rate_follows_a_throughput_drop_within_a_few_batches() -> None:
    est = WorkEstimate()
    for _ in range(20):
        est.observe_batch("embed", 2000, 2000, 0.25)  # 8,000 units/s
    assert est.seconds_per_unit("embed") == pytest.approx(0.25 / 2000)
    for _ in range(8):
        est.observe_batch("embed", 2000, 2000, 1.0)  # the machine got 4x slower mid-burst
    rate = est.seconds_per_unit("embed")
    assert rate is not None
    assert rate > 0.8 * (1.0 / 2000)
    for _ in range(20):
        est.observe_batch("embed", 2000, 2000, 0.25)
    assert est.seconds_per_unit("embed") == pytest.approx(0.25 / 2000, rel=0.05)  # and back again


def test_full_batches_weigh_more_than_lone_rows() -> None:
    est = WorkEstimate()
    est.observe_batch("embed", 2000, 2000, 0.25)
    est.observe_batch("embed", 10, 10, 0.005)  # a lone row: dominated by per-batch overhead
    rate = est.seconds_per_unit("embed")
    assert rate is not None
    assert rate < 1.05 * (0.25 / 2000)


def test_a_batch_has_a_fixed_cost_besides_its_tokens() -> None:
    """Calm traffic runs lone rows whose time is mostly fixed cost: a burst's full batches must not be priced
    at a lone row's seconds per token (that refused calm-sized traffic on the first try of this estimate)."""
    est = WorkEstimate(batch_units=2000)
    for size in (8, 12, 10, 9, 11):
        est.observe_batch("embed", size, size, 0.0006 + 0.0001 * size)  # 0.6 ms fixed + 0.1 ms per unit
    full = est.seconds("embed", 2000)
    assert full is not None
    assert full == pytest.approx(0.0006 + 0.2, rel=0.02)  # not 2000 x (1.6 ms / 10) = 0.32 s
    two_batches = est.seconds("embed", 4000)
    assert two_batches == pytest.approx(2 * 0.0006 + 0.4, rel=0.02)
    est.observe_batch("embed", 2000, 2000, 0.2006)
    assert est.seconds("embed", 10) == pytest.approx(0.0016, rel=0.05)


def test_a_lazily_built_graphs_first_batch_does_not_price_its_work_for_ever() -> None:
    est = WorkEstimate()
    for _ in range(5):
        est.observe_batch("embed", 1000, 1000, 0.1)
    est.observe_batch("attention", 100, 100, 5.0)  # 50 s per 1,000 units: the session build, not the work
    rate = est.seconds_per_unit("attention")
    assert rate is not None
    assert rate <= 10 * 2 * 1e-4 * 1.01  # at most 10x the unmeasured-graph estimate (2x the embed rate)


def test_long_inputs_cost_more_than_their_token_count() -> None:
    knee = attention_knee({"hidden_size": 384, "intermediate_size": 1536})
    assert knee == 2 * 384 + 1536
    units = row_units_for(knee)
    assert units("embed", 512) > 4 * units("embed", 128) * 1.15  # attention grows with T per token
    assert units("embed", 8) == pytest.approx(8 * (1 + 8 / knee))
    assert attention_knee({}) == float("inf")  # no config: plain token counts
    assert row_units_for(attention_knee({}))("embed", 100) == 100


def test_attention_requests_are_priced_at_their_own_rate() -> None:
    est = WorkEstimate(unmeasured_factor=2.0)
    est.observe_batch("embed", 1000, 1000, 0.1)
    # Not measured yet: twice the slowest measured graph, not the embed graph's token price.
    assert est.seconds("attention", 100) == pytest.approx(2 * 0.01)
    est.observe_batch("attention", 100, 100, 0.05)  # writing L x H x T^2 maps: 5x the embed graph per unit
    assert est.seconds("attention", 100) == pytest.approx(0.05)
    assert est.seconds("embed", 100) == pytest.approx(0.01)
    assert est.typical_seconds(100) == pytest.approx(0.01)  # unknown graph: priced as the graph that did most


def test_padding_is_learned_and_priced() -> None:
    est = WorkEstimate(prior_s_per_unit=0.001)
    est.observe_batch("embed", padded_units=1500, real_units=1000, seconds=1.5)
    assert est.padding_ratio == pytest.approx((1 + 1500) / (1 + 1000), rel=0.01)
    assert est.seconds("embed", 1000) == pytest.approx(1000 * est.padding_ratio * 0.001)


# ---- the batcher's admission

PRIOR = 0.01  # seconds per token: a 10-token row is 0.1 s of work
DEADLINE = dict(deadline_share=0.5, queue_timeout_s=4.0, prior_s_per_unit=PRIOR, max_batch_tokens=40,
                max_wait_ms=0)  # budget 2 s = 20 rows of 10 tokens; 4 rows a batch


def test_deadline_admission_refuses_what_would_wait_past_the_budget() -> None:
    runner = FakeRunner()
    runner.gate.clear()  # the first batch hangs: everything after it stays queued

    async def main() -> None:
        async with started(runner, **DEADLINE) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))
            await wait_until(lambda: runner.entered.is_set())
            admitted: list[asyncio.Task[object]] = []
            refused: QueueFullError | None = None
            for i in range(1, 40):
                try:
                    admission = b.try_admit(2)
                except QueueFullError as exc:
                    refused = exc
                    break
                rows = [tokens(2 * i, 10), tokens(2 * i + 1, 10)]
                admitted.append(asyncio.create_task(b.submit(admission, [BatchItem(r, "embed") for r in rows])))
                await asyncio.sleep(0)  # let it queue
            assert refused is not None, "the budget never refused"
            queued_rows = 2 * len(admitted)
            assert 14 <= queued_rows <= 22  # ~2 s of 0.1 s rows (the hung batch's remainder counts too)
            assert refused.retry_after_s > 0
            backlog = b.backlog_s()
            assert backlog is not None
            assert 1.5 <= backlog <= 2.2
            runner.gate.set()
            results = await asyncio.gather(first, *admitted)
            assert all(o.ok for outcomes in results for o in outcomes)  # what was admitted was finished

    run(main)


def test_exact_price_at_submit_refuses_a_request_the_estimate_let_in() -> None:
    runner = FakeRunner()
    runner.gate.clear()

    async def main() -> None:
        async with started(runner, **DEADLINE) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))
            await wait_until(lambda: runner.entered.is_set())
            filler = asyncio.create_task(embed(b, [tokens(i, 10) for i in range(1, 15)]))  # 1.4 s queued
            await asyncio.sleep(0)
            admission = b.try_admit(1)  # priced at the mean item (10 tokens): fits
            with pytest.raises(QueueFullError):  # but it is one long input: 1.4 s + 0.8 s > 2 s
                await b.submit(admission, [BatchItem(tokens(99, 80), "embed")])
            assert admission.held == 0  # its slot is given back
            runner.gate.set()
            await asyncio.gather(first, filler)

    run(main)


def test_an_idle_server_admits_a_request_bigger_than_the_budget() -> None:
    runner = FakeRunner()

    async def main() -> None:
        async with started(runner, **DEADLINE) as b:
            rows = [tokens(i, 10) for i in range(30)]  # 3 s of work > the 2 s budget, nothing ahead of it
            assert_results(await embed(b, rows), rows)

    run(main)


def test_a_big_request_is_admitted_behind_a_lone_small_batch() -> None:
    """A serial client's large request must not get 429 because a one-row batch happens to be running."""
    runner = FakeRunner()
    runner.gate.clear()

    async def main() -> None:
        async with started(runner, **DEADLINE) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))  # 0.1 s running: under one batch (0.4 s)
            await wait_until(lambda: runner.entered.is_set())
            b.check_capacity()  # the door lets it in
            rows = [tokens(i, 10) for i in range(1, 31)]  # 3 s of work > the 2 s budget
            big = asyncio.create_task(embed(b, rows))
            await asyncio.sleep(0.01)
            runner.gate.set()
            assert_results(await big, rows)
            await first

    run(main)


def test_cold_start_without_a_prior_counts_slots_only() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    config = {**DEADLINE, "prior_s_per_unit": None, "max_queue_size": 64}

    async def main() -> None:
        async with started(runner, **config) as b:
            tasks = [asyncio.create_task(embed(b, [tokens(i, 10)])) for i in range(60)]
            await wait_until(lambda: runner.entered.is_set())
            assert b.backlog_s() is None  # nothing measured: no estimate
            assert b.queue_depth == 60  # all admitted, as slot counting alone allows
            runner.gate.set()
            await asyncio.gather(*tasks)

    run(main)


def test_the_health_probe_is_not_refused_by_the_budget() -> None:
    runner = FakeRunner()
    runner.gate.clear()

    async def main() -> None:
        async with started(runner, **DEADLINE) as b:
            rows = [tokens(i, 10) for i in range(1, 25)]  # 2.4 s: over the budget, queued regardless
            reserved = b.try_admit(len(rows))  # before any request was priced: slots only
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))
            await wait_until(lambda: runner.entered.is_set())
            filler = asyncio.create_task(b.submit(reserved, [BatchItem(r, "embed") for r in rows],
                                                  enforce_deadline=False))
            await asyncio.sleep(0)
            assert b.over_budget()
            with pytest.raises(QueueFullError):
                b.check_capacity()
            probe = asyncio.create_task(b.submit(b.try_admit(1, enforce_deadline=False),
                                                 [BatchItem(np.array([7]), "embed")],
                                                 enforce_deadline=False))
            await asyncio.sleep(0)
            runner.gate.set()
            (outcome,) = await probe
            assert outcome.ok
            await asyncio.gather(first, filler)

    run(main)


# ---- the small lane


def test_a_small_request_runs_ahead_of_queued_big_work() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    config = {**DEADLINE, "small_request_tokens": 8, "queue_timeout_s": 60.0}

    async def main() -> None:
        async with started(runner, **config) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))
            await wait_until(lambda: runner.entered.is_set())
            big = [asyncio.create_task(embed(b, [tokens(10 * r + i, 10) for i in range(1, 9)])) for r in range(4)]
            await asyncio.sleep(0.01)  # queued: 32 rows, 8 batches
            small = asyncio.create_task(embed(b, [tokens(999, 5)]))
            await asyncio.sleep(0.01)
            assert b.backlog_s(small=True) is not None
            runner.gate.set()
            await small
            executed = [row[0] for call in runner.executes() for row in call.rows]
            # The hung batch, then at most the batch already formed for the big work, then the small one.
            assert executed.index(1999) <= 1 + 4
            await asyncio.gather(first, *big)

    run(main)


def test_a_stream_of_small_requests_does_not_starve_big_work() -> None:
    runner = FakeRunner(execute_delay_s=0.005)
    config = {**DEADLINE, "small_request_tokens": 8, "queue_timeout_s": 60.0, "deadline_share": None,
              "max_batch_tokens": 20}

    async def main() -> None:
        async with started(runner, **config) as b:
            stop = asyncio.Event()

            async def small_stream() -> None:
                i = 0
                while not stop.is_set():
                    await embed(b, [tokens(5000 + i, 4)])
                    i += 1

            streams = [asyncio.create_task(small_stream()) for _ in range(6)]
            await asyncio.sleep(0.02)
            rows = [tokens(i, 10) for i in range(12)]  # 6 batches of 2
            assert_results(await asyncio.wait_for(embed(b, rows), 10), rows)
            stop.set()
            await asyncio.gather(*streams)
            kinds = ["small" if all(row[0] >= 6000 for row in call.rows) else "big" for call in runner.executes()]
            first_big = kinds.index("big")
            last_big = len(kinds) - 1 - kinds[::-1].index("big")
            span = kinds[first_big:last_big + 1]
            assert span.count("small") <= span.count("big")  # the lane takes at most every other turn

    run(main)


def test_batches_choose_rows_among_the_oldest_work_only() -> None:
    """A request's odd-length rows are not overtaken without bound by later requests whose rows fit better."""
    runner = FakeRunner()
    runner.gate.clear()
    config = {"max_batch_tokens": 40, "max_wait_ms": 0, "max_batch_size": 4}

    async def main() -> None:
        async with started(runner, **config) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 10)]))
            await wait_until(lambda: runner.entered.is_set())
            early = asyncio.create_task(embed(b, [tokens(1, 3), tokens(2, 10)]))  # 3 tokens: an odd length
            await asyncio.sleep(0)
            later = [asyncio.create_task(embed(b, [tokens(100 + i, 10)])) for i in range(60)]
            await asyncio.sleep(0.01)
            runner.gate.set()
            await early
            done_later = sum(t.done() for t in later)
            assert done_later <= 4 * 4 * 2  # it ran within the pool's few batches, not after all 60
            await asyncio.gather(first, *later)

    run(main)


def test_a_burst_of_small_requests_queues_about_a_batch_not_the_whole_budget() -> None:
    """All small: the lane is the queue, so it holds ~1 full batch (0.4 s here), not the 2 s budget."""
    runner = FakeRunner()
    runner.gate.clear()
    config = {**DEADLINE, "small_request_tokens": 8}

    async def main() -> None:
        async with started(runner, **config) as b:
            first = asyncio.create_task(embed(b, [tokens(0, 5)]))
            await wait_until(lambda: runner.entered.is_set())
            admitted: list[asyncio.Task[object]] = []
            with pytest.raises(QueueFullError):  # noqa: PT012 - the loop is what runs into the limit
                for i in range(1, 100):
                    admission = b.try_admit(1)
                    admitted.append(asyncio.create_task(b.submit(admission, [BatchItem(tokens(i, 5), "embed")])))
                    await asyncio.sleep(0)
            assert 5 <= len(admitted) <= 10  # 0.05 s each: ~0.35 s of lane after the running batch's 0.05 s
            lane = b.backlog_s(small=True)
            assert lane is not None
            assert 0.35 <= lane <= 0.5
            b.check_capacity()  # a big request would still be priced against the 2 s budget
            runner.gate.set()
            await asyncio.gather(first, *admitted)

    run(main)


def test_refused_small_clients_are_spread_further_while_refusals_outnumber_admissions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 one-sentence clients told to return within the lane's ~0.3 s came back ~550 times a second for ~55
    admissions: the small refusals' spread grows by √(refused/admitted) each tuning step while refusals dominate,
    shrinks once they ease, and big requests' Retry-After stays their own backlog's."""
    import random

    from service import batching
    from service.batching import Batcher, BatcherConfig

    clock = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(random, "random", lambda: 1.0)  # the top of each spread, so the values are exact
    b: Batcher = Batcher(FakeRunner(), BatcherConfig(**DEADLINE))
    backlog = 0.3
    assert b._refusal_retry(0.1, backlog, small=True) == pytest.approx(0.1 + backlog)  # nothing learnt yet
    spreads = []
    for _ in range(6):  # 3 s of 40 refusals per admission
        for _ in range(40):
            b._refusal_retry(0.1, backlog, small=True)
        b._pressure.admitted(clock[0])
        clock[0] += 0.5
        spreads.append(b._refusal_retry(0.1, backlog, small=True) - 0.1)
    assert spreads[0] > 3 * backlog  # √40 ≈ 6.3 times per step
    assert spreads == sorted(spreads)
    assert spreads[-1] == pytest.approx(60.0 - 0.1)  # Retry-After's cap: a minute
    assert b._refusal_retry(0.1, 2.0, small=False) == pytest.approx(2.1)  # a big request: its backlog only
    for _ in range(40):  # refusals stop; admissions go on: the spread shrinks back towards the backlog
        for _ in range(5):
            b._pressure.admitted(clock[0])
        clock[0] += 0.5
        b._refusal_retry(0.1, backlog, small=True)
    assert b._refusal_retry(0.1, backlog, small=True) == pytest.approx(0.1 + backlog)
