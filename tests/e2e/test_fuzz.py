"""Schemathesis in CI (RELIABILITY #44): a bounded positive + negative run against a real server's /openapi.json.

The recorded multi-thousand-case run is bench/fuzz.py (docs/reliability.md); this one keeps ~500 cases so it
finishes in well under a minute. Needs schemathesis==4.32.5 in the test requirements.
"""

from __future__ import annotations

import pytest

from bench.fuzz import TEI_PATH_REGEX, run_schemathesis
from tests.e2e.conftest import ServerProcess

pytest.importorskip("schemathesis", reason="schemathesis not installed: .venv/bin/pip install schemathesis==4.32.5")


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_contract_violation(server: ServerProcess) -> None:
    result = run_schemathesis(server.base_url, max_examples=25, seed=1, workers=2, timeout_s=120)
    assert result["returncode"] == 0, result["summary"]
    assert result["generated"] >= 300, result["summary"]  # the run really exercised the API
    assert result["failures"] == 0
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_schemathesis_on_tei_routes_finds_no_server_error_or_contract_violation(server: ServerProcess) -> None:
    """text-embeddings-inference's routes alone, with more examples each: their own (TEI) error shape is declared
    in /openapi.json, so every reply is checked against it."""
    result = run_schemathesis(server.base_url, max_examples=50, seed=2, workers=2, timeout_s=120,
                              path_regex=TEI_PATH_REGEX)
    assert result["returncode"] == 0, result["summary"]
    assert result["generated"] >= 300, result["summary"]
    assert result["failures"] == 0
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()
