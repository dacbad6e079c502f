"""Real `python -m service` processes on 127.0.0.1, driven over real HTTP.

The module-scoped `server` on the tiny artifact serves most tests; settings-specific cases start their own with
`start_server`. The process wrapper itself is `tests.server_process.ServerProcess`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO
from tests.server_process import ServerProcess

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "MAIN_SERVER_ENV", "REPO", "ServerProcess"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# Limits small enough to hit cheaply in tests; everything else stays at its default.
MAIN_SERVER_ENV = {
    "EMBED_MAX_BODY_BYTES": "100000",
    "EMBED_MAX_INPUTS_PER_REQUEST": "64",
    "EMBED_MAX_CHARS_PER_INPUT": "5000",
    "EMBED_ATTENTION_BUDGET": "100000",
    "EMBED_MAX_WAIT_MS": "5",
    "EMBED_INTRA_OP_THREADS": "1",
}


@pytest.fixture(scope="module")
def start_server(
    tiny_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for settings-specific servers; all are stopped when the module ends."""
    started: list[ServerProcess] = []

    def _start(artifact_dir: Path | None = None, **env: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("server-log") / "server.log"
        proc = ServerProcess(artifact_dir or tiny_artifact_dir, log, **env)
        started.append(proc)
        return proc.wait_ready()

    yield _start
    failures = []
    for proc in started:
        try:
            proc.stop_and_check()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**MAIN_SERVER_ENV)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's, driven by Playwright) per browser-test module; those modules skip
    themselves first where /usr/bin/chromium or playwright is missing."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
