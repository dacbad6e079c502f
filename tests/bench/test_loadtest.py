"""bench/loadtest.py against a real server: tiny steps, every scenario, JSON and PNG written, numbers consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import loadtest
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(120)


def test_loadtest_ramps_every_scenario_and_writes_its_report(tiny_artifact_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="pip install matplotlib==3.11.2")
    server = ServerProcess(tiny_artifact_dir, tmp_path / "server.log", EMBED_INTRA_OP_THREADS="1",
                           EMBED_LOG_LEVEL="warning")
    try:
        server.wait_ready()
        out = tmp_path / "report"
        code = loadtest.main(["--url", server.base_url, "--concurrency", "1,3", "--step-seconds", "0.6",
                              "--step-requests", "40", "--out", str(out)])
    finally:
        server.stop_and_check()
    assert code == 0
    report = json.loads((out / "loadtest.json").read_text())
    png = (out / "loadtest.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000

    steps = {(s["scenario"], s["concurrency"]): s for s in report["steps"]}
    assert set(steps) == {(name, c) for name in ("single", "batch32", "mixed", "attention") for c in (1, 3)}
    for (name, _), step in steps.items():
        assert step["errors"] == {}, (name, step["errors"])
        assert 0 < step["ok"] == step["requests"] <= 40, "bounded by --step-requests"
        per_request = {"single": 1, "attention": 1, "batch32": 32}.get(name)
        if per_request:
            assert step["sentences_per_s"] == pytest.approx(step["requests_per_s"] * per_request, rel=0.01)
        lat = step["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        # Server stage times come from the timing headers; the server's total cannot exceed the client's view.
        server = step["server_ms"]
        assert all(server[stage]["p50"] is not None for stage in ("tokenization", "queue", "inference", "total"))
        assert server["total"]["max"] <= lat["max"] + 1.0
    assert report["meta"]["server_info"]["model_id"] == "tiny-bert"


def test_unknown_scenario_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        loadtest.parse_args(["--scenarios", "single,nope"])
    assert exc.value.code == 2
