"""EMBED_ATTENTION_GRAPH over HTTP: lazy (default) builds the attention graph on the first attention request and
/info says so; off answers attention requests 422 `attention_unavailable` while embeddings keep working."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_http_api import assert_error

ATTENTION_BODY = {"input": "She said the cat was tired.", "attention": {"layers": [0], "aggregate": "mean"}}


def test_lazy_attention_graph_is_built_on_first_use(server: ServerProcess, client: httpx.Client) -> None:
    before = client.get("/info").json()
    assert before["attention_available"] is True
    assert before["attention_graph"] in ("lazy", "loaded")  # other tests in this module may have used it
    first = client.post("/v1/encode", json=ATTENTION_BODY)
    assert first.status_code == 200, first.text
    assert client.get("/info").json()["attention_graph"] == "loaded"
    again = client.post("/v1/encode", json=ATTENTION_BODY)
    assert again.json()["data"][0]["attention"] == first.json()["data"][0]["attention"]
    if before["attention_graph"] == "lazy":
        assert "graph 'attention' built on first use" in server.log()


def test_attention_graph_off(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(EMBED_ATTENTION_GRAPH="off", EMBED_INTRA_OP_THREADS="1")
    with httpx.Client(base_url=srv.base_url, timeout=30) as http:
        assert http.get("/info").json()["attention_available"] is False
        assert_error(http.post("/v1/encode", json=ATTENTION_BODY), 422, "attention_unavailable")
        assert http.post("/v1/encode", json={"input": "still embeds"}).status_code == 200
