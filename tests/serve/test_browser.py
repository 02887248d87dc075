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


@pytest.fixture(scope="module")
def served_sam() -> Iterator[str]:
    import torch

    from instseg.models.sam.model import OBJECT, SAM
    from instseg.predictor import Predictor
    from tests.models.test_sam import TINY

    torch.manual_seed(0)
    predictor = Predictor(SAM(TINY), "sam", {}, list(OBJECT), "cpu", {})
    running = Running(create_app(predictor, ServeConfig()))
    yield running.url
    running.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (`make test` installs Debian's)")
def test_clicks_and_a_box_segment_live_with_a_promptable_model(served_sam: str, tmp_path: Path):
    from tests.serve.test_prompt_server import post_json

    image = sorted(DEMO_VAL.glob("*.png"))[2]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            sent: list[dict] = []
            page.on("request", lambda r: r.url.endswith("/v1/prompt") and sent.append(r.post_data_json))
            page.goto(served_sam + "/")
            page.wait_for_function("!document.getElementById('promptHelp').hidden")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#status[data-done='1']", timeout=60_000)
            view = page.locator("#view").bounding_box()
            x, y = view["x"] + view["width"] * 0.4, view["y"] + view["height"] * 0.5
            page.mouse.click(x, y)
            page.wait_for_selector("#status[data-prompted='1']")
            # the page shows the best reading the API gives for the request it sent (same logits after)
            status, answer = post_json(f"{served_sam}/v1/prompt", sent[0])
            best = max(d["score"] for d in answer["instances"])
            assert status == 200 and int(page.get_attribute("#count", "data-count")) == 1
            assert page.locator("#list div").first.text_content() == f"0: object {best:.3f}"
            page.keyboard.down("Shift")
            page.mouse.click(x + 40, y + 30)
            page.keyboard.up("Shift")
            page.wait_for_selector("#status[data-prompted='2']")
            page.mouse.move(x - 60, y - 60)
            page.mouse.down()
            page.mouse.move(x + 60, y + 60, steps=5)
            page.mouse.up()
            page.wait_for_selector("#status[data-prompted='3']")
            assert [len(b.get("points", [])) for b in sent] == [1, 2, 2]
            assert [b.get("labels") for b in sent][1] == [1, 0] and "box" in sent[2]
            assert sent[0]["multimask"] and not sent[2]["multimask"] and sent[2]["refine"]
            assert int(page.get_attribute("#count", "data-count")) == 1
            page.click("#keep")
            page.mouse.click(x - 50, y - 40)
            page.wait_for_selector("#status[data-prompted='1']")
            assert page.locator("#list div").count() == 2  # the kept object and the new one
            shot = tmp_path / "prompt_page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
