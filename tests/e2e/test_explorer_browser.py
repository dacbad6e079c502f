"""The attention explorer (GET /) in a real headless Chromium, against a real server process on the tiny artifact.

The page mirrors what it draws into data attributes (listed at the top of service/static/app.js); every check
here compares those with what the API itself returns for the same text, so a decoding, indexing or averaging
slip in the page fails.
Skipped cleanly where /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import CHROMIUM, MAIN_SERVER_ENV, REPO, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

SCREENSHOTS = REPO / "test-artifacts"
TOLERANCE = 1e-5
STATE_TIMEOUT_MS = 30_000
MAX_ATTENTION_TOKENS = 40  # the server's attention budget admits all layers × heads of this many tokens, no more
SENTENCE = "The cat sat on the mat because it was tired."
SENTENCES = [SENTENCE, "A kitten was sleeping on the rug.", "Stock markets fell sharply on Monday."]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dims(tiny_artifact_dir: Path) -> tuple[int, int]:
    config = json.loads((tiny_artifact_dir / "manifest.json").read_text())["config"]
    return int(config["num_layers"]), int(config["num_heads"])


@pytest.fixture(scope="module")
def explorer_server(start_server: Callable[..., ServerProcess], dims: tuple[int, int]) -> ServerProcess:
    layers, heads = dims
    budget = layers * heads * MAX_ATTENTION_TOKENS**2
    return start_server(**{**MAIN_SERVER_ENV, "EMBED_ATTENTION_BUDGET": str(budget)})


@pytest.fixture(scope="module")
def api(explorer_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=explorer_server.base_url, timeout=30.0) as c:
        yield c


@pytest.fixture
def open_page(browser: Browser, explorer_server: ServerProcess) -> Iterator[Callable[..., Page]]:
    """Open `/` at a viewport size; on teardown fail the test if the page threw or logged a console error."""
    pages: list[tuple[Page, list[str]]] = []

    def _open(width: int = 1280, height: int = 800) -> Page:
        page = browser.new_page(viewport={"width": width, "height": height})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.goto(explorer_server.base_url + "/")
        page.wait_for_selector("#run")
        pages.append((page, problems))
        return page

    yield _open
    problems = [p for _, probs in pages for p in probs if not _expected_http_error(p)]
    for page, _ in pages:
        page.close()
    assert not problems, problems


def _expected_http_error(message: str) -> bool:
    """Chromium logs every non-2xx fetch to the console; the page reports those in its banner on purpose."""
    return message.startswith("console: Failed to load resource: the server responded with a status of 4")


# --- helpers --------------------------------------------------------------------------------------------------


def run(page: Page, text: str) -> str:
    """Type `text`, press the button, wait until the page is no longer loading; return body[data-state]."""
    page.fill("#input", text)
    page.click("#run")  # sets data-state=loading synchronously
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=STATE_TIMEOUT_MS)
    return str(page.evaluate("document.body.dataset.state"))


def attr_json(page: Page, selector: str, name: str) -> Any:
    value = page.get_attribute(selector, name)
    assert value is not None, f"{selector} has no {name}"
    return json.loads(value)


def label(token: dict[str, Any]) -> str:
    """The page's label for a token: its text, or #id when the text is blank."""
    return token["text"].strip() or f"#{token['id']}"


