"""The walk-through, model view and token-pair similarity of the explorer page in real headless Chromium, against
real server processes (the tiny artifact; the tiny artifact beside a Qwen3-shaped one; the real MiniLM for the
screenshots).

The page mirrors what it draws into data attributes (listed at the top of service/static/walkthrough.js, pair.js
and modelview.js); every check compares those with what POST /v1/explain, /v1/similarity/explain and
/v1/encode return over httpx for the same input and selection.

Screenshots: `test_screenshots_on_the_real_model` writes test-artifacts/explain-walkthrough.png and
explain-similarity.png on every run; regenerate the committed copies in docs/ with

    UPDATE_DOC_SCREENSHOTS=1 .venv/bin/python -m pytest tests/e2e/test_explain_browser.py -k screenshots

(the real all-MiniLM-L6-v2 artifact, Chromium at 1280 px wide, with fonts-noto-cjk installed so the Chinese
example's label draws).
Skipped cleanly where /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import CHROMIUM, MAIN_SERVER_ENV, REPO, ServerProcess
from tests.e2e.test_explorer_browser import STATE_TIMEOUT_MS, attr_json, run

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

TOLERANCE = 1e-5
EXPLAIN_MAX_TOKENS = 24  # small, so an input the explorer takes can still be too long for the walk-through
LOVE = "I love ai"
PRONOUN = "Xiaoming likes her because Xiaohua helped him, not Xiaoli."
PRONOUN_ZH = "小明喜欢她，因为小花帮助了他，而不是小丽。"
SERIES = ("raw_scores", "scaled_scores", "weights", "value_norms", "contributions")
DOCS = REPO / "docs"
SCREENSHOTS = REPO / "test-artifacts"


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dims(tiny_artifact_dir: Path) -> tuple[int, int]:
    config = json.loads((tiny_artifact_dir / "manifest.json").read_text())["config"]
    return int(config["num_layers"]), int(config["num_heads"])


@pytest.fixture(scope="module")
def explain_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(**{**MAIN_SERVER_ENV, "EMBED_ATTENTION_BUDGET": "10000000",
                           "EMBED_EXPLAIN_MAX_TOKENS": str(EXPLAIN_MAX_TOKENS)})


@pytest.fixture(scope="module")
def api(explain_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=explain_server.base_url, timeout=60.0) as c:
        yield c


@pytest.fixture(scope="module")
def two_models(tiny_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """tiny-bert (WordPiece: most CJK characters unknown) and a Qwen3-shaped model (byte-level: none unknown;
    causal, last-token pooling) in one process."""
    from export.pipeline import ExportOptions, run_export
    from tests.families.builders import build_checkpoint

    root = tmp_path_factory.mktemp("explain-two-models")
    qwen3 = run_export(ExportOptions(model_dir=build_checkpoint("qwen3", root / "checkpoint"), out_dir=root / "qwen3",
                                     model_name="qwen3", variants=False))
    server = ServerProcess(tiny_artifact_dir, root / "server.log",
                           EMBED_MODELS=f"tiny-bert={tiny_artifact_dir},qwen3={qwen3}",
                           EMBED_ATTENTION_BUDGET="10000000", EMBED_INTRA_OP_THREADS="1").wait_ready()
    yield server
    server.stop_and_check()


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open the page of `server` (with an optional query string); on teardown fail the test if the page threw or
    logged a console error other than the 4xx replies it reports in its banner on purpose."""
    pages: list[tuple[Page, list[str]]] = []

    def _open(server: ServerProcess, query: dict[str, Any] | None = None, width: int = 1280) -> Page:
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.goto(server.base_url + "/" + (f"?{urlencode(query)}" if query else ""))
        page.wait_for_selector("#run")
        pages.append((page, problems))
        return page

    yield _open
    expected = "console: Failed to load resource: the server responded with a status of 4"
    problems = [p for _, probs in pages for p in probs if not p.startswith(expected)]
    for page, _ in pages:
        page.close()
    assert not problems, problems


# --- helpers --------------------------------------------------------------------------------------------------


