"""Two real replicas behind the repository's own nginx config; one is SIGKILLed under load; nothing is lost.

What it proves about deploy/nginx/: the upstream spreads load over both replicas, and when one dies mid-run
(in-flight requests reset, new connections refused) nginx re-sends those requests to the survivor
(`proxy_next_upstream error ... non_idempotent`), so every client request still gets a 200. The config runs
verbatim except for the loopback upstream include and listen port (tests/deploy/nginx_conf.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.corpus import sentences
from tests.deploy import nginx_conf
from tests.deploy.processes import stop, wait_ready
from tests.server_process import ServerProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

log = logging.getLogger(__name__)

CLIENTS = 16
RUN_S = 16.0  # total load time; bounded in requests too
KILL_AT_S = 6.0
MAX_REQUESTS = 20_000
ROUTE = "/embed"


def _served(replica: ServerProcess) -> float:
    """embed_requests_total for the load's route, all statuses, read from the replica's own /metrics."""
    text = httpx.get(f"{replica.base_url}/metrics", timeout=5.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "embed_requests"
        for sample in family.samples
        if sample.name == "embed_requests_total" and sample.labels.get("route") == ROUTE
    )


@pytest.fixture
def cluster(tiny_artifact_dir: Path, nginx: str, tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess], Path]]:
    """Two replicas + nginx on loopback; yields (lb_url, replicas, nginx access log). Everything stops after."""
    replicas: list[ServerProcess] = []
    lb: subprocess.Popen[bytes] | None = None
    try:
        # One onnxruntime thread each: two replicas, nginx and the load share this machine's cores.
        replicas = [ServerProcess(tiny_artifact_dir, tmp_path / f"replica{i}.log", EMBED_INTRA_OP_THREADS="1",
                                  EMBED_LOG_LEVEL="warning") for i in range(2)]
        for r in replicas:
            r.wait_ready()
        lb_port = free_port()
        conf = nginx_conf.render(tmp_path / "nginx", listen_port=lb_port, upstream_ports=[r.port for r in replicas])
        check = nginx_conf.check(nginx, conf)
        assert check.returncode == 0, check.stderr
        access_log = conf.parent / "logs" / "access.log"
        with access_log.open("wb") as out, (conf.parent / "logs" / "stderr.log").open("wb") as err:
            lb = subprocess.Popen(nginx_conf.command(nginx, conf), stdout=out, stderr=err)
        lb_url = f"http://127.0.0.1:{lb_port}"
        wait_ready(f"{lb_url}/lb-health", lb, conf.parent / "logs" / "stderr.log", timeout_s=15)
        yield lb_url, replicas, access_log
    finally:
        if lb is not None:
            stop(lb)
        for r in replicas:
            r.stop()


@dataclass
class LoadResult:
    statuses: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    client_retries: Counter[str] = field(default_factory=Counter)


async def _drive(lb_url: str, texts: list[str], kill: Callable[[], None]) -> LoadResult:
    """CLIENTS workers post to nginx until RUN_S or MAX_REQUESTS; `kill` runs once at KILL_AT_S."""
    result = LoadResult()
    start = time.monotonic()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)

    async with httpx.AsyncClient(base_url=lb_url, timeout=30.0, limits=limits) as client:

        async def worker(index: int) -> None:
            i = index
            while time.monotonic() - start < RUN_S and result.sent < MAX_REQUESTS:
                result.sent += 1
                body = {"inputs": [texts[i % len(texts)]]}
                try:
                    try:
                        reply = await client.post(ROUTE, json=body)
                    except httpx.TransportError as exc:
                        # A replica killed while its reply is already on the way to nginx cannot be retried by
                        # nginx (the response has begun); the connection drops. Embeddings are idempotent, so a
                        # client retries once, as any production client would. Counted, and bounded below.
                        result.client_retries[type(exc).__name__] += 1
                        reply = await client.post(ROUTE, json=body)
                    result.statuses[str(reply.status_code)] += 1
                except httpx.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1
                i += CLIENTS

        async def killer() -> None:
            await asyncio.sleep(KILL_AT_S)
            await asyncio.to_thread(kill)

        await asyncio.gather(killer(), *(worker(i) for i in range(CLIENTS)))
    return result


def test_sigkill_of_one_replica_loses_no_request(cluster: tuple[str, list[ServerProcess], Path]) -> None:
    lb_url, (survivor, victim), access_log = cluster
    texts = sentences(512, seed=7)
    before_kill: dict[str, float] = {}

    def kill() -> None:
        before_kill["survivor"], before_kill["victim"] = _served(survivor), _served(victim)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)

    result = asyncio.run(_drive(lb_url, texts, kill))
    after_survivor = _served(survivor)
    log.info("statuses %s; client retries %s; before kill %s; survivor after %s", dict(result.statuses),
             dict(result.client_retries), before_kill, after_survivor)

    # No request lost: every one answered 200 (no 5xx ever reached a client: nginx re-sent those), and at most a
    # handful needed the client's one transport-level retry (replies cut off by the SIGKILL itself).
    assert result.statuses
    assert set(result.statuses) == {"200"}, dict(result.statuses)
    assert sum(result.client_retries.values()) <= 3, dict(result.client_retries)
    assert result.sent >= 100, f"too little load to mean anything: {result.sent} requests"

    # Load was spread before the kill (round robin: each replica well above a fifth of the traffic).
    total_before = before_kill["survivor"] + before_kill["victim"]
    assert total_before >= 50
    for name in ("survivor", "victim"):
        assert before_kill[name] / total_before > 0.2, before_kill

    # After the kill the survivor took everything, and nginx really re-sent requests aimed at the dead replica
    # (a failed first try shows as two addresses in $upstream_addr).
    assert after_survivor > before_kill["survivor"]
    lines = access_log.read_text().splitlines()
    retried = [ln for ln in lines if f'upstream="127.0.0.1:{victim.port}, 127.0.0.1:{survivor.port}"' in ln]
    assert retried, "no request was retried on the survivor"
    assert all(' 200 ' in ln for ln in retried), retried[:5]
