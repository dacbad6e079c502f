"""Real `python -m service` processes on 127.0.0.1, driven over real HTTP.

`ServerProcess` starts one with EMBED_* env on a free port, waits for /ready, and on stop sends SIGTERM and
waits for a clean exit (so every test also checks that shutdown works). The module-scoped `server` on the tiny
artifact serves most tests; settings-specific cases start their own with `start_server`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0

# Limits small enough to hit cheaply in tests; everything else stays at its default.
MAIN_SERVER_ENV = {
    "EMBED_MAX_BODY_BYTES": "100000",
    "EMBED_MAX_INPUTS_PER_REQUEST": "64",
    "EMBED_MAX_CHARS_PER_INPUT": "5000",
    "EMBED_ATTENTION_BUDGET": "100000",
    "EMBED_MAX_WAIT_MS": "5",
    "EMBED_INTRA_OP_THREADS": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, artifact_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
        full_env.update(
            EMBED_ARTIFACT_DIR=str(artifact_dir), EMBED_HOST="127.0.0.1", EMBED_PORT=str(self.port),
            EMBED_GRACEFUL_TIMEOUT_S="10", PYTHONUNBUFFERED="1", **env,
        )
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self._log.closed:
            return self.proc.wait()
        self.terminate()
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


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
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**MAIN_SERVER_ENV)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        yield c
