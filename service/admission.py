"""The batcher's cost model: how long the work already queued will take, so admission can keep its promise.

Counting queue slots is not enough on a small machine: 2,048 admitted inputs of corpus text are ~10 s of
inference on 2 cores, so under a burst most of what the door let in waited past its queue deadline and was
answered 503 — the server admitted work it could not finish. `WorkEstimate` turns queued tokens into seconds
at the throughput the server is measuring now, and the batcher admits a request only if the work ahead of it
plus its own can start before its deadline (with headroom for a throughput drop), refusing it with 429 and a
Retry-After from the same estimate otherwise.

The unit of work is a row's padded width weighted by the attention term's share of a layer's arithmetic:
a token costs `1 + T / knee` units, `knee = 2·hidden + intermediate` (a layer's dense FLOPs per token are
proportional to that, its attention scores and weighted sum to T). So a 512-token input is not priced like
four 128-token ones. Each graph learns its own seconds per unit (an attention-map graph writes L × H × T²
numbers per row and costs more than its token count says); a graph not measured yet borrows the slowest
measured rate times `unmeasured_factor`, and before any batch at all the start-up warm-up's timing is the prior.

Rates come from batches as they finish, with the time a batch's work was waiting for a busy or starved
inference thread counted in (a burst's client and event loop share the cores: execute time alone would
promise throughput the server does not deliver). They are decayed sums weighted by work, so a full batch
counts more than a lone row and the estimate follows a throughput drop within a few batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

# Weight of the past in the decayed sums, per finished batch: about the last five batches decide the rate.
_DECAY = 0.8
# A batch slower than this many times the estimate is taken at that bound (see WorkEstimate.observe_batch).
_OUTLIER = 10.0


def attention_knee(config: dict[str, object]) -> float:
    """Tokens at which a layer's attention arithmetic equals its dense arithmetic (inf: no config known)."""
    try:
        hidden = float(config["hidden_size"])  # type: ignore[arg-type]
        intermediate = float(config.get("intermediate_size") or 4 * hidden)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return float("inf")
    return 2 * hidden + intermediate if hidden > 0 else float("inf")


def row_units_for(knee: float) -> Callable[[str, int], float]:
    """`row_units(graph, width)`: the work of one row padded to `width`, in token units (see the module doc)."""

    def row_units(graph: str, width: int) -> float:
        return width * (1.0 + width / knee)

    return row_units


@dataclass
class _Rate:
    """A decayed ratio of two sums (padded per real unit, units per item, units per request)."""

    seconds: float = 0.0
    units: float = 0.0

    def add(self, seconds: float, units: float) -> None:
        self.seconds = self.seconds * _DECAY + seconds
        self.units = self.units * _DECAY + units


@dataclass
class _Fit:
    """seconds ≈ fixed + per_unit × units over the recent batches (decayed least squares).

    A lone row's batch is mostly fixed cost (~0.6 ms of session overhead on CPU), a full one mostly per-unit
    cost; a plain seconds/units ratio learnt from a calm server's lone rows would price a burst's full batches
    several times too high. With too little spread in batch sizes to tell the two apart, the ratio is used.
    """

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, units: float, seconds: float) -> None:
        d = _DECAY
        self.n, self.sx, self.sy = self.n * d + 1, self.sx * d + units, self.sy * d + seconds
        self.sxx, self.sxy = self.sxx * d + units * units, self.sxy * d + units * seconds

    def line(self) -> tuple[float, float] | None:
        """(fixed seconds per batch, seconds per unit), or None before any batch."""
        if self.n <= 0 or self.sx <= 0:
            return None
        mean_x, mean_y = self.sx / self.n, self.sy / self.n
        var_x = self.sxx / self.n - mean_x * mean_x
        if var_x > 0.01 * mean_x * mean_x:
            slope = (self.sxy / self.n - mean_x * mean_y) / var_x
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:
                return fixed, slope
        return 0.0, self.sy / self.sx


