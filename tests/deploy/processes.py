"""Start and stop real server processes for end-to-end tests: free loopback ports, readiness, no leftovers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.contract_names import REPO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen[bytes], *, timeout_s: float = 25.0) -> None:
    """SIGTERM, wait, then SIGKILL: never leave a process behind, whatever state the test ended in."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Server:
    """One `python -m service` process on 127.0.0.1."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(artifact_dir: Path, log_path: Path, **settings: str) -> Server:
    """`python -m service` with EMBED_* from the arguments; one onnxruntime thread (the machine is shared)."""
    port = free_port()
    env = {
        **os.environ,
        "EMBED_ARTIFACT_DIR": str(artifact_dir),
        "EMBED_HOST": "127.0.0.1",
        "EMBED_PORT": str(port),
        "EMBED_INTRA_OP_THREADS": "1",
        "EMBED_LOG_LEVEL": "warning",
        **{f"EMBED_{k.upper()}": v for k, v in settings.items()},
    }
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return Server(port, proc, log_path)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0) -> None:
    """Poll `url` until 200; fail with the process's log if it exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"{url}: process exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"{url} not ready in {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")
