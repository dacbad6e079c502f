"""Regenerate docs/explorer.png: the attention explorer at 1280×800 on a meaningful example.

    .venv/bin/python -m bench.screenshot_explorer                      # starts the server on the real MiniLM
    .venv/bin/python -m bench.screenshot_explorer --url http://127.0.0.1:8080   # or uses a running one

The example asks the explorer's own question: does the pronoun attend to the noun it refers to? The script
finds, from the API, the layer and head where "it" attends most to "cat", selects them in the page, focuses
"it" and hovers that cell, so the picture shows the tooltip, the per-layer table and the heads grid together.
Needs /usr/bin/chromium (Debian package) and playwright (Python), as the browser tests do.
"""

from __future__ import annotations

import argparse
import base64
import logging
from pathlib import Path

import httpx
import numpy as np

from bench.server_process import REPO, running_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EXAMPLE = [
    "The cat sat on the mat because it was tired.",
    "A kitten was sleeping on the rug.",
    "Stock markets fell sharply on Monday.",
]

logger = logging.getLogger("screenshot_explorer")


def pick_layer_head(base: str, text: str, focus: str, target: str) -> tuple[int, int, int, int]:
    """(layer, head, focus index, target index) where `focus` attends most to `target`, per the API."""
    reply = httpx.post(
        f"{base}/v1/encode",
        json={"input": [text], "attention": {"layers": "all", "heads": "all", "format": "base64"}},
        timeout=60.0,
    )
    reply.raise_for_status()
    item = reply.json()["data"][0]
    att = item["attention"]
    values = np.frombuffer(base64.b64decode(att["data"]), dtype="<f4").reshape(att["shape"])  # (L, H, T, T)
    texts = [t["text"].lower() for t in item["tokens"]]
    q, k = texts.index(focus), texts.index(target)
    layer_pos, head_pos = np.unravel_index(int(np.argmax(values[:, :, q, k])), values.shape[:2])
    layer, head = att["layers"][layer_pos], att["heads"][head_pos]
    logger.info("%s -> %s is strongest at layer %d head %d (%.3f)", focus, target, layer, head,
                values[layer_pos, head_pos, q, k])
    return layer, head, q, k


def screenshot(base: str, out: Path, lines: list[str], focus: str, target: str) -> None:
    from playwright.sync_api import sync_playwright

    layer, head, q, k = pick_layer_head(base, lines[0], focus, target)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
        page.goto(f"{base}/")
        page.fill("#input", "\n".join(lines))
        page.click("#run")
        page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=60_000)
        if page.evaluate("document.body.dataset.state") != "ready":
            raise SystemExit(f"page did not render: {page.inner_text('#banner')}")
        page.select_option("#layer", str(layer))
        page.select_option("#head", str(head))
        page.click(f"#tokens .chip[data-index='{q}']")
        grid = page.evaluate("JSON.parse(document.querySelector('#heatmap').dataset.grid)")
        page.hover("#heatmap canvas", position={"x": grid["left"] + (k + 0.5) * grid["cell"],
                                                 "y": grid["top"] + (q + 0.5) * grid["cell"]})
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    logger.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--artifact-dir", type=Path, default=REPO / "artifacts" / "all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "explorer.png")
    parser.add_argument("--focus", default="it", help="token whose attention is shown")
    parser.add_argument("--target", default="cat", help="token it should attend to")
    parser.add_argument("lines", nargs="*", default=EXAMPLE, help="sentences (the first is shown)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.url:
        screenshot(args.url.rstrip("/"), args.out, args.lines, args.focus, args.target)
        return
    with running_server({"EMBED_ARTIFACT_DIR": str(args.artifact_dir)}) as (base, _pid):
        screenshot(base, args.out, args.lines, args.focus, args.target)


if __name__ == "__main__":
    main()
