"""Dynamic batching: group inputs from concurrent requests into padded batches, run them off the event loop.

Why it looks the way it does:

* Admission before work. `try_admit` reserves queue slots in O(1) *before* the route tokenizes anything, so
  an overloaded server sheds load with a cheap 429 instead of tokenizing text it will never compute (TEI's
  `try_acquire_permit`). Slots are released one by one as items settle (result, error, timeout, cancel).
* Admission keeps its promise. With `deadline_share` set, slots are not the only limit: the cost model
  (service/admission.py) prices the queued work in seconds at the measured throughput, and a request whose
  work cannot start before its queue deadline (with headroom) is refused 429 up front, priced at the mean
  item before tokenizing and exactly at `submit`, instead of being admitted and answered 503 ten seconds later.
* Length-aware, fair batches. The oldest waiting item anchors every batch (no starvation); the batch then
  grows with the same-graph pending items whose lengths add the least padding, chosen among the oldest
  `_POOL_BATCHES` batches' worth of work (so later requests cannot overtake an early one without bound),
  within `max_batch_size` rows and `max_batch_tokens` padded tokens (rows x longest row). An item longer
  than the budget runs alone. Small requests (`small_request_tokens`) may run in a batch of their own before
  the next batch holding big work, at most every other turn: a one-sentence request is not held behind a
  burst's seconds of 16-sentence requests, and a stream of small ones cannot starve the big.
* A short wait window. A batch forms once its anchor has waited `max_wait_ms` or a full batch is pending, so
  a lone request is delayed by at most the window and a burst lands in one batch. With `adaptive_window` the
  window is skipped while it is not paying: the recent batches held about one row each (so nothing joined
  them), the inference thread is free, and no admitted request is still tokenizing. A single client then
  does not wait 2 ms per call for company that never comes; the moment load gives batches of several rows
  (or another request is on its way in), the window is back.
* Two threads, one lookahead. `runner.prepare` (padding) runs in a worker thread while the previous batch's
  `runner.execute` runs on the single inference thread, so under load the model never waits on padding and
  the event loop only does bookkeeping. A batch that is not full is formed only once the inference thread is
  free, so items arriving during a forward pass can still join it instead of trailing in a tiny batch.
* Every waiting item gets an answer. Queue deadlines are timers, not checks made when a batch forms, so items
  stuck behind a hung forward pass still get `QueueTimeoutError` on time. A failed batch is re-run row by row
  so only the poison input gets `InferenceError`. If the loop itself dies, everything queued is answered with
  `UnavailableError` and `healthy` turns False: a worker that logs and dies must not leave requests hanging.

`submit` never raises for per-item problems: it returns one `ItemOutcome` per item, in input order, whose
`error` is None (result present), `QueueTimeoutError`, `InferenceError` or `UnavailableError`; the route
decides the request's status from them. Call every method from the event loop thread that called `start`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from service.admission import RefusalPressure, WorkEstimate
from service.errors import InferenceError, QueueFullError, QueueTimeoutError, ServiceError, UnavailableError

logger = logging.getLogger(__name__)

# The adaptive window: skip it while the smoothed rows per batch stay under _LONE_ROWS. A smoothing of 0.2
# forgets a burst's batches within ~10 batches, and one batch of n rows lifts the mean by 0.2·(n - 1), so two
# requests arriving together already bring the window back.
_LONE_ROWS = 1.5
_ROWS_SMOOTHING = 0.2
# A batch chooses its rows among the oldest pending items worth this many full batches of tokens.
_POOL_BATCHES = 4
# A small request is admitted while the small lane's wait (the running batch included) is under this many
# full batches' time.
_SMALL_LANE_BATCHES = 1.0
_MIN_RETRY_S = 0.05  # a refused client is never told to come back sooner
# The Retry-After spread is re-tuned this often: grown by √(refused per admitted) while that exceeds
# _PRESSURE_HIGH, shrunk by _SPREAD_DECAY otherwise, never under the backlog nor over a minute.
_SPREAD_TUNE_S = 0.5
_PRESSURE_HIGH = 1.5
_SPREAD_DECAY = 0.8

PreparedT = TypeVar("PreparedT")  # a runner's padded batch: made by its `prepare`, consumed by its `execute`
ResultT = TypeVar("ResultT")  # a runner's per-row result (`service.runner.RowResult`)


class BatchRunner(Protocol[PreparedT, ResultT]):
    """The synchronous model runner (onnxruntime in `service/runner.py`; a fake in tests).

    The batcher never looks inside `PreparedT`: it only hands what `prepare` returned to `execute`, and each
    `ResultT` to the item it belongs to.
    """

    def prepare(self, graph: str, rows: Sequence[np.ndarray]) -> PreparedT:
        """Pad rows (1-D int64 token ids, special tokens included) into feeds. Runs in a worker thread."""
        ...

    def execute(self, prepared: PreparedT) -> list[ResultT]:
        """Run the forward pass; one result per row, in row order. Runs on the single inference thread."""
        ...


class BatchObserver(Protocol):
    """Metrics hook (prometheus in the service). Called on the event loop thread; must be cheap.

    `on_batch` fires once per batch that reached the inference thread, with its whole compute time (row-by-row
    retries after a failure included); `on_failure` counts the items of it answered `InferenceError`. An
    observer that raises is logged and otherwise ignored.
    """

    def on_batch(self, graph: str, rows: int, padded_tokens: int, real_tokens: int, execute_s: float) -> None: ...
    def on_queue_depth(self, depth: int) -> None: ...
    def on_cancelled(self, n_items: int) -> None: ...
    def on_timed_out(self, n_items: int) -> None: ...
    def on_failure(self, n_items: int) -> None: ...


@dataclass(frozen=True)
class BatchItem:
    token_ids: np.ndarray  # 1-D int64
    graph: str = "embed"  # batches never mix graphs
    prompt_length: int = 0  # prompt tokens at the start, fed to models that pool without them
    type_ids: np.ndarray | None = None  # segment ids of a text pair (rerank, pair classification); None: all 0
    query_index: int = 0  # the explain graph's query token (the graph keeps its per-head outputs)


class TokenRow(np.ndarray):
    """A row as the runner receives it: 1-D int64 token ids that also carry `prompt_length`, the prompt tokens at
    their start (fed to models that pool without the prompt), and `type_ids`, a text pair's segment ids. An
    ndarray subclass, so a runner that wants only the ids treats it as the plain array it is."""

    prompt_length: int = 0
    type_ids: np.ndarray | None = None
    query_index: int = 0

    @classmethod
    def of(cls, token_ids: np.ndarray, prompt_length: int = 0, type_ids: np.ndarray | None = None,
           query_index: int = 0) -> TokenRow:
        row = np.ascontiguousarray(token_ids, dtype=np.int64).view(cls)
        row.prompt_length = prompt_length
        row.type_ids = type_ids
        row.query_index = query_index
        return row


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 64
    max_batch_tokens: int = 2048  # rows × longest row, padding counted
    # Grow a batch only while the cheapest next row adds at most this many padded tokens. On CPU a forward pass
    # costs ~0.6 ms fixed plus a near-constant time per padded token (measured: ~8 tokens' worth), so a row that
    # would add more padding than that is cheaper in another batch. GPUs want a much larger value.
    padding_slack_tokens: int = 16
    max_wait_ms: float = 2.0
    # Skip the window while recent batches held ~1 row (see the module docstring). Off here so that the window's
    # own semantics stay what a bare BatcherConfig says; the server turns it on (EMBED_BATCH_WINDOW_ADAPTIVE).
    adaptive_window: bool = False
    max_queue_size: int = 2048  # admitted inputs not yet settled
    queue_timeout_s: float = 10.0
    # Deadline-aware admission (service/admission.py): admit a request only if the work ahead of it plus its own
    # can start within this share of queue_timeout_s at the throughput measured now. None counts queue slots
    # only (a bare BatcherConfig's default; the server sets it from EMBED_ADMISSION_DEADLINE_SHARE).
    deadline_share: float | None = None
    # The work of one row padded to a width, in the cost model's units, and the seconds per unit before any
    # batch has finished (the start-up warm-up's timing); see service/admission.py.
    row_units: Callable[[str, int], float] = field(default=lambda graph, width: float(width), repr=False,
                                                   compare=False)
    prior_s_per_unit: float | None = None
    # A request of one input, or of at most this many tokens in all, is small: when small requests wait, they
    # run in a batch of their own before the next queued batch (once between two batches), so a burst of big
    # requests does not hold a one-sentence request behind seconds of work. 0 (a bare BatcherConfig's default):
    # no small lane; the server sets EMBED_SMALL_REQUEST_TOKENS.
    small_request_tokens: int = 0
    watchdog_timeout_s: float = 30.0
    # The width the runner really pads a batch to, given its longest row (OnnxRunner.padded_width rounds up to
    # a multiple of 8): the token budget is checked against it, so a 2,048-token budget never runs 2,240.
    padded_width: Callable[[int], int] = field(default=lambda longest: longest, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_tokens < 1 or self.max_queue_size < 1:
            raise ValueError("max_batch_size, max_batch_tokens and max_queue_size must be >= 1")
        if self.padding_slack_tokens < 0:
            raise ValueError("padding_slack_tokens must be >= 0")
        if self.max_wait_ms < 0 or self.queue_timeout_s <= 0 or self.watchdog_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0; queue_timeout_s and watchdog_timeout_s must be > 0")
        if self.deadline_share is not None and not 0 < self.deadline_share <= 1:
            raise ValueError("deadline_share must be in (0, 1]")


@dataclass(frozen=True)
class ItemOutcome(Generic[ResultT]):
    result: ResultT | None  # the runner's row result; None when error is set
    error: ServiceError | None  # QueueTimeoutError | InferenceError | UnavailableError
    queue_ms: float  # enqueue -> start of its batch's compute (or -> when it was answered without compute)
    inference_ms: float  # its batch's compute time (0 when never computed)
    batch_size: int  # rows of the batch it ran in (0 when never computed)
    batch_tokens: int  # padded tokens of that batch

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BatcherHealth:
    ok: bool
    reason: str | None  # why not ok; None when ok
    accepting: bool  # try_admit would not raise UnavailableError
    queue_depth: int
    in_flight_batches: int
    seconds_since_progress: float


@dataclass(eq=False)
class Admission:
    """A reservation of `n_items` queue slots from `Batcher.try_admit`.

    `submit` consumes it (unused slots are freed there). If the request fails before submitting (bad input,
    tokenizer error), call `release()`, or use it as a context manager: ``with batcher.try_admit(n) as a:``.
    """

    n_items: int
    _batcher: Batcher[Any, Any] = field(repr=False)  # any batcher: the admission only counts its slots
    _held: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._held = self.n_items

    @property
    def held(self) -> int:
        return self._held

    def _take(self, n: int) -> None:
        if n > self._held:
            raise ValueError(f"submitting {n} items on an admission holding {self._held} slots")
        self._held -= n

    def release(self) -> None:
        """Give back the slots not (yet) handed to `submit`; idempotent."""
        held, self._held = self._held, 0
        if held:
            self._batcher._release(held)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _State(enum.Enum):
    PENDING = "pending"  # in the queue
    BATCHED = "batched"  # taken into a batch (being prepared / waiting for the inference thread)
    STARTED = "started"  # its batch is computing: too late to drop it
    DONE = "done"  # answered or dropped; its slot is free


@dataclass(eq=False)
class _Request(Generic[ResultT]):
    outcomes: list[ItemOutcome[ResultT] | None]
    remaining: int
    done: asyncio.Future[None]
    items: list[_Item[ResultT]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    small: bool = False  # may run in the small lane (BatcherConfig.small_request_tokens)


@dataclass(eq=False)
class _Item(Generic[ResultT]):
    seq: int  # global arrival order; the oldest pending item anchors the next batch
    request: _Request[ResultT]
    index: int
    token_ids: np.ndarray
    graph: str
    enqueued_at: float
    units: float = 0.0  # its work in the cost model's units (unpadded)
    state: _State = _State.PENDING

    @property
    def length(self) -> int:
        return len(self.token_ids)


@dataclass(eq=False)
class _Batch(Generic[ResultT]):
    graph: str
    items: list[_Item[ResultT]]
    formed_at: float = field(default_factory=time.monotonic)


@dataclass
class _Computed(Generic[ResultT]):
    results: list[ResultT | None]  # None where failed
    failed: list[bool]
    execute_s: float


class _PrepareFailed(enum.Enum):
    PREPARE_FAILED = "prepare failed"


# sentinel: batch prepare raised; compute goes straight to row-by-row isolation
_PREPARE_FAILED = _PrepareFailed.PREPARE_FAILED


class Batcher(Generic[PreparedT, ResultT]):
    """Length-aware dynamic batcher over a synchronous `BatchRunner`. See the module docstring.

    Callers that do not care how the runner pads a batch spell it `Batcher[Any, RowResult]`.
    """

    def __init__(
        self,
        runner: BatchRunner[PreparedT, ResultT],
        config: BatcherConfig,
        observer: BatchObserver | None = None,
    ) -> None:
        self._runner = runner
        self._cfg = config
        self._observer = observer
        self._pending: dict[int, _Item[ResultT]] = {}  # insertion order == arrival order
        self._pending_tokens = 0
        self._live: set[_Request[ResultT]] = set()  # submitted and not fully settled
        self._seq = 0
        self._reserved = 0  # queue_depth: admitted slots not yet settled
        self._unsettled = 0  # submitted items not yet settled (admissions being tokenized excluded)
        self._in_flight = 0  # batches formed and not finished
        self._executing = 0  # batches on the inference thread
        self._last_progress = time.monotonic()
        self._items_per_s = 0.0  # smoothed throughput, for Retry-After
        self._pressure = RefusalPressure()
        self._spread_s = 0.0  # how far refused clients' retries are spread (see _refusal_retry)
        self._spread_at = 0.0
        self._estimate = WorkEstimate(config.row_units, config.prior_s_per_unit,
                                      batch_units=float(config.max_batch_tokens))
        self._queued_units: dict[str, float] = {}  # per graph: items submitted and not yet computing
        self._small_units: dict[str, float] = {}  # the part of those that small requests queued
        self._executing_until = 0.0  # monotonic time the batch on the inference thread should finish
        self._last_batch_end = 0.0
        self._small_turn_taken = False  # a small-lane batch ran since the last regular one
        self._recent_rows = 1.0  # smoothed rows per batch: the adaptive window's evidence that waiting pays
        self._failed_batches_in_row = 0  # batches whose every row failed, since the last row that worked
        self._started = self._stopping = self._closed = False
        self._dead_reason: str | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._prepare_pool: ThreadPoolExecutor | None = None
        self._infer_pool: ThreadPoolExecutor | None = None

    # ---- lifecycle

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("Batcher.start() called twice")
        self._started = True
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._slot = asyncio.Semaphore(1)  # one batch on the inference thread at a time
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="batch-prepare")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="batch-infer")
        self._last_progress = time.monotonic()
        self._loop_task = asyncio.create_task(self._run(), name="batcher-loop")
        self._loop_task.add_done_callback(self._on_loop_done)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop admitting, let everything already admitted finish, then end the loop and threads.

        Admissions not yet submitted are waited for too (their request is still tokenizing). After `timeout_s`
        whatever is left is answered `UnavailableError` and any wedged batch is abandoned.
        """
        self._stopping = True
        if self._loop_task is None or self._closed:
            self._closed = True
            return
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            timed_out = True
            logger.error("batcher drain timed out after %ss; failing %d queued items", timeout_s, self._unsettled)
            self._fail_unstarted(UnavailableError("the server is shutting down"))
        self._closed = True
        self._wakeup.set()
        if timed_out:
            self._loop_task.cancel()
        # Every item is settled now, so a batch task still running can only be wedged on the inference thread.
        await self._cancel_batch_tasks()
        await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._cancel_batch_tasks()  # one the loop may have started meanwhile (its items are all gone)
        for pool in (self._prepare_pool, self._infer_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _cancel_batch_tasks(self) -> None:
        while tasks := list(self._batch_tasks):
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- admission and submission

    def check_capacity(self, requests_at_door: int = 0, *, small: bool = False) -> None:
        """Raise what `try_admit(1)` would, without reserving: lets a route refuse before reading the body.

        `requests_at_door` counts requests already let in but not yet answered. Each will reserve at least one
        slot once its body is parsed, so when they alone fill the queue a newcomer would be refused anyway:
        refusing it now, before it costs a body read and a JSON parse, keeps rejections fast in a burst.
        `small`: the newcomer may be a small request (its body is short), priced at the small lane's backlog.
        """
        if not self.accepting:
            raise UnavailableError(self._unavailable_reason() or "the batcher is not accepting work")
        if max(self._reserved, requests_at_door) >= self._cfg.max_queue_size:
            raise QueueFullError("the server is at capacity; retry later", retry_after_s=self._retry_after_s())
        small = small and self._cfg.small_request_tokens > 0
        budget = self._deadline_budget_s(small=small)
        if budget is None:
            return
        backlog = self.backlog_s(small=small)
        if backlog is None:
            return
        per_request = self._estimate.request_units()
        newcomer = 0.0  # a typical request's own work: one the door lets in must still fit behind the backlog
        if per_request is not None and not small:
            backlog = max(backlog, self._estimate.typical_seconds(requests_at_door * per_request) or 0.0)
            newcomer = self._estimate.typical_seconds(per_request) or 0.0
        if backlog > self._one_batch_s() and backlog + newcomer > budget:
            raise QueueFullError("the server is at capacity; retry later",
                                 retry_after_s=self._refusal_retry(backlog + newcomer - budget, backlog, small))

    @property
    def max_queue_size(self) -> int:
        return self._cfg.max_queue_size

    def try_admit(self, n_items: int, *, enforce_deadline: bool = True) -> Admission:
        """Reserve `n_items` queue slots, or raise at once: QueueFullError (429) or UnavailableError (503).

        With deadline-aware admission on, inputs not tokenized yet are priced at the mean submitted item's
        cost (`enforce_deadline=False` skips that, for the health probe)."""
        if n_items < 1:
            raise ValueError("n_items must be >= 1")
        if not self.accepting:
            raise UnavailableError(self._unavailable_reason() or "the batcher is not accepting work")
        if self._reserved + n_items > self._cfg.max_queue_size:
            raise QueueFullError("the server is at capacity; retry later", retry_after_s=self._retry_after_s())
        per_item = self._estimate.item_units()
        if per_item is not None and enforce_deadline:
            small = n_items == 1 and self._cfg.small_request_tokens > 0
            self._check_deadline(self._estimate.typical_seconds(n_items * per_item), self.backlog_s(small=small),
                                 small=small)
        self._reserved += n_items
        self._idle.clear()
        self._notify("on_queue_depth", self._reserved)
        return Admission(n_items, self)

    async def submit(self, admission: Admission, items: Sequence[BatchItem], *,
                     enforce_deadline: bool = True) -> list[ItemOutcome[ResultT]]:
        """Queue `items` under `admission` and wait for all of them; outcomes come back in input order.

        With deadline-aware admission on, the tokenized items are priced exactly here: if the work ahead plus
        theirs cannot start before the queue deadline, nothing is queued and QueueFullError (429) is raised
        (`enforce_deadline=False` skips that, for the 1-token health probe). If the awaiting task is cancelled
        (client went away), items not yet computing are dropped and their slots freed; items already in a
        running batch finish and their results are discarded.
        """
        if admission._batcher is not self:
            raise ValueError("admission belongs to another batcher")
        try:
            rows = [TokenRow.of(item.token_ids, item.prompt_length, item.type_ids, item.query_index) for item in items]
            if any(row.ndim != 1 or row.size == 0 for row in rows):
                raise ValueError("token_ids must be non-empty 1-D arrays")
            units = [self._estimate.units(item.graph, len(row)) for item, row in zip(items, rows, strict=True)]
            small_tokens = self._cfg.small_request_tokens
            small = small_tokens > 0 and (len(rows) == 1 or sum(len(r) for r in rows) <= small_tokens)
            if enforce_deadline and items:
                own = sum(self._estimate.seconds(item.graph, u) or 0.0 for item, u in zip(items, units, strict=True))
                self._check_deadline(own, self.backlog_s(exclude_reserved=admission.held, small=small), small=small)
            admission._take(len(items))
        except BaseException:
            admission.release()
            raise
        admission.release()  # slots reserved for inputs that were not submitted after all
        if not items:
            return []
        self._estimate.observe_request(len(items), sum(units))
        if enforce_deadline and small:
            self._pressure.admitted(time.monotonic())  # the small clients' refused-per-admitted pressure
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request: _Request[ResultT] = _Request(outcomes=[None] * len(items), remaining=len(items),
                                              done=loop.create_future(), small=small)
        if self._unsettled == 0 and self._executing == 0:
            self._last_progress = now  # the watchdog counts stalls from when work appears, not idle time
        self._unsettled += len(items)
        self._live.add(request)
        for index, (item, row, cost) in enumerate(zip(items, rows, units, strict=True)):
            self._seq += 1
            entry = _Item(self._seq, request, index, row, item.graph, now, cost)
            request.items.append(entry)
        if self._dead_reason is not None or self._closed:
            self._answer_all(request, UnavailableError(self._unavailable_reason() or "the batcher is stopped"))
        else:
            for entry in request.items:
                self._pending[entry.seq] = entry
                self._pending_tokens += entry.length
                self._queued_units[entry.graph] = self._queued_units.get(entry.graph, 0.0) + entry.units
                if small:
                    self._small_units[entry.graph] = self._small_units.get(entry.graph, 0.0) + entry.units
            request.timer = loop.call_later(self._cfg.queue_timeout_s, self._expire, request)
            self._wakeup.set()
        try:
            await request.done
        except asyncio.CancelledError:
            self._abandon(request)
            raise
        outcomes = [outcome for outcome in request.outcomes if outcome is not None]
        # Every item is settled. Items point back at their request, so without this the request, its items and
        # their results (attention maps, explain outputs: tens of MB) would wait for the cyclic garbage collector.
        request.items.clear()
        request.outcomes.clear()
        return outcomes

    # ---- the cost model's view of the queue

    def backlog_s(self, *, exclude_reserved: int = 0, small: bool = False) -> float | None:
        """Estimated seconds until work admitted now would start computing: the queued items, what the running
        batch has left, and the inputs admitted but still being tokenized (less `exclude_reserved` of those,
        the caller's own). None while the cost model knows nothing yet.

        `small`: for a small request, which waits only for the running batch, the small lane's own queue, and
        one regular batch per small-lane batch ahead of it (the lane takes every other turn)."""
        # What the running batch has left, at most a full batch: its estimate can be stale or inflated, and a
        # batch that runs long is the watchdog's business, not a reason to refuse everyone meanwhile.
        total = min(max(0.0, self._executing_until - time.monotonic()), self._one_batch_s()) \
            if self._executing else 0.0
        if small:
            small_units = sum(self._small_units.values())
            regular_units = sum(self._queued_units.values()) - small_units
            lane = self._estimate.typical_seconds(small_units)
            one_batch = self._estimate.typical_seconds(min(regular_units, float(self._cfg.max_batch_tokens)))
            if lane is None or one_batch is None:
                return None
            turns = math.floor(small_units / self._cfg.max_batch_tokens)
            return total + lane + one_batch * turns
        for graph, units in self._queued_units.items():
            if units > 0:
                seconds = self._estimate.seconds(graph, units)
                if seconds is None:
                    return None
                total += seconds
        tokenizing = self._reserved - self._unsettled - exclude_reserved
        per_item = self._estimate.item_units()
        if tokenizing > 0 and per_item is not None:
            total += self._estimate.typical_seconds(tokenizing * per_item) or 0.0
        return total

    def over_budget(self) -> bool:
        """Whether the queued work alone already exceeds the deadline budget (every newcomer would be refused)."""
        budget = self._deadline_budget_s()
        backlog = self.backlog_s() if budget is not None else None
        return budget is not None and backlog is not None and backlog > budget

    def _refusal_retry(self, excess_s: float, backlog_s: float, small: bool) -> float:
        """Retry-After for a deadline refusal: when the backlog will have room, plus a random share of the
        backlog; for a small request, of a spread that grows while many more small requests are refused than
        admitted (service/admission.RefusalPressure).

        Refused small clients are a pool told to return within the small lane's wait (~0.3 s here): 1,000
        one-sentence clients came back ~550 times a second for ~55 admissions, and refusing them took the cores
        from the model. Each tuning step multiplies the spread by √(refused/admitted), so the pool's return rate
        falls until it is near what the server admits; once refusals ease the spread shrinks again. A big
        request's backlog is seconds long already, so its own spread is left as it is.
        """
        if not small:
            return _spread_retry(excess_s, backlog_s)
        now = time.monotonic()
        self._pressure.refused(now)
        if now - self._spread_at >= _SPREAD_TUNE_S:
            ratio = self._pressure.ratio(now)
            spread = self._spread_s * (math.sqrt(ratio) if ratio > _PRESSURE_HIGH else _SPREAD_DECAY)
            self._spread_s = min(60.0, max(backlog_s, spread))
            self._spread_at = now
        return _spread_retry(excess_s, max(backlog_s, self._spread_s))

    def _one_batch_s(self) -> float:
        """A full batch's estimated seconds (0 while nothing is known)."""
        return self._estimate.typical_seconds(float(self._cfg.max_batch_tokens)) or 0.0

    def _deadline_budget_s(self, *, small: bool = False) -> float | None:
        """How long admitted work may wait: `deadline_share` of the queue deadline; for a small request at
        most `_SMALL_LANE_BATCHES` full batches, so that a burst made of small requests (all in the lane) still
        answers each within about a batch instead of queueing seconds of them (1,000 one-sentence clients:
        1.5 batches missed "2 × calm + one batch" in every run; 1.0 met it once refused small clients were
        spread by the refusal pressure, see `_refusal_retry`)."""
        share = self._cfg.deadline_share
        if share is None:
            return None
        budget = share * self._cfg.queue_timeout_s
        if small:
            one_batch = self._estimate.typical_seconds(float(self._cfg.max_batch_tokens))
            if one_batch is not None:
                budget = min(budget, _SMALL_LANE_BATCHES * one_batch)
        return budget

    def _check_deadline(self, own_s: float | None, backlog_s: float | None, *, small: bool = False) -> None:
        """Refuse (QueueFullError, Retry-After from the same estimate) work that would wait past the budget.

        Work behind at most one batch is always admitted: a request bigger than the budget on a server that is
        idle, or running a lone small batch, still runs.
        """
        budget = self._deadline_budget_s(small=small)
        if budget is None or own_s is None or backlog_s is None or backlog_s <= self._one_batch_s():
            return
        if backlog_s + own_s > budget:
            raise QueueFullError("the server is at capacity; retry later",
                                 retry_after_s=self._refusal_retry(backlog_s + own_s - budget, backlog_s, small))

    # ---- introspection

    @property
    def queue_depth(self) -> int:
        return self._reserved

    @property
    def in_flight_batches(self) -> int:
        return self._in_flight

    @property
    def last_progress_monotonic(self) -> float:
        return self._last_progress

    @property
    def consecutive_failed_batches(self) -> int:
        """Batches in a row in which every row failed; any row that computes resets it (readiness trips on it)."""
        return self._failed_batches_in_row

    @property
    def accepting(self) -> bool:
        return self._started and not self._stopping and self._dead_reason is None

    @property
    def healthy(self) -> bool:
        return self.health().ok

    def health(self) -> BatcherHealth:
        """Liveness: the loop runs, is not stopped, and batches finish while work is waiting (watchdog)."""
        since = time.monotonic() - self._last_progress
        reason = self._unavailable_reason(include_stopping=False)
        busy = self._unsettled > 0 or self._executing > 0
        if reason is None and busy and since > self._cfg.watchdog_timeout_s:
            reason = f"no batch finished for {since:.1f}s while work is pending (inference stalled)"
        return BatcherHealth(reason is None, reason, self.accepting, self._reserved, self._in_flight, since)

    def _unavailable_reason(self, include_stopping: bool = True) -> str | None:
        if self._dead_reason is not None:
            return self._dead_reason
        if not self._started:
            return "the batcher is not started"
        if self._closed:
            return "the batcher is stopped"
        if self._stopping and include_stopping:
            return "the server is shutting down"
        return None

    # ---- the batching loop

    async def _run(self) -> None:
        """Form a batch, prepare it in a worker thread, then hand it to the inference thread when free.

        Preparing batch N+1 happens while batch N executes: the loop only waits for the inference slot after
        preparing. Runner errors are handled per batch; anything else ending this coroutine is a bug, and
        `_on_loop_done` answers every queued item and marks the batcher unhealthy.
        """
        loop = asyncio.get_running_loop()
        while (batch := await self._next_batch()) is not None:
            rows = [it.token_ids for it in batch.items]
            prepared: PreparedT | _PrepareFailed
            try:
                prepared = await loop.run_in_executor(self._prepare_pool, self._runner.prepare, batch.graph, rows)
            except Exception:
                logger.warning("preparing a batch of %d rows failed; isolating rows", len(rows), exc_info=True)
                prepared = _PREPARE_FAILED
            await self._slot.acquire()
            big_work = any(not it.request.small for it in batch.items)  # an all-small batch needs no overtaking
            if big_work and (small := self._small_lane_batch()) is not None:
                self._dispatch(small, None)  # padded on the inference thread: it is small
                await self._slot.acquire()
            self._small_turn_taken = False
            self._dispatch(batch, prepared)

    def _dispatch(self, batch: _Batch[ResultT], prepared: PreparedT | _PrepareFailed | None) -> None:
        """Start `batch` on the inference thread; the caller holds the slot, `_on_batch_done` frees it."""
        task = asyncio.create_task(self._run_batch(batch, prepared), name="batcher-batch")
        self._batch_tasks.add(task)
        task.add_done_callback(self._on_batch_done)

    def _small_lane_batch(self) -> _Batch[ResultT] | None:
        """A batch of waiting small requests' items to run before the batch already formed, at most one between
        two regular batches (so a stream of small requests cannot starve the big ones), or None."""
        if self._small_turn_taken:
            return None
        anchor = next((it for it in self._pending.values() if it.request.small), None)
        if anchor is None:
            return None
        self._small_turn_taken = True
        return self._form_batch(anchor, small_only=True)

    async def _next_batch(self) -> _Batch[ResultT] | None:
        """Wait until a batch is due: a full batch's worth is pending (form it now, to prepare it while the
        current batch runs), or the anchor has waited `max_wait_ms` and the inference thread is free."""
        loop = asyncio.get_running_loop()
        max_wait_s = self._cfg.max_wait_ms / 1000.0
        while True:
            self._wakeup.clear()
            if not self._pending:
                if self._closed:
                    return None
                await self._wakeup.wait()
                continue
            anchor = next(iter(self._pending.values()))
            wait_s = anchor.enqueued_at + max_wait_s - time.monotonic()
            full = len(self._pending) >= self._cfg.max_batch_size or self._pending_tokens >= self._cfg.max_batch_tokens
            if full or self._closed or ((wait_s <= 0 or self._window_useless()) and not self._slot.locked()):
                return self._form_batch(anchor)
            if wait_s <= 0:  # window over but the inference thread is busy: `_on_batch_done` wakes us
                await self._wakeup.wait()
                continue
            try:
                async with asyncio.timeout_at(loop.time() + wait_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def _window_useless(self) -> bool:
        """Whether waiting for company is pointless now: recent batches held ~one row and no admitted request is
        still being tokenized (`_reserved` counts those, `_unsettled` only what was submitted)."""
        return (self._cfg.adaptive_window and self._recent_rows < _LONE_ROWS
                and self._reserved == self._unsettled)

    def _form_batch(self, anchor: _Item[ResultT], *, small_only: bool = False) -> _Batch[ResultT]:
        """Grow a batch around the oldest item, each step adding the same-graph item that adds least padding.

        Candidates are sorted by length; from the anchor we extend left (a shorter row, padded up to the
        current longest) or right (a longer row, which pads every row already in). The token budget caps
        rows x longest, and growth stops when the cheapest step adds more than `padding_slack_tokens` of
        padding: that row then anchors or joins a batch of its own length instead. `small_only` takes only
        small requests' items (the small lane).
        """
        cfg = self._cfg
        width = cfg.padded_width  # the budget counts the columns the runner will really run
        cands = sorted(self._candidates(anchor, small_only), key=lambda it: (it.length, it.seq))
        lo = hi = cands.index(anchor)
        longest, chosen, right_open = anchor.length, [anchor], True
        while len(chosen) < cfg.max_batch_size:
            n = len(chosen)
            left = cands[lo - 1] if lo > 0 and (n + 1) * width(longest) <= cfg.max_batch_tokens else None
            right = None
            if right_open and hi + 1 < len(cands):
                right = cands[hi + 1]
                if (n + 1) * width(right.length) > cfg.max_batch_tokens:
                    right, right_open = None, False  # every later candidate is at least as long
            if left is None and right is None:
                break
            left_cost = longest - left.length if left is not None else math.inf
            right_cost = (right.length - longest) * n if right is not None else math.inf
            if min(left_cost, right_cost) > cfg.padding_slack_tokens:
                break
            if left is not None and left_cost <= right_cost:
                lo -= 1
                chosen.append(left)
            elif right is not None:
                hi += 1
                chosen.append(right)
                longest = right.length
        for it in chosen:
            del self._pending[it.seq]
            self._pending_tokens -= it.length
            it.state = _State.BATCHED
        self._in_flight += 1
        chosen.sort(key=lambda it: it.seq)
        self._recent_rows += _ROWS_SMOOTHING * (len(chosen) - self._recent_rows)
        return _Batch(anchor.graph, chosen)

    def _candidates(self, anchor: _Item[ResultT], small_only: bool) -> list[_Item[ResultT]]:
        """The pending items a batch around `anchor` may take: its graph's, oldest first, up to
        `_POOL_BATCHES` batches' worth of tokens. Choosing by length only within that window keeps the order
        nearly first-come first-served, so a request's last item starts within a few batches of when FIFO
        would start it and the admission estimate holds; from the whole queue, the items of later requests
        that fit a batch's length would keep overtaking an early request's odd-length ones."""
        pool_tokens = _POOL_BATCHES * self._cfg.max_batch_tokens
        out: list[_Item[ResultT]] = []
        tokens = 0
        for it in self._pending.values():
            if it.graph != anchor.graph or (small_only and not it.request.small):
                continue
            out.append(it)
            tokens += it.length
            if tokens >= pool_tokens and it.seq >= anchor.seq:
                break
        return out

    async def _run_batch(self, batch: _Batch[ResultT], prepared: PreparedT | _PrepareFailed | None) -> None:
        """Compute one batch on the inference thread and answer its items; `_on_batch_done` frees the slot."""
        live = [it for it in batch.items if it.state is _State.BATCHED]
        if not live:
            return  # every member timed out or was cancelled while waiting for the inference thread
        if len(live) < len(batch.items) and prepared is not _PREPARE_FAILED:
            prepared = None  # re-pad on the inference thread without the dropped rows
        started = time.monotonic()
        for it in live:
            self._unqueue(it)
            it.state = _State.STARTED
        rows = [it.token_ids for it in live]
        width = self._cfg.padded_width(max(len(row) for row in rows))
        padded_units = len(rows) * self._estimate.units(batch.graph, width)
        self._executing_until = started + (self._estimate.seconds(batch.graph, padded_units) or 0.0) \
            / self._estimate.padding_ratio
        # Busy time for the cost model: from the previous batch's end if this batch's work was already waiting
        # then (time lost to a starved loop or a slow prepare counts against throughput, not only the forward
        # pass), else from when it formed (the wait window of an idle server is not a throughput loss).
        waiting = min(it.enqueued_at for it in live) < self._last_batch_end
        busy_from = self._last_batch_end if waiting else batch.formed_at
        future = asyncio.get_running_loop().run_in_executor(
            self._infer_pool, self._compute, batch.graph, rows, prepared
        )
        self._executing += 1
        try:
            done, _ = await asyncio.wait({future}, timeout=self._cfg.watchdog_timeout_s)
            if not done:
                logger.error(
                    "a batch of %d rows has run for %ss; answering its items as unavailable",
                    len(rows),
                    self._cfg.watchdog_timeout_s,
                )
                error = UnavailableError("inference is stalled; retry later")
                for it in live:
                    self._settle(it, ItemOutcome(None, error, (started - it.enqueued_at) * 1000, 0.0, 0, 0))
            computed = await future  # keep the slot until the thread is really free
        except asyncio.CancelledError:  # stop() abandoning a wedged batch: still answer its items
            future.cancel()  # whatever the thread returns later is ignored, never "exception not retrieved"
            now = time.monotonic()
            error = UnavailableError("the server is shutting down")
            for it in live:
                self._settle(it, ItemOutcome(None, error, (now - it.enqueued_at) * 1000, 0.0, 0, 0))
            raise
        finally:
            self._executing -= 1
        self._last_progress = self._last_batch_end = time.monotonic()
        longest = width
        real_tokens = sum(len(row) for row in rows)
        self._estimate.observe_batch(batch.graph, padded_units, sum(it.units for it in live),
                                     self._last_batch_end - busy_from)
        self._record_batch(batch.graph, len(rows), len(rows) * longest, real_tokens, computed)
        for it, result, failed in zip(live, computed.results, computed.failed, strict=True):
            outcome = ItemOutcome(
                None if failed else result,
                InferenceError() if failed else None,
                (started - it.enqueued_at) * 1000,
                computed.execute_s * 1000,
                len(rows),
                len(rows) * longest,
            )
            self._settle(it, outcome)

    def _compute(
        self, graph: str, rows: list[np.ndarray], prepared: PreparedT | _PrepareFailed | None
    ) -> _Computed[ResultT]:
        """Inference thread: run the batch; if it fails, re-run rows one by one so only poison rows fail."""
        t0 = time.monotonic()
        if prepared is not _PREPARE_FAILED:
            try:
                if prepared is None:
                    prepared = self._runner.prepare(graph, rows)
                batch_results: list[ResultT | None] = list(self._runner.execute(prepared))
                if len(batch_results) != len(rows):
                    raise RuntimeError(f"runner returned {len(batch_results)} results for {len(rows)} rows")
                return _Computed(batch_results, [False] * len(rows), time.monotonic() - t0)
            except Exception:
                if len(rows) == 1:
                    logger.exception("inference failed for a single-row batch")
                    return _Computed([None], [True], time.monotonic() - t0)
                logger.warning("a batch of %d rows failed; re-running rows one by one", len(rows), exc_info=True)
        results: list[ResultT | None] = []
        failed: list[bool] = []
        for row in rows:
            try:
                out = list(self._runner.execute(self._runner.prepare(graph, [row])))
                if len(out) != 1:
                    raise RuntimeError(f"runner returned {len(out)} results for 1 row")
                results.append(out[0])
                failed.append(False)
            except Exception:
                logger.exception("inference failed for one row of %d tokens", len(row))
                results.append(None)
                failed.append(True)
        return _Computed(results, failed, time.monotonic() - t0)

    # ---- settling items

    def _settle(self, item: _Item[ResultT], outcome: ItemOutcome[ResultT] | None) -> None:
        """Answer one item (None: dropped, nobody listens) and free its slot; idempotent."""
        if item.state is _State.DONE:
            return
        if item.state is _State.PENDING and self._pending.pop(item.seq, None) is not None:
            self._pending_tokens -= item.length
        if item.state in (_State.PENDING, _State.BATCHED):
            self._unqueue(item)
        item.state = _State.DONE
        request = item.request
        request.outcomes[item.index] = outcome
        request.remaining -= 1
        self._unsettled -= 1
        self._release(1)
        if request.remaining == 0:
            self._live.discard(request)
            if request.timer is not None:
                request.timer.cancel()
            if not request.done.done():
                request.done.set_result(None)

    def _unqueue(self, item: _Item[ResultT]) -> None:
        """The item leaves the cost model's queue (it starts computing, or is answered without computing)."""
        for queued in (self._queued_units, self._small_units) if item.request.small else (self._queued_units,):
            left = queued.get(item.graph, 0.0) - item.units
            queued[item.graph] = left if left > 1e-9 else 0.0

    def _release(self, n: int) -> None:
        self._reserved -= n
        if self._reserved == 0:
            self._idle.set()
        self._notify("on_queue_depth", self._reserved)

    def _answer_all(self, request: _Request[ResultT], error: ServiceError, states: tuple[_State, ...] = ()) -> int:
        """Answer the request's items that are in `states` (all unsettled ones when empty) with `error`."""
        now = time.monotonic()
        targets = [it for it in request.items if it.state is not _State.DONE and (not states or it.state in states)]
        for it in targets:
            self._settle(it, ItemOutcome(None, error, (now - it.enqueued_at) * 1000, 0.0, 0, 0))
        return len(targets)

    def _expire(self, request: _Request[ResultT]) -> None:
        """Timer callback at the queue deadline: items not yet computing are answered, never computed."""
        request.timer = None
        error = QueueTimeoutError("the request waited too long in the queue", retry_after_s=self._retry_after_s())
        n = self._answer_all(request, error, (_State.PENDING, _State.BATCHED))
        if n:
            self._notify("on_timed_out", n)

    def _abandon(self, request: _Request[ResultT]) -> None:
        """The submitter was cancelled: drop its items that have not started; running ones finish unheard."""
        if request.timer is not None:
            request.timer.cancel()
            request.timer = None
        dropped = [it for it in request.items if it.state in (_State.PENDING, _State.BATCHED)]
        for it in dropped:
            self._settle(it, None)
        if dropped:
            self._notify("on_cancelled", len(dropped))

    def _fail_unstarted(self, error: ServiceError) -> None:
        for request in list(self._live):
            self._answer_all(request, error, (_State.PENDING, _State.BATCHED))

    # ---- failure plumbing

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if self._closed and exc is None:
            return
        self._dead_reason = self._dead_reason or "the batching loop stopped unexpectedly"
        logger.critical(
            "%s; failing %d queued items",
            self._dead_reason,
            self._unsettled,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )
        self._fail_unstarted(UnavailableError(self._dead_reason))

    def _on_batch_done(self, task: asyncio.Task[None]) -> None:
        # Done callbacks run even for a task cancelled before its first step, so the slot can never leak.
        self._batch_tasks.discard(task)
        self._in_flight -= 1
        self._slot.release()
        self._wakeup.set()  # a partial batch may be due now
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # a BaseException from the runner, or a bug: do not limp on
            self._dead_reason = "a batch failed unexpectedly"
            logger.critical(self._dead_reason, exc_info=(type(exc), exc, exc.__traceback__))
            if self._loop_task is not None:
                self._loop_task.cancel()
            self._fail_unstarted(UnavailableError(self._dead_reason))
            for request in list(self._live):  # the failed batch's own items
                self._answer_all(request, InferenceError(), (_State.STARTED,))

    def _record_batch(self, graph: str, rows: int, padded: int, real: int, computed: _Computed[ResultT]) -> None:
        if computed.execute_s > 0:
            rate = rows / computed.execute_s
            self._items_per_s = rate if self._items_per_s == 0 else 0.8 * self._items_per_s + 0.2 * rate
        self._notify("on_batch", graph, rows, padded, real, computed.execute_s)
        n_failed = sum(computed.failed)
        self._failed_batches_in_row = self._failed_batches_in_row + 1 if n_failed == rows else 0
        if n_failed:
            self._notify("on_failure", n_failed)

    def _retry_after_s(self) -> float:
        """Seconds until the queue has drained: the cost model's backlog, else admitted items / items per s."""
        backlog = self.backlog_s()
        if backlog is not None and backlog > 0:
            return _clamp_retry(backlog)
        if self._items_per_s <= 0:
            return 1
        return _clamp_retry(self._reserved / self._items_per_s)

    def _notify(self, hook: str, *args: Any) -> None:
        if self._observer is None:
            return
        try:
            getattr(self._observer, hook)(*args)
        except Exception:  # metrics must never break batching
            logger.exception("batch observer %s failed", hook)


def _spread_retry(excess_s: float, backlog_s: float) -> float:
    """Retry-After for a request refused by the deadline budget: when the backlog will have shrunk enough to
    take it (`excess_s`), plus a random share of the backlog. Every client of a burst refused in the same
    second would otherwise come back in the same second, and the server would spend the burst refusing
    synchronised waves instead of computing (measured: ~740 refusals/s from 800 clients told "1")."""
    return _clamp_retry(excess_s + random.random() * min(backlog_s, 60.0))  # noqa: S311 - jitter, not a secret


def _clamp_retry(seconds: float) -> float:
    """A Retry-After estimate in seconds, unrounded (the reply rounds the header up to whole seconds, and gives
    the milliseconds too), between `_MIN_RETRY_S` and a minute."""
    return max(_MIN_RETRY_S, min(60.0, seconds))