def encode(api: httpx.Client, text: str | list[str], attention: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"input": text}
    if attention is not None:
        body["attention"] = {"format": "float", **attention}
    response = api.post("/v1/encode", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def api_map(api: httpx.Client, text: str, layer: int, head: int | str) -> np.ndarray:
    """(T, T) attention of one layer and head ("mean": the server's own mean over heads)."""
    spec: dict[str, Any] = {"layers": [layer]}
    spec.update({"heads": "all", "aggregate": "mean"} if head == "mean" else {"heads": [head]})
    att = encode(api, [text], spec)["data"][0]["attention"]
    values = np.asarray(att["data"], dtype=np.float64)
    assert values.shape == tuple(att["shape"])
    assert values.shape[-1] == values.shape[-2], att["shape"]
    assert values.size == values.shape[-1] ** 2, att["shape"]  # one layer, one head (or the mean)
    return values.reshape(values.shape[-2:])


def shown_map(page: Page) -> np.ndarray:
    return np.asarray(attr_json(page, "#heatmap", "data-values"), dtype=np.float64)


# --- tests ----------------------------------------------------------------------------------------------------


def test_page_and_its_files_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for element_id in ("input", "run", "layer", "head", "heatmap", "heads-grid", "token-focus", "similarity"):
        assert f'id="{element_id}"' in page.text
    for name, kind in [("app.js", "javascript"), ("api.js", "javascript"), ("style.css", "css")]:
        asset = api.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert kind in asset.headers["content-type"], (name, asset.headers["content-type"])


def test_heatmap_shows_the_api_values_of_the_chosen_layer_and_head(
    open_page: Callable[..., Page], api: httpx.Client, dims: tuple[int, int]
) -> None:
    layers, heads = dims
    page = open_page()
    assert run(page, SENTENCE) == "ready"
    tokens = encode(api, SENTENCE)["data"][0]["tokens"]
    assert attr_json(page, "#heatmap", "data-tokens") == [label(t) for t in tokens]
    assert page.locator("#tokens .chip").count() == len(tokens)
    assert page.locator("#tokens .chip.special").count() == sum(t["special"] for t in tokens)

    layer, head = layers - 1, heads - 1  # not the defaults (first layer, mean): the page must follow the selectors
    page.select_option("#layer", str(layer))
    page.select_option("#head", str(head))
    assert page.get_attribute("#heatmap", "data-layer") == str(layer)
    assert page.get_attribute("#heatmap", "data-head") == str(head)
    shown = shown_map(page)
    assert shown.shape == (len(tokens), len(tokens))
    np.testing.assert_allclose(shown, api_map(api, SENTENCE, layer, head), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(shown.sum(axis=1), 1.0, atol=1e-4)

    page.select_option("#head", "mean")
    assert page.get_attribute("#heatmap", "data-head") == "mean"
    np.testing.assert_allclose(shown_map(page), api_map(api, SENTENCE, layer, "mean"), atol=TOLERANCE, rtol=0)

    # Small multiples: one tile per head plus the mean; clicking a tile selects that head.
    assert page.locator("#heads-grid .head-tile").count() == heads + 1
    page.click("#heads-grid .head-tile[data-head='0']")
    assert page.input_value("#head") == "0"
    assert page.get_attribute("#heatmap", "data-head") == "0"
    np.testing.assert_allclose(shown_map(page), api_map(api, SENTENCE, layer, 0), atol=TOLERANCE, rtol=0)
    assert page.evaluate("document.body.dataset.state") == "ready"


def test_hovering_a_cell_shows_query_key_and_value(open_page: Callable[..., Page]) -> None:
    page = open_page()
    assert run(page, SENTENCE) == "ready"
    tokens = attr_json(page, "#heatmap", "data-tokens")
    values = attr_json(page, "#heatmap", "data-values")
    grid = attr_json(page, "#heatmap", "data-grid")
    row, col = 2, 3
    page.hover(
        "#heatmap canvas",
        position={"x": grid["left"] + (col + 0.5) * grid["cell"], "y": grid["top"] + (row + 0.5) * grid["cell"]},
    )
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible()
    text = tooltip.inner_text()
    assert f"{tokens[row]} → {tokens[col]}" in text
    assert f"{values[row][col]:.4f}" in text


def test_token_focus_lists_each_layers_top_keys(
    open_page: Callable[..., Page], api: httpx.Client, dims: tuple[int, int]
) -> None:
    layers, _ = dims
    page = open_page()
    assert run(page, SENTENCE) == "ready"
    tokens = encode(api, SENTENCE)["data"][0]["tokens"]
    query = next(i for i, t in enumerate(tokens) if t["text"] == "cat")
    page.click(f"#tokens .chip[data-index='{query}']")
    assert page.get_attribute("#token-focus", "data-token") == str(query)
    rows = page.locator("#token-focus tr[data-layer]")
    assert rows.count() == layers

    special = np.array([t["special"] for t in tokens])
    for layer in range(layers):
        weights = api_map(api, SENTENCE, layer, "mean")[query]
        weights[special] = -1.0  # the page hides [CLS]/[SEP] by default
        expected = np.argsort(-weights, kind="stable")[:3]
        shown = attr_json(page, f"#token-focus tr[data-layer='{layer}']", "data-keys")
        assert [k for k, _ in shown] == expected.tolist(), (layer, shown)
        np.testing.assert_allclose([v for _, v in shown], weights[expected], atol=TOLERANCE, rtol=0)

    # A heatmap row click focuses that row's query token too.
    grid = attr_json(page, "#heatmap", "data-grid")
    second_row = {"x": grid["left"] + grid["cell"] / 2, "y": grid["top"] + 1.5 * grid["cell"]}
    page.click("#heatmap canvas", position=second_row)
    assert page.get_attribute("#token-focus", "data-token") == "1"


def test_similarity_matrix_is_the_dot_products_of_the_api_embeddings(
    open_page: Callable[..., Page], api: httpx.Client
) -> None:
    page = open_page()
    assert run(page, "\n".join(SENTENCES)) == "ready"
    embeddings = np.asarray([d["embedding"] for d in encode(api, SENTENCES)["data"]], dtype=np.float64)
    shown = np.asarray(attr_json(page, "#similarity", "data-values"), dtype=np.float64)
    assert shown.shape == (len(SENTENCES), len(SENTENCES))
    np.testing.assert_allclose(shown, embeddings @ embeddings.T, atol=TOLERANCE, rtol=0)
    assert page.locator("#similarity td[data-value]").count() == len(SENTENCES) ** 2
    assert attr_json(page, "#similarity", "data-labels") == SENTENCES

    # The sentence selector switches the attention views to another line.
    page.select_option("#sentence", "1")
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=STATE_TIMEOUT_MS)
    assert page.get_attribute("#heatmap", "data-sentence") == "1"
    tokens = encode(api, SENTENCES[1])["data"][0]["tokens"]
    assert attr_json(page, "#heatmap", "data-tokens") == [label(t) for t in tokens]


def test_api_errors_appear_in_a_banner_and_clear_on_success(
    open_page: Callable[..., Page], api: httpx.Client
) -> None:
    page = open_page()
    too_long = " ".join(["word"] * (MAX_ATTENTION_TOKENS * 2))
    expected = api.post(
        "/v1/encode", json={"input": [too_long], "attention": {"layers": "all", "heads": "all"}}
    ).json()["error"]
    assert expected["code"] == "attention_budget_exceeded"

    assert run(page, too_long) == "error"
    assert page.locator("#banner").is_visible()
    assert expected["message"] in page.inner_text("#banner")

    assert run(page, SENTENCE) == "ready"
    assert not page.locator("#banner").is_visible()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (420, 800)])
def test_layout_fits_the_window_without_horizontal_scrolling(
    open_page: Callable[..., Page], width: int, height: int
) -> None:
    page = open_page(width, height)
    assert run(page, "\n".join(SENTENCES)) == "ready"
    scroll_width, inner_width = page.evaluate("[document.body.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width + 1
    for selector in ("#input", "#heatmap canvas", "#heads-grid", "#token-focus", "#similarity"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["width"] > 0, selector
        assert box["x"] >= 0, (selector, box)
        assert box["x"] + box["width"] <= inner_width + 1, (selector, box)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"explorer-{width}x{height}.png"), full_page=True)
