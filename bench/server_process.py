"""Start `python -m service` as a real process on a free loopback port, for benchmarks (tests have their own)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(env: dict[str, str], *, ready_timeout_s: float = 120.0) -> Iterator[tuple[str, int]]:
    """Yield (base_url, pid) once /ready is 200; SIGTERM (then SIGKILL) the process on exit."""
    port = free_port()
    full_env = {**os.environ, "EMBED_HOST": "127.0.0.1", "EMBED_PORT": str(port), "EMBED_LOG_LEVEL": "warning",
                **env}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready")
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
