"""bench/wrk_client.py: wrk's closed loop against a real server counts what closed_loop would.

The pure parts (undoing wrk's coordinated-omission correction, sharing out the quota, Lua literals) are checked
on their own; the loop itself runs wrk against the real MiniLM, with the token counts made client side as the
benchmarks make them (specials included, truncated at the model's limit), so the same test also checks that
the server's `usage.prompt_tokens` is that count.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.closed_loop import Request
from bench.corpus import sentences
from bench.wrk_client import (
    ensure_wrk,
    lua_string,
    thread_quotas,
    uncorrect_latency,
    wrk_correct,
    wrk_loop,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(300)

ROUTE = "/v1/embeddings"


@pytest.mark.parametrize("seed", range(6))
def test_uncorrect_latency_inverts_wrks_correction(seed: int) -> None:
    rng = random.Random(seed)
    connections = rng.choice([1, 4, 32])
    real: dict[int, int] = {}
    for _ in range(rng.randint(1, 400)):
        us = int(rng.lognormvariate(math.log(20_000), rng.choice([0.2, 0.8, 1.5])))
        real[us] = real.get(us, 0) + 1
    requests = sum(real.values())
    duration_us = int(sum(real) / connections * rng.uniform(0.2, 1.5)) + 1
    per_connection = requests // connections
    expected = duration_us // per_connection if per_connection else 0
    corrected = wrk_correct(real, expected) if per_connection else dict(real)
    got = uncorrect_latency(corrected, duration_us=duration_us, requests=requests, connections=connections)
    assert got == dict(sorted(real.items()))


def test_correction_adds_samples_below_the_tail() -> None:
    corrected = wrk_correct({10: 3, 95: 1}, 20)
    assert corrected == {10: 3, 95: 1, 75: 1, 55: 1, 35: 1}
    assert uncorrect_latency(corrected, duration_us=200, requests=10, connections=1) == {10: 3, 95: 1}


def test_a_histogram_wrk_did_not_correct_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        uncorrect_latency({95: 2, 75: 1}, duration_us=200, requests=10, connections=1)


def test_thread_quotas_share_every_request() -> None:
    assert thread_quotas(10, 3) == [4, 3, 3]
    assert thread_quotas(80, 1) == [80]


def test_lua_string_escapes_everything_unusual() -> None:
    assert lua_string('a"b\\c') == '"a\\034b\\092c"'
    assert lua_string("a/b\n") == '"a/b\\010"'
    assert lua_string("é") == '"\\195\\169"'


@pytest.fixture(scope="module")
def wrk() -> str:
    try:
        return ensure_wrk()
    except RuntimeError as exc:
        pytest.skip(f"wrk unavailable: {exc}")


@pytest.fixture(scope="module")
def server(wrk: str, real_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(real_artifact_dir, tmp_path_factory.mktemp("wrk-server") / "server.log",
                         EMBED_INTRA_OP_THREADS="1")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop_and_check()


@pytest.fixture(scope="module")
def prepared(real_artifact_dir: Path) -> tuple[str, list[Request]]:
    """24 bodies of 1-3 mixed corpus sentences (one past the 256-token limit), counted as compare.py counts."""
    from tokenizers import Tokenizer

    manifest = json.loads((real_artifact_dir / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(real_artifact_dir / "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_seq_length"])
    model = manifest["model_name"]
    corpus = sentences(72, seed=7, profile="mixed")
    corpus[5] = "retrieval " * 400  # truncated: the client and the server must both count 256
    rng = random.Random(3)
    requests, at = [], 0
    while len(requests) < 24:
        texts = corpus[at:at + rng.randint(1, 3)]
        at += len(texts)
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
        requests.append(Request({"input": texts, "model": model, "encoding_format": "float"}, len(texts), tokens))
    return model, requests


def totals(requests: list[Request], sent: int) -> tuple[int, int, int]:
    """(requests, sentences, tokens) of the 200s among requests[i % len] for i < sent, given which are valid."""
    chosen = [requests[i % len(requests)] for i in range(sent)]
    ok = [r for r in chosen if r.sentences]
    return len(ok), sum(r.sentences for r in ok), sum(r.tokens for r in ok)


def test_every_reply_200_counts_what_was_sent(server: ServerProcess, prepared: tuple[str, list[Request]]) -> None:
    _, requests = prepared
    result = wrk_loop(server.base_url, ROUTE, requests, concurrency=4, max_requests=80, max_seconds=60)
    ok, want_sentences, want_tokens = totals(requests, 80)
    assert (result["requests"], result["ok"]) == (80, ok) == (80, 80)
    assert result["statuses"] == {200: 80}
    assert result["non_200"] == {}
    assert (result["sentences"], result["tokens"]) == (want_sentences, want_tokens)
    assert result["counts_from"] == "requests"
    # What the replies said (usage.prompt_tokens, one "index" per item) is the client-side count, truncation too.
    assert result["server_counts"] == {"sentences": want_sentences, "tokens": want_tokens}
    assert result["latency_includes_non_200"] is False
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["tokens_per_s"] == pytest.approx(want_tokens / result["seconds"])
    assert result["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert result["client"] == "wrk 4.1.0 (C, 1 thread)"
    assert result["client_cpu_seconds"] > 0


def test_refused_bodies_are_counted_by_status(server: ServerProcess, prepared: tuple[str, list[Request]]) -> None:
    model, valid = prepared
    empty = Request({"input": [], "model": model}, 0, 0)  # 422
    unknown = Request({"input": ["a"], "model": "no-such-model"}, 0, 0)  # 404
    requests = [*valid[:5], empty, *valid[5:9], unknown]
    result = wrk_loop(server.base_url, ROUTE, requests, concurrency=4, max_requests=80, max_seconds=60)
    ok, want_sentences, want_tokens = totals(requests, 80)
    assert result["requests"] == 80
    assert result["ok"] == ok
    assert result["non_200"] == {404: 7, 422: 7}
    assert result["statuses"] == {200: ok, 404: 7, 422: 7}
    assert (result["sentences"], result["tokens"]) == (want_sentences, want_tokens)
    assert result["counts_from"] == "replies"
    assert result["latency_includes_non_200"] is True


def test_max_seconds_bounds_the_run(server: ServerProcess, prepared: tuple[str, list[Request]]) -> None:
    _, requests = prepared
    result = wrk_loop(server.base_url, ROUTE, requests, concurrency=4, max_requests=1_000_000, max_seconds=1,
                      threads=2)
    assert 1.0 <= result["seconds"] < 2.5
    assert result["requests"] == result["ok"] > 0
    assert result["counts_from"] == "replies"
    assert result["sentences"] >= result["ok"]
    assert result["tokens"] > result["sentences"]
    assert result["client"] == "wrk 4.1.0 (C, 2 threads)"


def test_bad_arguments_are_refused() -> None:
    body = [Request({"input": ["a"]}, 1, 3)]
    with pytest.raises(ValueError, match="multiple"):
        wrk_loop("http://127.0.0.1:1", ROUTE, body, concurrency=3, max_requests=9, max_seconds=1, threads=2)
    with pytest.raises(ValueError, match="no requests"):
        wrk_loop("http://127.0.0.1:1", ROUTE, [], concurrency=1, max_requests=1, max_seconds=1)
