"""Every route's shape and every error status, against a real server process on the tiny artifact."""

from __future__ import annotations

import base64
import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import ServerProcess
from tests.tei_openapi import tei_errors

JSON = {"content-type": "application/json"}


# text-embeddings-inference's routes answer errors in TEI's shape: our code -> (TEI error_type, TEI's status where
# it differs from ours); every other code is Validation with our status.
TEI_ROUTES = frozenset({"/", "/invocations", "/embed", "/embed_all", "/tokenize", "/decode", "/similarity"})
TEI_FOR_CODE: dict[str, tuple[str, int | None]] = {
    "empty_input": ("Empty", 400), "invalid_text": ("Tokenizer", None), "queue_full": ("Overloaded", None),
    "queue_timeout": ("Unhealthy", None), "unavailable": ("Unhealthy", None), "inference_error": ("Backend", 424),
}


def assert_tei_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """TEI's shape {"error", "error_type"}: the type (and for some, the status) follow from our `code`."""
    tei_type, tei_status = TEI_FOR_CODE.get(code or "", ("Validation", None))
    assert response.status_code == (tei_status or status), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert isinstance(body["error"], str), body
    assert body["error"], body
    assert tei_errors("ErrorResponse", body) == [], body  # as TEI 1.9.3's OpenAPI document declares it
    assert "Traceback" not in response.text
    if response.status_code in (429, 503):
        assert int(response.headers["retry-after"]) >= 1
    if code is not None:
        assert body["error_type"] == tei_type, body
    return {"message": body["error"], "error_type": body["error_type"]}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The route family's error shape, with X-Request-ID (and Retry-After on 429/503). Returns the error object
    (OpenAI's) or {"message", "error_type"} (TEI's)."""
    if response.request.url.path in TEI_ROUTES:
        return assert_tei_error(response, status, code)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str)
    assert err["message"]
    assert "Traceback" not in response.text
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1
    if code is not None:
        assert err["code"] == code, err
    return err


def info(client: httpx.Client) -> dict[str, Any]:
    return client.get("/info").json()


# --- shapes ---------------------------------------------------------------------------------------------------


def test_openai_embeddings_shape(client: httpx.Client) -> None:
    meta = info(client)
    r = client.post("/v1/embeddings", json={"input": ["hello world", "second"], "model": meta["model_id"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == meta["model_id"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == meta["embedding_dim"] for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == int(r.headers["x-compute-tokens"])
    for v in body["data"]:
        assert math.isclose(float(np.linalg.norm(v["embedding"])), 1.0, rel_tol=1e-5)
    for h in ("x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time", "x-compute-characters"):
        assert float(r.headers[h]) >= 0
    assert "x-truncated-inputs" not in r.headers


def test_openai_input_forms_agree(client: httpx.Client) -> None:
    ids = [t["id"] for t in client.post("/tokenize", json={"inputs": "hello world"}).json()[0]]
    as_text = client.post("/v1/embeddings", json={"input": "hello world"}).json()["data"][0]["embedding"]
    as_ids = client.post("/v1/embeddings", json={"input": ids}).json()["data"][0]["embedding"]
    as_id_lists = client.post("/v1/embeddings", json={"input": [ids, ids]}).json()["data"]
    np.testing.assert_allclose(as_ids, as_text, atol=1e-6)
    assert len(as_id_lists) == 2
    np.testing.assert_allclose(as_id_lists[1]["embedding"], as_text, atol=1e-6)


def test_base64_is_little_endian_float32(client: httpx.Client) -> None:
    floats = client.post("/v1/embeddings", json={"input": "abc"}).json()["data"][0]["embedding"]
    r = client.post("/v1/embeddings", json={"input": "abc", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(floats, dtype=np.float32))


def test_dimensions_truncate_then_renormalise(client: httpx.Client) -> None:
    full = np.asarray(client.post("/embed", json={"inputs": "matryoshka", "normalize": False}).json()[0])
    cut = np.asarray(client.post("/embed", json={"inputs": "matryoshka", "dimensions": 8}).json()[0])
    assert cut.shape == (8,)
    np.testing.assert_allclose(cut, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)
    via_openai = client.post("/v1/embeddings", json={"input": "matryoshka", "dimensions": 8}).json()
    np.testing.assert_allclose(via_openai["data"][0]["embedding"], cut, atol=1e-6)
    dim = info(client)["embedding_dim"]
    for bad in (0, dim + 1, -3, "8", 2.5):
        assert_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": bad}), 422)


def test_openai_sdk_unmodified(server: ServerProcess, client: httpx.Client) -> None:
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    name = info(client)["model_id"]
    result = sdk.embeddings.create(model=name, input=["hello world", "second text"])  # base64 by default
    assert [d.index for d in result.data] == [0, 1]
    expected = client.post("/v1/embeddings", json={"input": ["hello world", "second text"]}).json()["data"]
    for got, want in zip(result.data, expected, strict=True):
        np.testing.assert_allclose(got.embedding, want["embedding"], atol=1e-6)
    assert result.usage.prompt_tokens > 0
    assert result.model == name
    short = sdk.embeddings.create(model=name, input="hello world", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4
    with pytest.raises(openai.NotFoundError) as exc_info:
        sdk.embeddings.create(model="no-such-model", input="x")
    assert exc_info.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert [m.id for m in sdk.models.list().data] == [name]


def test_tei_embed_and_embed_all(client: httpx.Client) -> None:
    dim = info(client)["embedding_dim"]
    single = client.post("/embed", json={"inputs": "one"}).json()
    assert len(single) == 1
    assert len(single[0]) == dim
    raw = client.post("/embed", json={"inputs": ["one", "two"], "normalize": False}).json()
    assert len(raw) == 2
    assert not math.isclose(float(np.linalg.norm(raw[0])), 1.0, rel_tol=1e-3)
    tokens = client.post("/tokenize", json={"inputs": ["one two", "three"]}).json()
    per_token = client.post("/embed_all", json={"inputs": ["one two", "three"]}).json()
    assert [len(x) for x in per_token] == [len(t) for t in tokens]
    assert all(len(vec) == dim for row in per_token for vec in row)


def test_tokenize_shape(client: httpx.Client) -> None:
    (toks,) = client.post("/tokenize", json={"inputs": "Hello world"}).json()
    assert toks[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert toks[1] == {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}
    assert toks[-1]["special"] is True
    (bare,) = client.post("/tokenize", json={"inputs": "Hello world", "add_special_tokens": False}).json()
    assert [t["text"] for t in bare] == ["Hello", "world"]


def test_encode_with_tokens_and_attention(client: httpx.Client) -> None:
    meta = info(client)
    n_layers, n_heads = meta["num_layers"], meta["num_heads"]
    body = {"input": "attention please", "token_embeddings": True, "attention": {}}
    r = client.post("/v1/encode", json=body)
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    t = row["token_count"]
    assert len(row["tokens"]) == t
    assert row["truncated"] is False
    assert set(row["tokens"][1]) == {"id", "text", "start", "end", "special", "unknown"}
    assert not any(tok["unknown"] for tok in row["tokens"])
    (unknown_row,) = client.post("/v1/encode", json={"input": "attention 她"}).json()["data"]
    tokens = unknown_row["tokens"]
    assert [tok["unknown"] for tok in tokens] == [tok["text"] == "[UNK]" for tok in tokens]
    assert any(tok["unknown"] for tok in tokens)
    assert np.asarray(row["token_embeddings"]).shape == (t, meta["embedding_dim"])
    att = row["attention"]
    assert att["shape"] == [n_layers, n_heads, t, t]
    assert att["layers"] == list(range(n_layers))
    maps = np.asarray(att["data"])
    assert maps.shape == (n_layers, n_heads, t, t)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-4)  # softmax rows over real keys
    # The attention graph's embedding agrees with the fused default graph's.
    fused = client.post("/v1/encode", json={"input": "attention please"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(row["embedding"], fused, atol=1e-4)

    sel = {"layers": [n_layers - 1], "heads": [0, 1], "format": "base64", "dtype": "float16"}
    att2 = client.post("/v1/encode", json={"input": "attention please", "attention": sel}).json()["data"][0]
    a2 = att2["attention"]
    assert a2["shape"] == [1, 2, t, t]
    assert a2["dtype"] == "float16"
    decoded = np.frombuffer(base64.b64decode(a2["data"]), dtype="<f2").reshape(a2["shape"])
    np.testing.assert_allclose(decoded, maps[[n_layers - 1]][:, [0, 1]], atol=2e-3)

    mean = client.post("/v1/encode", json={"input": "attention please", "attention": {"aggregate": "mean"}})
    m = mean.json()["data"][0]["attention"]
    assert m["shape"] == [n_layers, 1, t, t]
    assert m["heads"] == "mean"
    np.testing.assert_allclose(np.asarray(m["data"]), maps.mean(axis=1, keepdims=True), atol=1e-5)


def test_attention_budget_and_bad_selection(client: httpx.Client) -> None:
    long_text = " ".join(["word"] * 120)
    err = assert_error(client.post("/v1/encode", json={"input": long_text, "attention": {}}), 422,
                       "attention_budget_exceeded")
    assert "100000" in err["message"]
    layers = info(client)["num_layers"]
    assert_error(client.post("/v1/encode", json={"input": "x", "attention": {"layers": [layers]}}), 422)
    assert_error(client.post("/v1/encode", json={"input": "x", "attention": {"heads": []}}), 422)
    assert_error(client.post("/v1/encode", json={"input": "x", "attention": {"aggregate": "max"}}), 422)


def test_probes_info_models_metrics(client: httpx.Client) -> None:
    meta = info(client)
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["models"][meta["model_id"]]["status"] == "ok"
    assert client.get("/ready").status_code == 200
    for key in ("model_id", "embedding_dim", "max_input_length", "pooling", "provider", "graph_variant", "limits",
                "version"):
        assert key in meta
    assert meta["provider"] == "CPUExecutionProvider"
    assert meta["graph_variant"] == "fp32"
    assert meta["limits"]["max_inputs_per_request"] == 64
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == meta["model_id"]
    text = client.get("/metrics").text
    for name in ("embed_requests_total", "embed_request_duration_seconds_bucket", "embed_stage_duration_seconds",
                 "embed_queue_depth", "embed_inflight_requests", "embed_batch_size_bucket",
                 "embed_batch_tokens_bucket", "embed_rejected_total", "embed_cancelled_before_compute_total",
                 "embed_queue_timeouts_total", "embed_inference_failures_total"):
        assert name in text, name
    for stage in ("tokenize", "queue", "inference", "total"):
        assert f'embed_stage_duration_seconds_count{{model="{meta["model_id"]}",stage="{stage}"}}' in text


def test_request_id_echoed_or_generated(client: httpx.Client) -> None:
    assert client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


# --- truncation -----------------------------------------------------------------------------------------------


def test_truncation_is_flagged_or_refused(client: httpx.Client) -> None:
    max_len = info(client)["max_input_length"]
    long = " ".join(["word"] * (max_len + 20))
    r = client.post("/embed", json={"inputs": ["short", long]})
    assert r.status_code == 200
    assert r.headers["x-truncated-inputs"] == "1"
    r = client.post("/v1/embeddings", json={"input": [long, "short", long]})
    assert r.headers["x-truncated-inputs"] == "0,2"
    row = client.post("/v1/encode", json={"input": long}).json()["data"][0]
    assert row["truncated"] is True
    assert row["token_count"] == max_len
    for route, body in (("/embed", {"inputs": ["ok", long], "truncate": False}),
                        ("/v1/embeddings", {"input": ["ok", long], "truncate": False}),
                        ("/v1/encode", {"input": ["ok", long], "truncate": False})):
        err = assert_error(client.post(route, json=body), 422, "input_too_long")
        assert err["message"].startswith("input[1]")
        assert f"{max_len + 22} tokens" in err["message"]
        assert err.get("param", "[1]").endswith("[1]")  # OpenAI's shape also has `param`


# --- batching -------------------------------------------------------------------------------------------------


def test_batched_equals_alone_under_concurrency(client: httpx.Client, server: ServerProcess) -> None:
    texts = [f"sentence number {i} " + "pad " * (i % 7 * 5) for i in range(32)]
    alone = [np.asarray(client.post("/embed", json={"inputs": t}).json()[0]) for t in texts]

    def one(text: str) -> np.ndarray:
        with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
            return np.asarray(c.post("/embed", json={"inputs": text}).json()[0])

    def batch_rows() -> tuple[float, float]:
        m = client.get("/metrics").text
        ones = float(re.search(r'embed_batch_size_bucket\{graph="embed",le="1.0",model="[^"]+"\} (\S+)', m).group(1))
        count = float(re.search(r'embed_batch_size_count\{graph="embed",model="[^"]+"\} (\S+)', m).group(1))
        return ones, count

    before = batch_rows()
    for _ in range(3):  # bounded retries: concurrency on a 2-core box is not guaranteed to coincide
        with ThreadPoolExecutor(32) as pool:
            together = list(pool.map(one, texts))
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        ones, count = batch_rows()
        if count - before[1] > ones - before[0]:
            break
    assert count - before[1] > ones - before[0], "no batch with more than one row was formed"


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"inputs": []}, "input"),
        ({"inputs": ""}, "input[0]"),
        ({"inputs": ["ok", "   \n\t\u3000"]}, "input[1]"),
        ({"inputs": ["\u200b\u200b"]}, "input[0]"),
        ({"inputs": [["a", "b"]]}, "inputs[0]"),
        ({"inputs": {"a": 1}}, "inputs"),
        ({"inputs": [1, 2.5]}, "inputs[1]"),  # a list of token ids, whose second is no integer
        ({"inputs": 42}, "inputs"),
        ({"inputs": True}, "inputs"),
        ({"inputs": None}, "inputs"),
        ({"inputs": ["a", None]}, "inputs[1]"),
        ({}, "inputs"),
        ({"inputs": "a", "foo": 1}, "foo"),
        ({"inputs": "a", "normalize": "yes"}, "normalize"),
        ({"inputs": "a", "truncate": 2}, "truncate"),
        ({"inputs": "a", "truncation_direction": "up"}, "truncation_direction"),
    ],
)
def test_invalid_bodies_are_4xx_naming_the_field(client: httpx.Client, body: Any, param: str) -> None:
    """TEI's shape has no `param`: the message names the field. Empty inputs are TEI's Empty (400)."""
    empty = not param.startswith("inputs") and param.startswith("input")  # found after parsing, by the engine
    err = assert_error(client.post("/embed", json=body), 422, "empty_input" if empty else "validation_error")
    assert err["message"].startswith(param), err


def test_null_body_and_lone_surrogates(client: httpx.Client) -> None:
    assert_error(client.post("/embed", content=b"null", headers=JSON), 422)
    for escaped in (b'"\\ud800"', b'"a\\udc80b"'):
        r = client.post("/embed", content=b'{"inputs": [' + escaped + b"]}", headers=JSON)
        err = assert_error(r, 422, "invalid_text")
        assert "\\ud800" not in r.text
        assert "\\udc80" not in r.text
        assert err["message"].startswith("input[0]")


@pytest.mark.parametrize(
    "text", ["\u202e abc", "a\u0000b\u0007\u001b[31m\r\n", "[CLS] [SEP] [PAD] [MASK] <|endoftext|>",
             "👩‍👩‍👧 " + "🙂" * 3000, "中文 日本語 한국어 العربية हिन्दी", "e\u0301 vs \u00e9", "\u200f x"],
)
def test_odd_text_gives_finite_vectors(client: httpx.Client, text: str) -> None:
    r = client.post("/embed", json={"inputs": [text, text]})
    assert r.status_code == 200, r.text
    a, b = r.json()
    assert all(math.isfinite(x) for x in a)
    assert a == b


def test_400_unparseable_bodies(client: httpx.Client) -> None:
    for raw in (b'{"inputs": [', b'{"inputs":["\xff"]}', b"{" * 1 + b'"inputs":' + b"[" * 50_000, b""):
        assert_error(client.post("/embed", content=raw, headers=JSON), 400, "invalid_json")


def test_404_405(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/embed"), 405, "method_not_allowed")
    assert_error(client.post("/health"), 405)
    err = assert_error(client.post("/v1/embeddings", json={"input": "x", "model": "other"}), 404, "model_not_found")
    assert "other" not in err["message"]
    assert_error(client.post("/v1/encode", json={"input": "x", "model": "other"}), 404, "model_not_found")


def test_413_body_and_counts(client: httpx.Client, server: ServerProcess) -> None:
    big = b'{"inputs": "' + b"a" * 150_000 + b'"}'
    assert_error(client.post("/embed", content=big, headers=JSON), 413, "payload_too_large")

    def chunks() -> Any:
        yield b'{"inputs": "'
        for _ in range(30):
            yield b"a" * 10_000
        yield b'"}'

    assert_error(client.post("/embed", content=chunks(), headers=JSON), 413, "payload_too_large")
    assert_error(client.post("/embed", json={"inputs": ["a"] * 65}), 413, "too_many_inputs")
    # Over the char cap with truncation off: 422 naming the input.
    err = assert_error(client.post("/embed", json={"inputs": ["a " * 3000], "truncate": False}), 422)
    assert err["message"].startswith("input[0]")
    assert "characters" in err["message"]
    assert client.get("/health").status_code == 200  # the server is fine afterwards


def test_415_content_type_and_encoding(client: httpx.Client) -> None:
    body = b'{"inputs": "a"}'
    assert_error(client.post("/embed", content=body, headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    assert_error(client.post("/embed", content=body), 415)
    assert_error(client.post("/embed", data={"inputs": "a"}), 415)
    gz = {"content-type": "application/json", "content-encoding": "gzip"}
    assert_error(client.post("/embed", content=b"\x1f\x8b" + b"\0" * 100, headers=gz), 415,
                 "unsupported_content_encoding")


def test_explorer_page_and_static_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "static/app.js" in page.text
    assert client.get("/static/api.js").status_code == 200
    assert_error(client.get("/static/no-such-file.js"), 404)


def test_openapi_describes_request_bodies(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    ref = doc["paths"]["/v1/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    assert "attention" in doc["components"]["schemas"][name]["properties"]
    assert "AttentionOptions" in doc["components"]["schemas"]
