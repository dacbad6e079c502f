"""Drop-in for text-embeddings-inference clients: the official huggingface_hub client and TEI's own schemas against
a real server process (issue 11).

The reference for every vector is our own /v1/embeddings on the same server; the reference for every shape is TEI
1.9.3's published OpenAPI document (tests/fixtures), so a typed TEI client would parse what we send.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient

from service.faults import FAULT_MARKERS
from tests.e2e.conftest import MAIN_SERVER_ENV, ServerProcess
from tests.e2e.test_http_api import assert_tei_error
from tests.tei_openapi import tei_errors
from tests.tiny_checkpoint import TINY_PROMPTS

TEXTS = ["The cat sat on the mat.", "Embeddings map text to vectors", "小明喜欢她", "a " * 300]
MARK = "qzmark" + uuid.uuid4().hex[:12]  # must never come back in an error body
TEI_TYPES = {"Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"}


def openai_vectors(client: httpx.Client, texts: list[str]) -> np.ndarray:
    data = client.post("/v1/embeddings", json={"input": texts}).json()["data"]
    return np.array([d["embedding"] for d in data], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def tei_error(r: httpx.Response, status: int, error_type: str) -> dict[str, str]:
    """A reply in TEI's ErrorResponse shape with TEI's status for `error_type`, that echoes nothing."""
    err = assert_tei_error(r, status)
    assert err["error_type"] == error_type, err
    assert MARK not in r.text
    return {"error": err["message"], "error_type": err["error_type"]}


# --- the official client, both ways of pointing it at a server ------------------------------------------------


@pytest.fixture(scope="module", params=["model", "base_url"])
def hf(request: pytest.FixtureRequest, server: ServerProcess) -> InferenceClient:
    return InferenceClient(**{request.param: server.base_url}, timeout=30)


@pytest.mark.parametrize("text", TEXTS, ids=["en", "short", "cjk", "long"])
def test_feature_extraction_equals_v1_embeddings(hf: InferenceClient, client: httpx.Client, text: str) -> None:
    got = hf.feature_extraction(text)
    assert got.shape == (1, client.get("/info").json()["embedding_dim"])
    assert cosine(got[0].astype(np.float64), openai_vectors(client, [text])[0]) >= 0.9999


def test_feature_extraction_options_reach_the_server(hf: InferenceClient, client: httpx.Client) -> None:
    raw = hf.feature_extraction(TEXTS[0], normalize=False, truncate=True)[0]
    unit = openai_vectors(client, [TEXTS[0]])[0]
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3  # really unnormalised
    assert cosine(raw.astype(np.float64), unit) >= 0.9999
    query = hf.feature_extraction(TEXTS[0], prompt_name="query")[0]
    assert cosine(query.astype(np.float64), openai_vectors(client, ["query: " + TEXTS[0]])[0]) >= 0.9999


def test_sentence_similarity_equals_cosine_of_v1_embeddings(hf: InferenceClient, client: httpx.Client) -> None:
    scores = hf.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    vectors = openai_vectors(client, TEXTS)
    expected = [cosine(vectors[0], v) for v in vectors[1:]]
    assert np.allclose(scores, expected, atol=1e-4), (scores, expected)


def test_similarity_route_with_parameters(client: httpx.Client) -> None:
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:3]},
            "parameters": {"prompt_name": "passage", "truncate": None, "truncation_direction": "Left"}}
    scores = client.post("/similarity", json=body).json()
    assert tei_errors("SimilarityResponse", scores) == []
    vectors = openai_vectors(client, ["passage: " + t for t in TEXTS[:3]])
    assert np.allclose(scores, [cosine(vectors[0], v) for v in vectors[1:]], atol=1e-4)


# --- /info, routes, prompts, token ids ----------------------------------------------------------------------


def test_info_parses_as_tei_info(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert tei_errors("Info", info) == []
    assert info["model_dtype"] == "float32"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["auto_truncate"] is True
    assert info["prompts"] == TINY_PROMPTS
    assert info["max_client_batch_size"] == int(MAIN_SERVER_ENV["EMBED_MAX_INPUTS_PER_REQUEST"])
    assert info["served_model_name"] == info["model_id"] == "tiny-bert"
    assert info["graph_variant"] == "fp32"
    assert "limits" in info  # our own fields stay


@pytest.mark.parametrize("path", ["/", "/invocations"])
def test_root_and_invocations_are_embed(client: httpx.Client, path: str) -> None:
    body = {"inputs": TEXTS[:2], "normalize": True, "prompt_name": None, "truncate": None}
    got = client.post(path, json=body)
    assert got.status_code == 200
    assert tei_errors("EmbedResponse", got.json()) == []
    assert np.allclose(got.json(), client.post("/embed", json={"inputs": TEXTS[:2]}).json(), atol=1e-6)


def test_get_root_still_serves_the_explorer(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("route", ["/embed", "/embed_all", "/tokenize"])
def test_prompt_name_null_is_no_prompt(client: httpx.Client, route: str) -> None:
    assert client.post(route, json={"inputs": TEXTS[0], "prompt_name": None}).json() == \
        client.post(route, json={"inputs": TEXTS[0]}).json()


def test_known_prompt_name_prepends_the_prompt(client: httpx.Client) -> None:
    with_prompt = client.post("/embed", json={"inputs": [TEXTS[0]], "prompt_name": "query"}).json()
    by_hand = client.post("/embed", json={"inputs": ["query: " + TEXTS[0]]}).json()
    assert np.allclose(with_prompt, by_hand, atol=1e-6)
    tokens = client.post("/tokenize", json={"inputs": "hi", "prompt_name": "query"}).json()[0]
    words = [t["text"] for t in tokens if not t["special"]]
    assert words == ["query", ":", "hi"]
    assert tokens[-2]["start"] == len("query: ")  # offsets into the prompted text
    all_tokens = client.post("/embed_all", json={"inputs": "hi", "prompt_name": "query"}).json()[0]
    assert len(all_tokens) == len(tokens)


@pytest.mark.parametrize("route", ["/embed", "/embed_all", "/tokenize", "/similarity"])
def test_unknown_prompt_name_is_422_naming_the_prompts(client: httpx.Client, route: str) -> None:
    body: dict[str, Any] = {"inputs": "hello", "prompt_name": MARK}
    if route == "/similarity":
        body = {"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"prompt_name": MARK}}
    err = tei_error(client.post(route, json=body), 422, "Validation")
    assert "passage, query" in err["error"]


@pytest.mark.real_model
def test_prompt_name_on_a_model_without_prompts(start_server: Callable[..., ServerProcess],
                                                real_artifact_dir: Path) -> None:
    real = start_server(real_artifact_dir, **MAIN_SERVER_ENV)
    r = httpx.post(f"{real.base_url}/embed", json={"inputs": "hello", "prompt_name": "query"})
    assert "its prompts: none" in tei_error(r, 422, "Validation")["error"]
    info = httpx.get(f"{real.base_url}/info").json()
    assert "prompts" not in info
    assert tei_errors("Info", info) == []


def test_token_id_inputs_on_embed_and_embed_all(client: httpx.Client) -> None:
    ids = [[t["id"] for t in toks] for toks in client.post("/tokenize", json={"inputs": TEXTS[:2]}).json()]
    by_text = client.post("/embed", json={"inputs": TEXTS[:2]}).json()
    assert np.allclose(client.post("/embed", json={"inputs": ids}).json(), by_text, atol=1e-6)
    assert np.allclose(client.post("/embed", json={"inputs": ids[0]}).json(), by_text[:1], atol=1e-6)
    mixed = client.post("/embed", json={"inputs": [TEXTS[0], ids[1]]}).json()
    assert np.allclose(mixed, by_text, atol=1e-6)
    assert np.allclose(client.post("/embed_all", json={"inputs": [ids[1]]}).json(),
                       client.post("/embed_all", json={"inputs": [TEXTS[1]]}).json(), atol=1e-6)


@pytest.mark.parametrize("inputs", [[[101, 10**9, 102]], [101, -1], ["text", [2**40]]],
                         ids=["out-of-vocab", "negative", "overflow-in-mixed"])
def test_bad_token_ids_are_422(client: httpx.Client, inputs: list[Any]) -> None:
    tei_error(client.post("/embed", json={"inputs": inputs}), 422, "Validation")


def test_out_of_vocab_error_names_the_position_in_a_mixed_batch(client: httpx.Client) -> None:
    err = tei_error(client.post("/embed", json={"inputs": ["text", "more", [101, 10**9]]}), 422, "Validation")
    assert err["error"].startswith("input[2]")


def test_decode(client: httpx.Client) -> None:
    ids = [t["id"] for t in client.post("/tokenize", json={"inputs": "hello world"}).json()[0]]
    assert client.post("/decode", json={"ids": ids}).json() == ["hello world"]
    raw = client.post("/decode", json={"ids": [ids, ids[1:2]], "skip_special_tokens": False}).json()
    assert tei_errors("DecodeResponse", raw) == []
    assert raw[1] == "hello"
    assert raw[0].startswith("[CLS]")
    assert raw[0].endswith("[SEP]")
    tei_error(client.post("/decode", json={"ids": []}), 400, "Empty")
    tei_error(client.post("/decode", json={"ids": [[1, 10**9]]}), 422, "Validation")


def test_default_prompt_name_applies_like_sentence_transformers(
    start_server: Callable[..., ServerProcess], tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import shutil

    from export.pipeline import ExportOptions, run_export
    from tests.tiny_checkpoint import write_prompts

    ckpt = tmp_path_factory.mktemp("default-prompt") / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, ckpt)
    write_prompts(ckpt, TINY_PROMPTS, default_prompt_name="query")
    artifact = run_export(ExportOptions(model_dir=ckpt, out_dir=ckpt.parent / "artifact", model_name="tiny-bert",
                                        variants=False))
    srv = start_server(artifact, **MAIN_SERVER_ENV)
    with httpx.Client(base_url=srv.base_url, timeout=30) as c:
        assert c.get("/info").json()["default_prompt_name"] == "query"
        default = c.post("/embed", json={"inputs": [TEXTS[0]]}).json()
        explicit = c.post("/embed", json={"inputs": [TEXTS[0]], "prompt_name": "query"}).json()
        other = c.post("/embed", json={"inputs": [TEXTS[0]], "prompt_name": "passage"}).json()
        assert np.allclose(default, explicit, atol=1e-6)
        assert not np.allclose(default, other, atol=1e-3)
        assert np.allclose(openai_vectors(c, [TEXTS[0]]), default, atol=1e-5)  # /v1/embeddings applies it too
        words = [t["text"] for t in c.post("/tokenize", json={"inputs": "hi"}).json()[0] if not t["special"]]
        assert words == ["query", ":", "hi"]


# --- every TEI-route error status, in TEI's shape ------------------------------------------------------------

API_KEY = "tei-key-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {API_KEY}"}
HANG_S = 4.0
ERROR_ENV = {
    **MAIN_SERVER_ENV,
    "EMBED_API_KEY": API_KEY,
    "EMBED_MAX_BODY_BYTES": "20000",
    "EMBED_BODY_TIMEOUT_S": "1",
    "EMBED_MAX_QUEUE_SIZE": "4",
    "EMBED_QUEUE_TIMEOUT_S": "1.5",
    "EMBED_WATCHDOG_TIMEOUT_S": "30",
    "EMBED_FAULT_INJECTION": "true",
    "EMBED_FAULT_DURATION_S": str(HANG_S),
}


def queue_depth(srv: ServerProcess) -> float:
    text = httpx.get(f"{srv.base_url}/metrics").text
    match = re.search(r'^embed_queue_depth\{model="[^"]+"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def strict(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**ERROR_ENV)


@pytest.fixture(scope="module")
def sc(strict: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict.base_url, timeout=30, headers=AUTH) as c:
        yield c


@pytest.mark.parametrize("route", ["/", "/embed", "/embed_all", "/tokenize", "/similarity", "/decode"])
def test_400_bad_json_and_empty(sc: httpx.Client, route: str) -> None:
    tei_error(sc.post(route, content=b'{"inputs": ["' + MARK.encode(), headers={"content-type": "application/json"}),
              400, "Validation")
    empty = {"/decode": {"ids": []}, "/similarity": {"inputs": {"source_sentence": "a", "sentences": []}}}
    tei_error(sc.post(route, json=empty.get(route, {"inputs": []})), 400, "Empty")


def test_400_whitespace_only_is_empty(sc: httpx.Client) -> None:
    tei_error(sc.post("/embed", json={"inputs": ["fine", " \t\u3000"]}), 400, "Empty")
    tei_error(sc.post("/embed", json={"inputs": ["fine", "  "], "prompt_name": "query"}), 400, "Empty")


def test_401_without_the_key(strict: ServerProcess) -> None:
    r = httpx.post(f"{strict.base_url}/embed", json={"inputs": "a"})
    tei_error(r, 401, "Validation")
    assert r.headers["www-authenticate"] == "Bearer"
    body = httpx.post(f"{strict.base_url}/v1/embeddings", json={"input": "a"}).json()
    assert body["error"]["code"] == "invalid_api_key"  # OpenAI's shape stays on /v1/*


@pytest.mark.parametrize("route", ["/embed", "/invocations", "/decode", "/similarity"])
def test_405_wrong_method(sc: httpx.Client, route: str) -> None:
    r = sc.get(route)
    tei_error(r, 405, "Validation")
    assert "POST" in r.headers["allow"]


def test_408_body_too_slow(strict: ServerProcess) -> None:
    head = (b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 40\r\n"
            b"authorization: " + AUTH["authorization"].encode() + b"\r\n\r\n{\"inputs\": ")
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert status == 408
    assert body["error_type"] == "Validation"
    assert tei_errors("ErrorResponse", body) == []


def test_413_body_and_inputs_over_the_limit(sc: httpx.Client) -> None:
    tei_error(sc.post("/embed", json={"inputs": MARK + "a" * 30_000}), 413, "Validation")
    tei_error(sc.post("/embed", json={"inputs": ["a"] * 100}), 413, "Validation")


def test_415_not_json(sc: httpx.Client) -> None:
    tei_error(sc.post("/embed", content=b"inputs=a", headers={"content-type": "text/plain"}), 415, "Validation")


@pytest.mark.parametrize("body", [{"inputs": 42}, {"inputs": "a", "foo": MARK}, {"inputs": "a", "normalize": "yes"},
                                  {"inputs": "a", "truncation_direction": "Up"}],
                         ids=["int", "unknown-field", "bad-option", "bad-direction"])
def test_422_validation(sc: httpx.Client, body: dict[str, Any]) -> None:
    tei_error(sc.post("/embed", json=body), 422, "Validation")


def test_422_lone_surrogate_is_a_tokenizer_error(sc: httpx.Client) -> None:
    raw = ('{"inputs": ["ok", "' + MARK + '\\ud800"]}').encode()
    tei_error(sc.post("/embed", content=raw, headers={"content-type": "application/json"}), 422, "Tokenizer")


def test_424_failed_inference_is_backend(sc: httpx.Client) -> None:
    err = tei_error(sc.post("/embed", json={"inputs": f"text {FAULT_MARKERS['raise']}"}), 424, "Backend")
    assert FAULT_MARKERS["raise"] not in err["error"]
    assert sc.post("/embed", json={"inputs": "next one is fine"}).status_code == 200


def test_zz_429_overloaded_and_503_unhealthy(strict: ServerProcess, sc: httpx.Client) -> None:
    """A hung pass holds the 4-slot queue: a newcomer is refused at the door (429 Overloaded), the one waiting
    behind the hang passes its queue deadline (503 Unhealthy). Last in the module: it stalls the server."""
    with ThreadPoolExecutor(2) as pool:
        hung = pool.submit(sc.post, "/embed", json={"inputs": f"stall {FAULT_MARKERS['hang']}"})
        time.sleep(0.5)
        waiting = pool.submit(sc.post, "/embed", json={"inputs": ["one", "two", "three"]})
        deadline = time.monotonic() + 1.0  # the waiter's 3 inputs fill the 4-slot queue; its deadline is 1.5 s
        while queue_depth(strict) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        tei_error(sc.post("/embed", json={"inputs": "refused"}), 429, "Overloaded")
        tei_error(sc.post("/", json={"inputs": "refused"}), 429, "Overloaded")
        tei_error(waiting.result(timeout=10), 503, "Unhealthy")
        assert hung.result(timeout=10).status_code == 200
    assert sc.post("/embed", json={"inputs": "after"}).status_code == 200
