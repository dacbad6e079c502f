"""RELIABILITY.md §Bad input, cases #1–#27, table-driven against ONE real server process.

Every case gets its documented status and code in its route family's error shape (OpenAI's on /v1/*,
text-embeddings-inference's on TEI routes, where the code becomes TEI's error_type and an empty input is 400);
no error body ever contains the unique
marker planted in the input (nothing is echoed) or a traceback; every 200 is strictly valid JSON with finite
numbers only (NaN/Inf would need non-standard JSON). The last test checks the server is still ready and healthy
after the whole table. Case numbers are the ids' prefixes (`pytest -k "12-"` runs case #12).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import MAIN_SERVER_ENV, ServerProcess
from tests.e2e.test_http_api import TEI_ROUTES, assert_tei_error

API_KEY = "bad-input-key-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {API_KEY}"}
JSON_CT = {"content-type": "application/json"}
MARK = "qzmark" + uuid.uuid4().hex[:12]  # planted in inputs; must never come back in an error body
MAX_BODY = 2_000_000
SERVER_ENV = {
    **MAIN_SERVER_ENV,
    "EMBED_MAX_BODY_BYTES": str(MAX_BODY),  # the documented default: the 1 MB string (#5) fits, 3 MB (#6) does not
    "EMBED_API_KEY": API_KEY,  # #26 on the same server
    "EMBED_BATCH_PADDING_SLACK_TOKENS": "100000",  # #27: the long neighbour must share X's batch
}

# route -> name of its input field
ROUTES = {"/embed": "inputs", "/embed_all": "inputs", "/tokenize": "inputs", "/v1/embeddings": "input",
          "/v1/encode": "input"}
EMBEDDING_ROUTES = [r for r in ROUTES if r != "/tokenize"]


@dataclass(frozen=True)
class Case:
    id: str
    route: str
    status: int
    code: str | None = None
    body: Any = None  # JSON-encoded when `raw` is None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    param: str | None = None  # expected `param` (exact) when set
    max_seconds: float = 10.0


def _short(route: str) -> str:
    return route.strip("/").replace("/", "_")


def _per_route(num: str, name: str, routes: list[str], status: int, code: str | None,
               make: Callable[[str], Any], **kw: Any) -> Iterator[Case]:
    for route in routes:
        yield Case(f"{num}-{name}-{_short(route)}", route, status, code, body=make(ROUTES[route]), **kw)


def build_cases() -> list[Case]:
    all_routes, emb = list(ROUTES), EMBEDDING_ROUTES
    c: list[Case] = []
    c += _per_route("01", "empty-list", all_routes, 422, "empty_input", lambda f: {f: []})
    c += _per_route("02", "empty-string", emb, 422, "empty_input", lambda f: {f: ""}, param="input[0]")
    c += _per_route("02", "empty-in-list", emb, 422, "empty_input", lambda f: {f: [MARK, ""]}, param="input[1]")
    c += _per_route("02", "empty-string", ["/tokenize"], 200, None, lambda f: {f: ""})  # documented: [CLS] [SEP]
    c += _per_route("03", "whitespace", emb, 422, "empty_input", lambda f: {f: [MARK, "   \n\t\u3000"]},
                    param="input[1]", max_seconds=2.0)
    c += _per_route("04", "zero-width", emb, 422, "empty_input", lambda f: {f: ["\u200b\u200b"]})
    c += _per_route("04", "rlm-only", emb, 422, "empty_input", lambda f: {f: "\u200f"})
    megabyte = (MARK + " ") * (1_000_000 // (len(MARK) + 1))
    c += _per_route("05", "1mb-truncated", emb, 200, None, lambda f: {f: megabyte}, max_seconds=5.0)
    c += _per_route("05", "1mb-truncate-off", emb, 422, "input_too_long", lambda f: {f: megabyte, "truncate": False},
                    param="input[0]", max_seconds=5.0)
    c += _per_route("05", "1mb", ["/tokenize"], 422, "input_too_long", lambda f: {f: megabyte})
    three_mb = b'{"inputs": "' + MARK.encode() + b"a" * 3_000_000 + b'"}'
    c += [Case(f"06-3mb-body-{_short(r)}", r, 413, "payload_too_large", raw=three_mb, headers=JSON_CT)
          for r in all_routes]
    c += _per_route("07", "10000-inputs", all_routes, 413, "too_many_inputs", lambda f: {f: ["a"] * 10_000})
    c += _per_route("08", "nested-list", all_routes, 422, "validation_error", lambda f: {f: [["a", "b"]]})
    c += _per_route("08", "object", all_routes, 422, "validation_error", lambda f: {f: {"a": MARK}})
    c += _per_route("09", "numbers", all_routes, 422, "validation_error", lambda f: {f: [1, 2.5]})
    c += _per_route("09", "int", all_routes, 422, "validation_error", lambda f: {f: 42})
    c += _per_route("09", "bool", all_routes, 422, "validation_error", lambda f: {f: True})
    c += [Case("09-token-id-overflow-v1_embeddings", "/v1/embeddings", 422, "validation_error",
                body={"input": [101, 2**70, 102]}),  # was an int64 OverflowError -> 500
          Case("09-token-id-negative-v1_embeddings", "/v1/embeddings", 422, "validation_error",
               body={"input": [[101, -1, 102]]}),
          Case("09-token-id-out-of-vocab-v1_embeddings", "/v1/embeddings", 422, "validation_error",
               body={"input": [101, 10**9, 102]})]
    c += _per_route("10", "null-field", all_routes, 422, "validation_error", lambda f: {f: None})
    c += _per_route("10", "null-item", all_routes, 422, "validation_error", lambda f: {f: [MARK, None]})
    c += [Case(f"10-null-body-{_short(r)}", r, 422, "validation_error", raw=b"null", headers=JSON_CT)
          for r in all_routes]
    c += [Case(f"11-invalid-utf8-{_short(r)}", r, 400, "invalid_json", headers=JSON_CT,
               raw=b'{"%s": ["\xff\xfe%s"]}' % (ROUTES[r].encode(), MARK.encode())) for r in all_routes]
    for name, escaped in (("lone-high", "\\ud800"), ("lone-low-inside", "a\\udc80b")):
        c += [Case(f"12-{name}-{_short(r)}", r, 422, "invalid_text", headers=JSON_CT, param="input[1]",
                   raw=f'{{"{ROUTES[r]}": ["{MARK}", "{MARK}{escaped}"]}}'.encode()) for r in all_routes]
    odd_texts = {
        "13-rtl-combining-nfd": "\u202e abc e\u0301 vs \u00e9",
        "14-emoji-zwj-100k": "👩‍👩‍👧 🇯🇵 " + "🙂" * 100_000,
        "15-cjk-arabic-devanagari": "中文 日本語 한국어 العربية हिन्दी mixed",
        "16-control-chars-nul": "a\u0000b\u0007\u001b[31m\r\n end",
        "17-literal-specials": "[CLS] [SEP] [PAD] [MASK] <|endoftext|> text",
    }
    for name, text in odd_texts.items():
        c += _per_route(name[:2], name[3:], emb, 200, None, lambda f, t=text: {f: [t, t]})
        if len(text) > 5000:  # /tokenize never truncates: over the char cap is 422, as in #5
            c += _per_route(name[:2], name[3:], ["/tokenize"], 422, "input_too_long", lambda f, t=text: {f: [t]})
        else:
            c += _per_route(name[:2], name[3:], ["/tokenize"], 200, None, lambda f, t=text: {f: [t, t]})
    c += [Case(f"18-duplicate-keys-{_short(r)}", r, 200, None, headers=JSON_CT,
               raw=f'{{"{ROUTES[r]}": "first {MARK}", "{ROUTES[r]}": "second"}}'.encode()) for r in all_routes]
    c += _per_route("19", "unknown-field", all_routes, 422, "validation_error", lambda f: {f: "a", "foo": MARK},
                    param="foo")
    options = {
        "/embed": [("normalize", "yes"), ("truncate", 2), ("truncation_direction", "up"), ("dimensions", "8")],
        "/embed_all": [("truncate", "no"), ("truncation_direction", 1)],
        "/tokenize": [("add_special_tokens", "yes")],
        "/v1/embeddings": [("encoding_format", "int8"), ("truncate", 2), ("dimensions", 2.5), ("user", 5)],
        "/v1/encode": [("normalize", "yes"), ("token_embeddings", 1), ("attention", "maybe"),
                       ("attention", {"layers": "some"})],
    }
    for route, pairs in options.items():
        for opt, value in pairs:
            c.append(Case(f"20-option-{opt}-{json.dumps(value)}-{_short(route)}", route, 422, "validation_error",
                          body={ROUTES[route]: MARK, opt: value}))
    long_text = " ".join(["word"] * 120)
    c.append(Case("21-attention-budget", "/v1/encode", 422, "attention_budget_exceeded",
                  body={"input": [f"{MARK} {long_text}"] * 64, "attention": {}}, param="attention"))
    c.append(Case("21-attention-short", "/v1/encode", 200, None, body={"input": "short text", "attention": {}}))
    for name, headers, raw in (
        ("text-plain", {"content-type": "text/plain"}, b'{"inputs": "a"}'),
        ("form", {"content-type": "application/x-www-form-urlencoded"}, b"inputs=a"),
        ("missing", {}, b'{"inputs": "a"}'),
    ):
        c += [Case(f"22-content-type-{name}-{_short(r)}", r, 415, "unsupported_media_type", raw=raw,
                   headers=headers) for r in all_routes]
    body = json.dumps({"inputs": MARK}).encode()
    bomb = gzip.compress(b"\0" * 10_000_000, compresslevel=9)  # ~10 KB that inflates to 10 MB
    for name, raw in (("gzip", gzip.compress(body)), ("gzip-bomb", bomb)):
        c += [Case(f"23-{name}-{_short(r)}", r, 415, "unsupported_content_encoding", raw=raw,
                   headers={**JSON_CT, "content-encoding": "gzip"}) for r in all_routes]
    c += [Case(f"23-deflate-{_short(r)}", r, 415, "unsupported_content_encoding", raw=body,
               headers={**JSON_CT, "content-encoding": "deflate"}) for r in all_routes]
    for name, raw in (("truncated", b'{"inputs": ["' + MARK.encode()), ("empty", b""), ("trailing", b'{"a":1} x'),
                      ("nesting-bomb-1mb", b"[" * 1_000_000), ("object-bomb", b'{"a":' * 100_000)):
        c += [Case(f"24-malformed-{name}-{_short(r)}", r, 400, "invalid_json", raw=raw, headers=JSON_CT)
              for r in all_routes]
    c += [Case(f"25-get-{_short(r)}", r, 405, "method_not_allowed", method="GET") for r in all_routes]
    c += [Case(f"25-delete-{_short(r)}", r, 405, "method_not_allowed", method="DELETE") for r in all_routes]
    c += [Case(f"25-post-{_short(r)}", r, 405, "method_not_allowed", body={"inputs": MARK}) for r in
          ("/health", "/ready", "/metrics", "/info", "/v1/models")]
    c += [Case("25-unknown-path", f"/v2/{MARK}", 404, "not_found", body={"inputs": "a"}),
          Case("25-unknown-path-get", f"/{MARK}", 404, "not_found", method="GET")]
    return c


CASES = build_cases()


@pytest.fixture(scope="module")
def srv(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**SERVER_ENV)


@pytest.fixture(scope="module")
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, timeout=30.0, headers=AUTH) as c:
        yield c


def strict_json(text: str) -> Any:
    """Parse as standard JSON: NaN / Infinity literals are errors, not floats."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name} in a reply")

    return json.loads(text, parse_constant=refuse)


