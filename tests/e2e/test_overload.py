"""A short CI version of bench/overload.py (RELIABILITY #31, #42): 300 concurrent clients against one process.

Same client and checks as the recorded 1,000-client run (docs/reliability.md), with bounds loose enough for a
shared CI box: every reply a 200 or a 429/503 JSON error with Retry-After, none past its deadline, /health
answering throughout, back to normal within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import pytest

from bench.overload import evaluate, parser, run_burst
from tests.e2e.conftest import ServerProcess

QUEUE = 64


@pytest.mark.slow
def test_300_clients_get_200_or_fast_json_429(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(EMBED_MAX_QUEUE_SIZE=str(QUEUE), EMBED_QUEUE_TIMEOUT_S="10", EMBED_INTRA_OP_THREADS="1")
    args: argparse.Namespace = parser().parse_args([
        "--clients", "300", "--requests-per-client", "3", "--max-queue-size", str(QUEUE),
        "--connect-seconds", "1", "--reject-p99-ms", "1500", "--health-p99-ms", "1500", "--recovery-limit-s", "5",
    ])
    report = asyncio.run(run_burst("127.0.0.1", srv.port, args))
    checks = evaluate(report, args)
    assert all(checks.values()), (checks, report)
    assert report["statuses"].get("200", 0) >= QUEUE  # up to capacity was served
    assert report["statuses"].get("429", 0) > 0  # and the rest was shed, not queued without bound
    assert report["health"]["probes"] >= 1
    assert "Traceback" not in srv.log()
