"""Start `python -m service` as a real process on a free loopback port, for benchmarks (tests have their own)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
def running_command(argv: list[str], env: dict[str, str], *, port: int, ready_path: str,
                    ready_timeout_s: float = 120.0, cwd: Path = REPO) -> Iterator[tuple[str, int]]:
    """Start any HTTP server command; yield (base_url, pid) once GET `ready_path` is 200; SIGTERM/SIGKILL on exit.

    stderr goes to a temporary file rather than a pipe: a chatty server filling an unread pipe would block.
    """
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + ready_timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    stderr.seek(0)
                    tail = stderr.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {tail}")
                try:
                    if httpx.get(f"{url}{ready_path}", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{argv[0]} did not become ready in {ready_timeout_s:.0f} s")
            yield url, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_server(env: dict[str, str], *, ready_timeout_s: float = 120.0) -> Iterator[tuple[str, int]]:
    """Yield (base_url, pid) of `python -m service` once /ready is 200; SIGTERM (then SIGKILL) the process on exit."""
    port = free_port()
    full_env = {**os.environ, "EMBED_HOST": "127.0.0.1", "EMBED_PORT": str(port), "EMBED_LOG_LEVEL": "warning",
                **env}
    with running_command([sys.executable, "-m", "service"], full_env, port=port, ready_path="/ready",
                         ready_timeout_s=ready_timeout_s) as served:
        yield served