def all_numbers_finite(value: Any) -> bool:
    """Every float is finite, and no list holds a null (orjson writes NaN as null, so a null vector entry
    would be a NaN in disguise; nulls are only legal as dict fields such as a special token's `start`)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(v is not None and all_numbers_finite(v) for v in value)
    if isinstance(value, dict):
        return all(all_numbers_finite(v) for v in value.values())
    return True


def check_tei_error(r: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    """TEI's shape: our code decides TEI's error_type and, for some, the status (test_http_api.TEI_FOR_CODE)."""
    assert MARK not in r.text, "an error reply echoed the input"
    assert 'File "' not in r.text
    strict_json(r.text)
    return assert_tei_error(r, status, code)


def check_error(r: httpx.Response, status: int, code: str | None, route: str = "/v1/embeddings") -> dict[str, Any]:
    if route in TEI_ROUTES:
        return check_tei_error(r, status, code)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers.get("x-request-id")
    assert MARK not in r.text, "an error reply echoed the input"
    assert "Traceback" not in r.text
    assert 'File "' not in r.text
    body = strict_json(r.text)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if status in (429, 503):
        assert int(r.headers["retry-after"]) >= 1
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def send(http: httpx.Client, case: Case) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.raw is not None:
        kwargs["content"] = case.raw
    elif case.body is not None:
        kwargs["content"] = json.dumps(case.body, ensure_ascii=False).encode()
        kwargs["headers"] = {**JSON_CT, **case.headers}
    return http.request(case.method, case.route, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_table(http: httpx.Client, case: Case) -> None:
    t0 = time.monotonic()
    r = send(http, case)
    elapsed = time.monotonic() - t0
    assert elapsed < case.max_seconds, f"took {elapsed:.2f}s"
    if case.status != 200:
        err = check_error(r, case.status, case.code, case.route)
        if case.param is not None and case.route not in TEI_ROUTES:
            assert err["param"] == case.param
        if case.status == 405:
            assert r.headers.get("allow")
        return
    assert r.status_code == 200, r.text[:500]
    body = strict_json(r.text)
    assert all_numbers_finite(body), "non-finite number in a 200 reply"
    if case.id.startswith(("13-", "14-", "15-", "16-", "17-")):  # [t, t]: deterministic within one request
        rows = body["data"] if isinstance(body, dict) else body
        assert len(rows) == 2
        strip = (lambda d: {k: v for k, v in d.items() if k != "index"}) if isinstance(rows[0], dict) else None
        assert (strip(rows[0]) == strip(rows[1])) if strip else rows[0] == rows[1]
    if case.id.startswith("05-"):
        assert r.headers["x-truncated-inputs"] == "0"
        if case.route == "/v1/encode":
            assert body["data"][0]["truncated"] is True


def test_05_1mb_truncated_equals_the_char_capped_text(http: httpx.Client) -> None:
    """The char cap applies before tokenizing: the 1 MB string embeds like its first EMBED_MAX_CHARS_PER_INPUT."""
    cap = int(MAIN_SERVER_ENV["EMBED_MAX_CHARS_PER_INPUT"])
    text = "alpha beta gamma " * 70_000
    whole = http.post("/embed", json={"inputs": text}).json()[0]
    capped = http.post("/embed", json={"inputs": text[:cap]}).json()[0]
    np.testing.assert_allclose(whole, capped, atol=1e-6)


def _raw_exchange(port: int, head: bytes, pieces: list[bytes], *, read_timeout_s: float = 5.0) -> tuple[bytes, int]:
    """Send `head`, then `pieces` one by one while checking for an early reply; return (reply, pieces sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout_s) as sock:
        sock.sendall(head)
        sent = 0
        sock.setblocking(False)
        reply = b""
        for piece in pieces:
            with contextlib.suppress(BlockingIOError):
                reply += sock.recv(65536)
            if reply:
                break
            try:
                sock.sendall(piece)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            time.sleep(0.002)
        sock.setblocking(True)
        sock.settimeout(read_timeout_s)
        deadline = time.monotonic() + read_timeout_s
        while b"\r\n\r\n" not in reply and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            reply += chunk
        return reply, sent