def settled(page: Page, attribute: str) -> str:
    """Wait until body[data-<attribute>] is ready or error (neither idle, before the first run, nor loading)."""
    page.wait_for_function(f"['ready', 'error'].includes(document.body.dataset.{attribute})",
                           timeout=STATE_TIMEOUT_MS)
    return str(page.evaluate(f"document.body.dataset.{attribute}"))


def walkthrough_shows(page: Page, layer: int, head: int, token: int) -> None:
    page.wait_for_selector(f"#walkthrough[data-state='ready'][data-layer='{layer}'][data-head='{head}']"
                           f"[data-token='{token}']", state="attached", timeout=STATE_TIMEOUT_MS)


def post(api: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == status, response.text
    return dict(response.json())


def close(shown: Any, expected: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(shown, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               atol=TOLERANCE, rtol=0, err_msg=what)


def check_walkthrough(page: Page, reply: dict[str, Any]) -> None:
    """Every number the walk-through draws against the API's reply for the same input and selection."""
    head = reply["head"]
    for series in SERIES:
        close(attr_json(page, f".bar-col[data-series='{series}']", "data-values"), head[series], series)
    assert attr_json(page, ".bar-col[data-series='visible']", "data-values") == head["visible"]
    masked_rows = head["visible"].count(False)
    assert page.locator(".bar-col[data-series='weights'] .bar-cell.masked").count() == masked_rows
    for key in ("K", "V"):
        close(attr_json(page, f".strip-block[data-vector='{key}']", "data-values"), head[key], key)
    vectors = {"q": head["q"], "weighted_sum": head["weighted_sum"], "head_output": head["output"],
               "token_embedding": reply["input_vector"]["token_embedding"], "sum": reply["input_vector"]["sum"],
               "input_output": reply["input_vector"]["output"], "attention_output": reply["layer"]["attention_output"],
               "residual": reply["layer"]["residual"], "ffn_output": reply["layer"]["ffn_output"],
               "layer_output": reply["layer"]["output"]}
    for key, values in vectors.items():
        close(attr_json(page, f".strip[data-vector='{key}']", "data-values"), values, key)
    close(attr_json(page, "#wt-head-norms", "data-values"), reply["layer"]["head_output_norms"], "head norms")
    trajectory = reply["trajectory"]
    close(attr_json(page, "#wt-trajectory", "data-values"), [t["cosine_to_input"] for t in trajectory], "trajectory")
    for t in trajectory:
        nearest = attr_json(page, f"#wt-trajectory tr[data-layer='{t['layer']}']", "data-nearest")
        assert [k for k, _ in nearest] == [n["token"] for n in t["nearest"]]
    close(attr_json(page, "#wt-rollout-rows", "data-values"), reply["rollout"]["rows"], "rollout rows")
    close(attr_json(page, "#wt-rollout-matrix", "data-values"), reply["rollout"]["matrix"], "rollout matrix")
    assert attr_json(page, "#wt-scores", "data-weight-order") == head["weight_order"]
    assert attr_json(page, "#wt-scores", "data-contribution-order") == head["contribution_order"]
    chips = page.locator("#wt-tokens .chip")
    assert chips.count() == len(reply["tokens"])
    assert page.locator("#wt-tokens .chip.unknown").count() == sum(t["unknown"] for t in reply["tokens"])
    chip = page.get_attribute(f"#wt-tokens .chip[data-index='{reply['selection']['token']}']", "class") or ""
    assert "selected" in chip.split()


def token_index(tokens: list[dict[str, Any]], text: str) -> int:
    return next(i for i, t in enumerate(tokens) if t["text"] == text)


# --- tests on the tiny model ------------------------------------------------------------------------------------


def test_the_page_modules_are_served(api: httpx.Client) -> None:
    page = api.get("/").text
    for element_id in ("walkthrough", "wt-layer", "wt-head", "wt-token", "model-view", "pair-matrix", "model"):
        assert f'id="{element_id}"' in page, element_id
    for name in ("walkthrough.js", "pair.js", "modelview.js", "charts.js", "tokens.js", "banner.js"):
        asset = api.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert "javascript" in asset.headers["content-type"], (name, asset.headers["content-type"])


def test_walkthrough_draws_the_api_numbers_of_the_chosen_layer_head_and_token(
    open_page: Callable[..., Page], explain_server: ServerProcess, api: httpx.Client, dims: tuple[int, int]
) -> None:
    layers, heads = dims
    page = open_page(explain_server)
    assert run(page, PRONOUN) == "ready"
    assert settled(page, "walkthrough") == "ready"
    tokens = post(api, "/v1/explain", {"input": PRONOUN})["tokens"]
    default = int(page.get_attribute("#walkthrough", "data-token") or -1)
    assert tokens[default]["text"] == "her"  # the explorer's focus (the first pronoun) is walked through first

    layer, head = layers - 1, heads - 1  # not the defaults: the page must follow its selects
    page.select_option("#wt-layer", str(layer))
    page.select_option("#wt-head", str(head))
    query = token_index(tokens, "helped")
    page.click(f"#tokens .chip[data-index='{query}']")  # the explorer's token chips drive the walk-through
    walkthrough_shows(page, layer, head, query)
    reply = post(api, "/v1/explain", {"input": PRONOUN, "layer": layer, "head": head, "token": query})
    check_walkthrough(page, reply)

    # The softmax bars are the /v1/encode attention row of that layer, head and query token...
    att = post(api, "/v1/encode", {"input": [PRONOUN], "attention": {"layers": [layer], "heads": [head],
                                                                      "format": "float"}})["data"][0]["attention"]
    row = np.asarray(att["data"], dtype=np.float64).reshape(att["shape"])[0, 0, query]
    close(attr_json(page, ".bar-col[data-series='weights']", "data-values"), row, "weights vs /v1/encode")
    # ...and the explorer above shows the same map and row.
    assert page.get_attribute("#heatmap", "data-layer") == str(layer)
    assert page.get_attribute("#heatmap", "data-head") == str(head)
    assert page.get_attribute("#token-focus", "data-token") == str(query)
    close(attr_json(page, "#heatmap", "data-values")[query], row, "heatmap row")

    # The walk-through's own token select, and a head bar of step 5, select too.
    other = token_index(tokens, "him")
    page.select_option("#wt-token", str(other))
    walkthrough_shows(page, layer, head, other)
    page.click("#wt-head-norms .bar-row[data-head='0']")
    walkthrough_shows(page, layer, 0, other)
    check_walkthrough(page, post(api, "/v1/explain", {"input": PRONOUN, "layer": layer, "head": 0, "token": other}))
    assert page.evaluate("document.body.dataset.state") == "ready"


def test_model_view_has_every_layer_and_head_and_selects_one(
    open_page: Callable[..., Page], explain_server: ServerProcess, api: httpx.Client, dims: tuple[int, int]
) -> None:
    layers, heads = dims
    page = open_page(explain_server)
    assert run(page, LOVE) == "ready"
    assert settled(page, "walkthrough") == "ready"
    assert page.locator("#model-view .mv-tile").count() == layers * heads
    assert page.get_attribute("#model-view", "data-layers") == str(layers)
    assert page.get_attribute("#model-view", "data-heads") == str(heads)
    query = int(page.get_attribute("#walkthrough", "data-token") or -1)
    page.click(f"#model-view .mv-tile[data-layer='{layers - 1}'][data-head='1']")
    walkthrough_shows(page, layers - 1, 1, query)
    assert page.get_attribute("#heatmap", "data-layer") == str(layers - 1)
    assert page.get_attribute("#heatmap", "data-head") == "1"
    assert "selected" in (page.get_attribute(f"#model-view .mv-tile[data-layer='{layers - 1}'][data-head='1']",
                                             "class") or "")
    check_walkthrough(page, post(api, "/v1/explain", {"input": LOVE, "layer": layers - 1, "head": 1,
                                                      "token": query}))


def test_similarity_matrix_is_the_api_contributions(
    open_page: Callable[..., Page], explain_server: ServerProcess, api: httpx.Client
) -> None:
    page = open_page(explain_server)
    assert run(page, f"{LOVE}\n{PRONOUN}") == "ready"
    assert settled(page, "pair") == "ready"
    reply = post(api, "/v1/similarity/explain", {"input": [LOVE, PRONOUN]})
    assert reply["decomposable"] is True  # the tiny model mean-pools
    matrix = "#pair-matrix"
    assert page.get_attribute(matrix, "data-kind") == "contributions"
    shown = np.asarray(attr_json(page, matrix, "data-values"), dtype=np.float64)
    assert shown.shape == (len(reply["tokens"][0]), len(reply["tokens"][1]))
    close(shown, reply["contributions"], "contributions")
    close(float(page.get_attribute(matrix, "data-cosine") or "nan"), reply["cosine"], "cosine")
    close(float(page.get_attribute(matrix, "data-sum") or "nan"), reply["sum"], "sum")
    close(shown.sum(), reply["cosine"], "the drawn pairs add up to the cosine")
    close(attr_json(page, matrix, "data-row-sums"), reply["row_sums"], "row sums")
    close(attr_json(page, matrix, "data-column-sums"), reply["column_sums"], "column sums")
    assert len(attr_json(page, matrix, "data-rows")) == len(reply["tokens"][0])
    summary = page.inner_text("#pair-body")
    assert f"{reply['cosine']:.4f}" in summary
    assert f"{reply['sum']:.4f}" in summary

    page.select_option("#pair-kind", "token_cosines")
    assert page.get_attribute(matrix, "data-kind") == "token_cosines"
    close(attr_json(page, matrix, "data-values"), reply["token_cosines"], "token cosines")

    # Another pair of the sentences: B = the first sentence again.
    page.select_option("#pair-b", "0")
    page.wait_for_selector("#pair-explain[data-state='ready'][data-b='0']", state="attached",
                           timeout=STATE_TIMEOUT_MS)
    again = post(api, "/v1/similarity/explain", {"input": [LOVE, LOVE]})
    close(attr_json(page, matrix, "data-values"), again["token_cosines"], "token cosines of A with itself")


def test_api_422s_appear_in_the_banner(
    open_page: Callable[..., Page], explain_server: ServerProcess, api: httpx.Client, dims: tuple[int, int]
) -> None:
    layers, _ = dims
    # An out-of-range selection (from the page URL: the selects only offer valid ones) gets the API's message;
    # a valid one afterwards clears it.
    for field, value, select, valid in [("layer", layers + 3, "#wt-layer", "0"), ("token", 99, "#wt-token", "2")]:
        expected = post(api, "/v1/explain", {"input": LOVE, field: value}, status=422)["error"]
        assert expected["param"] == field
        page = open_page(explain_server, {"text": LOVE, field: value})
        assert settled(page, "state") == "ready"  # the explorer itself is fine
        assert settled(page, "walkthrough") == "error"
        assert page.locator("#banner").is_visible()
        assert expected["message"] in page.inner_text("#banner")
        page.select_option(select, valid)
        assert settled(page, "walkthrough") == "ready"
        assert page.get_attribute("#walkthrough", f"data-{field}") == valid
        assert not page.locator("#banner").is_visible()

    # An input the explorer takes but the walk-through's token limit does not.
    too_long = " ".join(["word"] * (EXPLAIN_MAX_TOKENS + 4))
    expected = post(api, "/v1/explain", {"input": too_long}, status=422)["error"]
    assert expected["code"] == "explain_budget_exceeded"
    assert run(page, too_long) == "ready"
    assert settled(page, "walkthrough") == "error"
    assert expected["message"] in page.inner_text("#banner")
    assert run(page, LOVE) == "ready"
    assert settled(page, "walkthrough") == "ready"
    assert not page.locator("#banner").is_visible()


def test_examples_and_cjk_fonts(open_page: Callable[..., Page], explain_server: ServerProcess) -> None:
    page = open_page(explain_server)
    examples = {b.get_attribute("data-example"): b.inner_text() for b in page.locator("#examples .example").all()}
    assert {"love", "pronoun", "pronoun-zh", "similar"} <= set(examples)
    page.click("#examples [data-example='pronoun-zh']")
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=STATE_TIMEOUT_MS)
    assert page.input_value("#input").splitlines()[0] == PRONOUN_ZH
    page.click("#examples [data-example='love']")
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=STATE_TIMEOUT_MS)
    assert page.input_value("#input").splitlines() == [LOVE, PRONOUN]
    body_font = page.evaluate("getComputedStyle(document.body).fontFamily")
    chip_font = page.evaluate("getComputedStyle(document.querySelector('#tokens .chip')).fontFamily")
    for font in ("Noto Sans CJK SC", "Noto Sans SC", "PingFang SC", "Microsoft YaHei", "Source Han Sans SC"):
        assert font in body_font, (font, body_font)
        assert font in chip_font, (font, chip_font)