@dataclass
class WorkEstimate:
    """Seconds per unit of work per graph, learned from finished batches; see the module docstring."""

    row_units: Callable[[str, int], float] = field(default=lambda graph, width: float(width))
    prior_s_per_unit: float | None = None  # from the start-up warm-up; None: no estimate until a batch finishes
    unmeasured_factor: float = 2.0  # a graph with no batch yet is priced this much above the slowest measured
    batch_units: float = float("inf")  # a full batch's units: queued work runs in this many batches at least
    _rates: dict[str, _Fit] = field(default_factory=dict, init=False, repr=False)
    # Padded units per real unit (the `seconds` slot holds the padded sum), starting at "no padding".
    _padding: _Rate = field(default_factory=lambda: _Rate(1.0, 1.0), init=False, repr=False)
    # Units per submitted item (the `seconds` slot holds the units, `units` the items): the price of inputs
    # admitted but not tokenized yet.
    _item_units: _Rate = field(default_factory=_Rate, init=False, repr=False)
    _request_units: _Rate = field(default_factory=_Rate, init=False, repr=False)  # likewise, per request

    def units(self, graph: str, length: int) -> float:
        return self.row_units(graph, length)

    def _line(self, graph: str) -> tuple[float, float] | None:
        """(fixed seconds per batch, seconds per unit) for `graph`: its own fit, else the slowest measured
        graph's times `unmeasured_factor`, else the warm-up prior; None while nothing at all is known."""
        fit = self._rates.get(graph)
        line = fit.line() if fit is not None else None
        if line is not None:
            return line
        measured = [line for f in self._rates.values() if (line := f.line()) is not None]
        if measured:
            fixed, slope = max(measured, key=lambda fs: fs[1])
            return fixed * self.unmeasured_factor, slope * self.unmeasured_factor
        return None if self.prior_s_per_unit is None else (0.0, self.prior_s_per_unit)

    def seconds_per_unit(self, graph: str) -> float | None:
        """The marginal seconds per unit for `graph` (None while nothing at all is known)."""
        line = self._line(graph)
        return None if line is None else line[1]

    def seconds(self, graph: str, real_units: float) -> float | None:
        """Estimated inference seconds for `real_units` of queued work on `graph`: padding included, and the
        fixed cost of the batches it needs (at least one, however little the work)."""
        line = self._line(graph)
        if line is None:
            return None
        fixed, slope = line
        padded = real_units * self.padding_ratio
        batches = max(1.0, math.ceil(padded / self.batch_units)) if padded > 0 else 0.0
        return padded * slope + fixed * batches

    @property
    def padding_ratio(self) -> float:
        return self._padding.seconds / self._padding.units

    def item_units(self) -> float | None:
        """Mean units of one submitted item (None before any): the price of inputs admitted but not tokenized."""
        return self._item_units.seconds / self._item_units.units if self._item_units.units > 0 else None

    def observe_batch(self, graph: str, padded_units: float, real_units: float, seconds: float) -> None:
        """A finished batch: `seconds` of (busy) inference time for `padded_units` of work.

        A batch over `_OUTLIER` times what the estimate expected counts as that bound: the first batch of a lazily
        built graph carries the session's build (~0.3 s for a batch of microseconds), and taken whole it would
        price that graph's work hundreds of times too high until it decayed, refusing requests on an idle server.
        A real slowdown still shows: each batch moves the estimate up to that bound."""
        if padded_units <= 0 or seconds <= 0:
            return
        line = self._line(graph)
        if line is not None:
            expected = line[0] + line[1] * padded_units
            seconds = min(seconds, _OUTLIER * expected) if expected > 0 else seconds
        self._rates.setdefault(graph, _Fit()).add(padded_units, seconds)
        if real_units > 0:
            self._padding.add(padded_units, real_units)

    def request_units(self) -> float | None:
        """Mean units of one submitted request (None before any): the price of a request the door lets in."""
        return self._request_units.seconds / self._request_units.units if self._request_units.units > 0 else None

    def observe_request(self, n_items: int, units: float) -> None:
        """A request submitted `n_items` items worth `units` in all."""
        if n_items > 0:
            self._item_units.add(units, n_items)
            self._request_units.add(units, 1)

    def typical_seconds(self, real_units: float) -> float | None:
        """Like `seconds`, for work whose graph is not known yet: priced at the graph that did most work."""
        measured = [(fit.sx, g) for g, fit in self._rates.items() if fit.line() is not None]
        graph = max(measured)[1] if measured else ""
        return self.seconds(graph, real_units)


@dataclass
class RefusalPressure:
    """Requests refused per request admitted, over the last few seconds: how many clients a Retry-After must
    spread out. If every refused client of a burst comes back within the backlog's length, they arrive many
    times faster than the server admits anyone, and the refusals themselves take the cores (1,000 one-sentence
    clients: ~550 refusals/s for ~55 admissions/s); spreading their retries over `backlog × refused/admitted`
    brings the returning clients down to about what the server can take."""

    half_life_s: float = 2.0
    _refused: float = field(default=0.0, init=False)
    _admitted: float = field(default=0.0, init=False)
    _at: float = field(default=0.0, init=False)

    def _decay(self, now: float) -> None:
        factor = 0.5 ** (max(0.0, now - self._at) / self.half_life_s)
        self._refused *= factor
        self._admitted *= factor
        self._at = now

    def refused(self, now: float) -> None:
        self._decay(now)
        self._refused += 1

    def admitted(self, now: float) -> None:
        self._decay(now)
        self._admitted += 1

    def ratio(self, now: float) -> float:
        """Refused per admitted (at least 1: with nothing refused a Retry-After spreads over the backlog)."""
        self._decay(now)
        return max(1.0, self._refused / max(self._admitted, 1.0))

