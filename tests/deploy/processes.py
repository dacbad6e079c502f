"""Stop any test process and wait for any HTTP readiness URL (used for nginx; replicas use tests.server_process)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest


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
