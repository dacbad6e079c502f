"""parse_json: the stdlib fallback is only for JSON-escaped lone surrogates, and refuses what orjson refuses."""

from __future__ import annotations

import pytest

from service.api import jsonio
from service.api.jsonio import parse_json
from service.errors import InvalidJSONError


def test_escaped_lone_surrogate_parses_for_a_precise_422_later() -> None:
    assert parse_json(b'{"input": "a\\ud800b"}') == {"input": "a\ud800b"}
    assert parse_json(b'["\\uDC00"]') == ["\udc00"]


@pytest.mark.parametrize("body", [b'{"a": NaN}', b"[1, Infinity]", b"[-Infinity]",
                                  b'{"a": "\\ud800", "b": NaN}', b"[" * 100_000, b'{"a": 1,}'])
def test_non_json_is_refused_by_both_parsers(body: bytes) -> None:
    with pytest.raises(InvalidJSONError, match="not valid UTF-8 JSON"):
        parse_json(body)


def test_an_invalid_body_without_a_surrogate_escape_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the stdlib parser ran")

    monkeypatch.setattr(jsonio.json, "loads", fail)
    with pytest.raises(InvalidJSONError):
        parse_json(b'{"input": "' + b"x" * 2_000_000 + b'"')