def _reply_status(reply: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert match, reply[:200]
    return int(match.group(1))


def test_06_content_length_over_limit_answered_before_the_body(srv: ServerProcess) -> None:
    head = (b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: " + AUTH["authorization"].encode() + b"\r\ncontent-length: 3000000\r\n\r\n")
    reply, sent = _raw_exchange(srv.port, head, [b"a" * 10_000] * 300)
    assert _reply_status(reply) == 413
    assert b'"error_type":"Validation"' in reply  # TEI's shape on /embed
    assert sent < 300, "the server waited for the whole 3 MB body"


def test_06_chunked_without_length_answered_before_the_end(srv: ServerProcess) -> None:
    head = (b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: " + AUTH["authorization"].encode() + b"\r\ntransfer-encoding: chunked\r\n\r\n")

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    pieces = [chunk(b'{"input": "'), *[chunk(b"a" * 50_000)] * 60, chunk(b'"}'), b"0\r\n\r\n"]
    reply, sent = _raw_exchange(srv.port, head, pieces)
    assert _reply_status(reply) == 413
    assert b"payload_too_large" in reply
    assert sent < len(pieces) - 2, "the server read the whole chunked body before answering"


def _metric(http: httpx.Client, pattern: str) -> float:
    match = re.search("^" + pattern + r" (\S+)$", http.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_07_too_many_inputs_tokenizes_nothing(http: httpx.Client) -> None:
    key = r'embed_stage_duration_seconds_count\{model="[^"]+",stage="tokenize"\}'
    before = _metric(http, key)
    check_error(http.post("/embed", json={"inputs": ["a"] * 10_000}), 413, "too_many_inputs", "/embed")
    assert _metric(http, key) == before


def test_18_duplicate_keys_last_wins(http: httpx.Client) -> None:
    dup = http.post("/embed", content=b'{"inputs": "first text", "inputs": "second text"}', headers=JSON_CT).json()
    assert dup == http.post("/embed", json={"inputs": "second text"}).json()
    assert dup != http.post("/embed", json={"inputs": "first text"}).json()


def test_21_attention_shape_for_one_short_input(http: httpx.Client) -> None:
    meta = http.get("/info").json()
    row = http.post("/v1/encode", json={"input": "short text", "attention": {}}).json()["data"][0]
    t = row["token_count"]
    assert row["attention"]["shape"] == [meta["num_layers"], meta["num_heads"], t, t]


def test_23_gzip_bomb_does_not_grow_memory(srv: ServerProcess, http: httpx.Client) -> None:
    bomb = gzip.compress(b"\0" * 10_000_000, compresslevel=9)

    def rss_kb() -> int:
        status = open(f"/proc/{srv.proc.pid}/status").read()  # noqa: SIM115  (one short read)
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    before = rss_kb()
    for _ in range(20):
        r = http.post("/embed", content=bomb, headers={**JSON_CT, "content-encoding": "gzip"})
        check_error(r, 415, "unsupported_content_encoding", "/embed")
    assert rss_kb() - before < 20_000  # kB; inflating even once would add ~10 MB


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {API_KEY}x"},
                                     {"authorization": f"Basic {API_KEY}"}, {"authorization": API_KEY}],
                         ids=["none", "wrong", "longer", "basic-scheme", "no-scheme"])
def test_26_missing_or_wrong_key_is_401(srv: ServerProcess, headers: dict[str, str]) -> None:
    for route in ROUTES:
        r = httpx.post(f"{srv.base_url}{route}", json={ROUTES[route]: MARK}, headers=headers)
        check_error(r, 401, "invalid_api_key", route)
        assert r.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in r.text


@pytest.mark.parametrize("route", ["/embed", "/v1/embeddings"])
def test_27_batch_invariance_with_a_250_token_neighbour(http: httpx.Client, route: str) -> None:
    field_name = ROUTES[route]
    x = "the quick brown fox jumps over the lazy dog"
    neighbour = " ".join(f"word{i}" for i in range(250))
    count_key = r'embed_batch_size_count\{graph="embed",model="[^"]+"\}'
    sum_key = r'embed_batch_size_sum\{graph="embed",model="[^"]+"\}'

    def vectors(inputs: list[str]) -> list[list[float]]:
        body = http.post(route, json={field_name: inputs}).json()
        return [d["embedding"] for d in body["data"]] if isinstance(body, dict) else body

    alone = vectors([x])[0]
    n0, s0 = _metric(http, count_key), _metric(http, sum_key)
    together = vectors([x, neighbour])
    n1, s1 = _metric(http, count_key), _metric(http, sum_key)
    assert (n1 - n0, s1 - s0) == (1, 2), "X and its neighbour did not share a batch"
    assert float(np.max(np.abs(np.asarray(alone) - np.asarray(together[0])))) <= 1e-5


def test_zz_server_still_ready_after_the_table(srv: ServerProcess, http: httpx.Client) -> None:
    """After every case above: ready, healthy, answering, queue empty, no traceback in the log."""
    assert http.get("/ready").status_code == 200
    assert http.get("/health").status_code == 200
    r = http.post("/embed", json={"inputs": "still fine"})
    assert r.status_code == 200
    assert all_numbers_finite(r.json())
    assert _metric(http, r'embed_queue_depth\{model="[^"]+"\}') == 0
    assert srv.proc.poll() is None
    assert "Traceback" not in srv.log()
    assert MARK not in srv.log()
