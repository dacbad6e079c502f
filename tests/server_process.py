"""A real `python -m service` process on a free 127.0.0.1 port, shared by the end-to-end and deployment tests.

`ServerProcess` starts one with EMBED_* env (the caller's own EMBED_* variables are not inherited), waits for
/ready, and on stop sends SIGTERM and waits for a clean exit, so every test also checks that shutdown works.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO

STARTUP_TIMEOUT_S = 60.0


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
        self.was_ready = False
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
                    self.was_ready = True
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

    def stop_and_check(self, timeout_s: float = 20.0) -> None:
        """Stop, and fail unless a server that became ready exited 0: a clean drain is part of every test."""
        code = self.stop(timeout_s)
        if self.was_ready and code != 0:
            raise AssertionError(f"server exited with {code}, not 0, on SIGTERM:\n{self.log()[-3000:]}")