@pytest.mark.parametrize("width", [1280, 420])
def test_layout_fits_the_window(open_page: Callable[..., Page], explain_server: ServerProcess, width: int) -> None:
    page = open_page(explain_server, width=width)
    assert run(page, f"{LOVE}\n{PRONOUN}") == "ready"
    assert settled(page, "walkthrough") == "ready"
    assert settled(page, "pair") == "ready"
    scroll_width, inner_width = page.evaluate("[document.body.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width + 1
    for selector in ("#walkthrough", "#model-view", "#pair-explain"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["width"] > 0, selector
        assert box["x"] >= 0, (selector, box)
        assert box["x"] + box["width"] <= inner_width + 1, (selector, box)


# --- two models: the selector, every request naming its model, the vocabulary notice -----------------------------


def test_model_selector_and_vocabulary_coverage(open_page: Callable[..., Page], two_models: ServerProcess) -> None:
    with httpx.Client(base_url=two_models.base_url, timeout=60.0) as api:
        page = open_page(two_models, {"text": PRONOUN_ZH})
        assert settled(page, "state") == "ready"
        assert settled(page, "walkthrough") == "ready"
        assert page.locator("#model-field").is_visible()
        assert page.locator("#model option").all_inner_texts() == ["tiny-bert", "qwen3"]
        assert page.get_attribute("body", "data-model") == "tiny-bert"

        token = int(page.get_attribute("#walkthrough", "data-token") or 0)
        reply = post(api, "/v1/explain", {"input": PRONOUN_ZH, "model": "tiny-bert", "token": token})
        vocabulary = reply["vocabulary"]
        assert vocabulary["unknown_share"] > 0
        notice = page.locator("#vocab-notice")
        assert notice.is_visible()
        close(float(notice.get_attribute("data-unknown-share") or "nan"), vocabulary["unknown_share"], "share")
        assert notice.get_attribute("data-better-model") == "qwen3"
        assert f"{100 * vocabulary['unknown_share']:.0f}%" in notice.inner_text()
        unknown = [i for i, t in enumerate(reply["tokens"]) if t["unknown"]]
        shown = [int(c.get_attribute("data-index") or -1) for c in page.locator("#wt-tokens .chip.unknown").all()]
        assert shown == unknown
        assert page.locator("#tokens .chip.unknown").count() == len(unknown)  # the explorer's chips too
        check_walkthrough(page, reply)

        # Switching to the model the notice names: every request now carries it.
        notice.locator("button").click()
        page.wait_for_selector("#walkthrough[data-state='ready'][data-model='qwen3']", state="attached",
                               timeout=STATE_TIMEOUT_MS)
        assert page.get_attribute("body", "data-model") == "qwen3"
        assert page.input_value("#model") == "qwen3"
        assert not page.locator("#vocab-notice").is_visible()
        layer, head = 1, 1
        page.select_option("#wt-layer", str(layer))
        page.select_option("#wt-head", str(head))
        tokens = post(api, "/v1/explain", {"input": PRONOUN_ZH, "model": "qwen3"})["tokens"]
        query = len(tokens) // 2
        page.select_option("#wt-token", str(query))
        walkthrough_shows(page, layer, head, query)
        reply = post(api, "/v1/explain", {"input": PRONOUN_ZH, "model": "qwen3", "layer": layer, "head": head,
                                          "token": query})
        assert not all(reply["head"]["visible"])  # causal: the later keys are masked, and drawn so
        assert page.locator(".mask-cell.masked").count() == reply["head"]["visible"].count(False)
        check_walkthrough(page, reply)
        att = post(api, "/v1/encode", {"input": [PRONOUN_ZH], "model": "qwen3", "attention": {
            "layers": [layer], "heads": [head], "format": "float"}})["data"][0]["attention"]
        row = np.asarray(att["data"], dtype=np.float64).reshape(att["shape"])[0, 0, query]
        close(attr_json(page, ".bar-col[data-series='weights']", "data-values"), row, "weights vs /v1/encode")

        # A last-token pooling is not a sum over token pairs: the page says so and shows the token cosines.
        assert run(page, f"{LOVE}\n{PRONOUN}") == "ready"
        assert settled(page, "pair") == "ready"
        pair = post(api, "/v1/similarity/explain", {"input": [LOVE, PRONOUN], "model": "qwen3"})
        assert pair["decomposable"] is False
        assert page.get_attribute("#pair-matrix", "data-decomposable") == "false"
        assert page.get_attribute("#pair-matrix", "data-kind") == "token_cosines"
        close(attr_json(page, "#pair-matrix", "data-values"), pair["token_cosines"], "token cosines")
        assert pair["note"] in page.inner_text("#pair-body")


# --- screenshots on the real model ------------------------------------------------------------------------------


@pytest.mark.real_model
def test_screenshots_on_the_real_model(open_page: Callable[..., Page], real_artifact_dir: Path,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pronoun example on all-MiniLM-L6-v2: "her" walked through in the head that attends most from "her"
    to "Xiaohua" (the girl it refers to); and the token pairs of "I love ai" and a paraphrase."""
    server = ServerProcess(real_artifact_dir, tmp_path_factory.mktemp("explain-real") / "server.log",
                           EMBED_INTRA_OP_THREADS="2").wait_ready()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as api:
            data = post(api, "/v1/encode", {"input": [PRONOUN], "attention": {
                "layers": "all", "heads": "all", "format": "float"}})["data"][0]
            tokens = [t["text"] for t in data["tokens"]]
            her = tokens.index("her")
            xiaohua = next(i for i in range(len(tokens) - 1) if tokens[i] == "xiao" and tokens[i + 1] == "##hua")
            att = np.asarray(data["attention"]["data"], dtype=np.float64)  # (L, H, T, T)
            to_xiaohua = att[:, :, her, xiaohua] + att[:, :, her, xiaohua + 1]
            layer, head = (int(i) for i in np.unravel_index(np.argmax(to_xiaohua), to_xiaohua.shape))

            page = open_page(server)
            page.click("#examples [data-example='pronoun']")  # S1 = the pronoun sentence, S2 = "I love ai"
            assert settled(page, "state") == "ready"
            assert settled(page, "walkthrough") == "ready"
            assert int(page.get_attribute("#walkthrough", "data-token") or -1) == her
            page.select_option("#wt-layer", str(layer))
            page.select_option("#wt-head", str(head))
            walkthrough_shows(page, layer, head, her)
            check_walkthrough(page, post(api, "/v1/explain", {"input": PRONOUN, "layer": layer, "head": head,
                                                              "token": her}))
            targets = [SCREENSHOTS] + ([DOCS] if os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1" else [])
            for folder in targets:
                folder.mkdir(exist_ok=True)
                page.locator("#walk-panel").screenshot(path=str(folder / "explain-walkthrough.png"))

            page.click("#examples [data-example='similar']")  # "I love ai" against a paraphrase
            assert settled(page, "state") == "ready"
            assert settled(page, "pair") == "ready"
            lines = page.input_value("#input").splitlines()
            pair = post(api, "/v1/similarity/explain", {"input": lines[:2]})
            close(attr_json(page, "#pair-matrix", "data-values"), pair["contributions"], "contributions")
            for folder in targets:
                page.locator(".pair-panel").screenshot(path=str(folder / "explain-similarity.png"))
    finally:
        server.stop_and_check()
