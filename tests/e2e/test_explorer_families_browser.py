"""The explorer on other families in real Chromium: SentencePiece and byte-level tokens read as text, and the
page says when a model is causal or has local-window layers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_explorer_browser import attr_json, run
from tests.families.builders import build_checkpoint
from tests.server_process import ServerProcess

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

TEXT = "The cat sat on the mat, naïve café 我们"


@pytest.fixture(scope="module", params=["xlm-roberta", "qwen3", "modernbert"])
def family_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[str, ServerProcess]]:
    from export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp(f"explorer-{request.param}")
    checkpoint = build_checkpoint(request.param, root / "checkpoint")
    artifact = run_export(ExportOptions(model_dir=checkpoint, out_dir=root / "artifact", model_name=request.param,
                                        variants=False))
    server = ServerProcess(artifact, root / "server.log", EMBED_ATTENTION_BUDGET="10000000",
                           EMBED_INTRA_OP_THREADS="1").wait_ready()
    yield request.param, server
    server.stop_and_check()


@pytest.fixture(scope="module")
def page(family_server: tuple[str, ServerProcess]) -> Iterator[object]:
    _, server = family_server
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.base_url + "/")
        page.wait_for_selector("#run")
        yield page
        chromium.close()
        assert not errors, errors


def test_token_labels_are_text_and_the_pattern_is_stated(family_server: tuple[str, ServerProcess],
                                                         page: object) -> None:
    family, server = family_server
    assert run(page, TEXT) == "ready"  # type: ignore[arg-type]
    labels = attr_json(page, "#heatmap", "data-tokens")  # type: ignore[arg-type]
    tokens = httpx.post(f"{server.base_url}/v1/encode", json={"input": TEXT}).json()["data"][0]["tokens"]
    assert len(labels) == len(tokens)
    joined = "".join(labels)
    assert "\u2581" not in joined
    assert "\u0120" not in joined  # no SentencePiece / byte-level markers shown
    assert "cat" in labels or "cat" in joined
    if family == "qwen3":
        assert "我们" in joined or "我" in joined  # byte-level pieces decoded back to the characters
    starts = page.locator("#tokens .chip.word-start").count()  # type: ignore[attr-defined]
    assert starts >= 5  # "cat", "sat", "on", "the", "mat" begin words
    info = page.text_content("#model-info") or ""  # type: ignore[attr-defined]
    assert ("causal" in info) == (family == "qwen3")
    assert ("local window" in info) == (family == "modernbert")
