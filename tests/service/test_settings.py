"""Settings: contract defaults, env names with the EMBED_ prefix, and refusal of bad values at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_match_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("EMBED_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.artifact_dir == Path("artifacts/all-MiniLM-L6-v2")
    assert (s.host, s.port, s.graph_variant, s.provider) == ("127.0.0.1", 8080, "fp32", "auto")
    assert (s.max_batch_size, s.max_batch_tokens, s.max_wait_ms, s.max_queue_size) == (64, 2048, 2.0, 2048)
    assert (s.queue_timeout_s, s.max_body_bytes, s.max_inputs_per_request) == (10.0, 2_000_000, 256)
    assert (s.max_chars_per_input, s.max_tokens_per_request, s.attention_budget) == (100_000, 65536, 4_000_000)
    assert s.api_key is None
    assert s.cors_origins == []
    assert s.require_gpu is False


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PORT", "9123")
    monkeypatch.setenv("EMBED_MAX_WAIT_MS", "0")
    monkeypatch.setenv("EMBED_REQUIRE_GPU", "true")
    monkeypatch.setenv("EMBED_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("EMBED_API_KEY", "s3cret")
    monkeypatch.setenv("EMBED_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert s.port == 9123
    assert s.max_wait_ms == 0
    assert s.require_gpu is True
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # the key never lands in logs via repr
    assert s.log_level == "debug"


def test_empty_api_key_means_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_batch_size", 0), ("graph_variant", "fp64"), ("provider", "tpu"), ("queue_timeout_s", 0), ("port", -1),
     ("max_header_bytes", 100), ("max_request_line_bytes", 10), ("max_connections", 0), ("http_parser", "llhttp")],
)
def test_rejects_invalid_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_connection_limits_and_parser_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("EMBED_MAX_REQUEST_LINE_BYTES", "4096"), ("EMBED_MAX_HEADER_BYTES", "16384"),
                        ("EMBED_MAX_CONNECTIONS", "20"), ("EMBED_HTTP_PARSER", "h11")):
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.max_request_line_bytes, s.max_header_bytes, s.max_connections, s.http_parser) == (4096, 16384, 20, "h11")
    monkeypatch.delenv("EMBED_HTTP_PARSER")
    assert Settings().http_parser == "auto"
