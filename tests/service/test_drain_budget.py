"""Shutdown shares one budget: uvicorn's wait for open requests and the batchers' drain together take at most
drain delay + graceful timeout from the signal, never that plus another graceful timeout."""

from __future__ import annotations

import time

from service.api.deps import Lifecycle
from service.app import _drain_budget_s
from service.settings import Settings


def test_the_batchers_get_what_is_left_of_the_budget() -> None:
    settings = Settings(graceful_timeout_s=10, drain_delay_s=2)
    assert _drain_budget_s(settings, Lifecycle()) == 10  # no signal: the whole graceful timeout
    began = Lifecycle(draining=True, drain_began=time.monotonic() - 7)
    assert 4.9 < _drain_budget_s(settings, began) <= 5.0
    spent = Lifecycle(draining=True, drain_began=time.monotonic() - 30)
    assert _drain_budget_s(settings, spent) == 0.0
