"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, on a real server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import instseg

pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
from instseg.serve.app import ServeConfig, create_app  # noqa: E402
from tests.serve.http import Running, post_predict  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"
# as root, in a closed network: no sandbox, and no background connections to fail
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    running = Running(create_app(instseg.load("nuclei", device="cpu"), ServeConfig()))
    yield running.url
    running.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (`make test` installs Debian's)")
def test_upload_overlay_slider_and_screenshot(served: str, tmp_path: Path):
    image = sorted(DEMO_VAL.glob("*.png"))[2]
    fields = {"image": ("a.png", image.read_bytes()), "score_threshold": "0.5"}
    scores = sorted(d["score"] for d in post_predict(served, fields)[1]["instances"])
    high = round(scores[len(scores) // 2], 2)  # a slider position that hides about half of them
    shown = {0.5: len(scores), high: sum(s >= high for s in scores)}
    assert shown[0.5] > shown[high] > 0
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(served + "/")
            page.wait_for_function("document.getElementById('title').textContent.includes('nucleus')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#status[data-done='1']", timeout=60_000)
            assert int(page.get_attribute("#count", "data-count")) == shown[0.5]
            assert page.locator("#list div").count() == shown[0.5]
            page.eval_on_selector(
                "#score", f"e => {{ e.value = {high}; e.dispatchEvent(new Event('input')); }}"
            )
            assert int(page.get_attribute("#count", "data-count")) == shown[high]
            page.locator("#list div").first.hover()  # highlights that instance; the page must not throw
            with page.expect_download() as download:
                page.click("#saveJson")
            saved = json.loads(Path(download.value.path()).read_text())
            assert len(saved) == shown[high] and saved[0]["segmentation"]
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            # the canvas really shows overlays: its pixels differ from the plain image
            changed = page.evaluate(
                """() => { const c = document.getElementById('view');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let coloured = 0; for (let i = 0; i < d.length; i += 4)
                  if (Math.abs(d[i] - d[i + 1]) > 30 || Math.abs(d[i + 1] - d[i + 2]) > 30) coloured++;
                return coloured / (d.length / 4); }"""
            )
            assert changed > 0.01  # the nuclei image is grey; coloured pixels are the overlays
        finally:
            browser.close()
